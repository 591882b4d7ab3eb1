// The reviewers' page: claim a reading from the review queue, show its image with the digit
// boxes, let a person key what the image shows, and go on to the next one at once.
// Plain browser JavaScript, no build step and no third-party code (like app.js).
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);

  // How often an idle page looks for new items, and how often the counts are refreshed.
  const POLL_MS = 3000;
  const STATS_MS = 5000;
  // A prefetched item is shown only while its lease has at least this long to run; otherwise it
  // is given back and a fresh one claimed, so a reviewer never starts keying an item already lost.
  const LEASE_MARGIN_MS = 30000;
  // What the service accepts as a reviewer's name (app/reviews/queue.py).
  const NAME_PATTERN = /^[A-Za-z0-9._@+-]{1,64}$/;
  const STORE_NAME = "digits.review.name";
  const STORE_KEY = "digits.review.key";
  // The kinds a reviewer may choose to key (POST /reviews/claim's "kind"); "" is every kind.
  const KINDS = { "": "items", flagged: "flagged readings", audit: "audit samples" };
  // Images displayed this high (CSS pixels) at most; wide ones shrink to the page's width.
  const IMAGE_HEIGHT = 260;

  // ---------------------------------------------------------------- state

  let reviewer = sessionStorage.getItem(STORE_NAME);
  let apiKey = sessionStorage.getItem(STORE_KEY) || "";
  /** The kind this reviewer keys ("" for all), kept in the address (?kind=audit). */
  let kind = kindFromAddress();
  /** The last counts read, for the idle panel's word on the other kinds. */
  let lastStats = null;
  /** The item on screen: {item, lease, deadline, url, width, height, decoded} or null. */
  let current = null;
  /** The next item, claimed and its image decoded while the current one is keyed. */
  let next = null;
  let prefetching = null;
  /** Items this reviewer skipped in this tab: never handed to them again unless they ask. */
  const skipped = new Set();
  /** How many skipped items the last claim found and gave back (0: none waited). */
  let skippedWaiting = 0;
  let mode = "start";
  let busy = false;
  let keyed = 0;
  let pollTimer = null;
  let statsTimer = null;
  /** Bumped when the page lets go of everything (sign-out, back from the page cache): a claim
   * still in flight then belongs to no one and is given back. */
  let generation = 0;

  // ---------------------------------------------------------------- talking to the service

  const { ServiceError, readAnswer } = window.DigitsService;

  function keyHeaders() {
    return apiKey ? { "X-API-Key": apiKey } : {};
  }

  /** Call the API; JSON answers come back parsed, 204 as null; failures as ServiceError. */
  async function api(path, { method = "GET", body, raw = false } = {}) {
    const headers = { ...keyHeaders() };
    if (!raw) headers.Accept = "application/json";
    if (body !== undefined) headers["Content-Type"] = "application/json";
    let response;
    try {
      response = await fetch(path, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        cache: "no-store",
      });
    } catch {
      throw new ServiceError(
        "The service could not be reached. Check that it is running; this page tries again.",
        "network_error",
        0,
      );
    }
    if (response.ok && response.status === 204) return { response, body: null };
    if (response.ok && raw) return { response, body: await response.blob() };
    return { response, body: await readAnswer(response) };
  }

  const isAuthError = (err) => err instanceof ServiceError && (err.status === 401 || err.status === 403);

  function percent(value, decimals = 1) {
    const text = (value * 100).toFixed(decimals);
    // Rounding must not claim a certainty the model did not.
    if (value < 1 && Number(text) >= 100) return `> ${(100 - 10 ** -decimals).toFixed(decimals)} %`;
    return `${text} %`;
  }

  function ago(seconds) {
    if (seconds < 90) return `${Math.round(seconds)} s`;
    if (seconds < 5400) return `${Math.round(seconds / 60)} min`;
    if (seconds < 129600) return `${Math.round(seconds / 3600)} h`;
    return `${Math.round(seconds / 86400)} days`;
  }

  // ---------------------------------------------------------------- messages

  /** Put a message in the status line; a ``transient`` one goes when the next item shows. */
  function say(message, tone = "info", { transient = false } = {}) {
    const status = $("status");
    status.textContent = message;
    status.dataset.tone = tone;
    status.dataset.transient = String(transient);
  }

  function showAnswerError(message) {
    const box = $("answer-error");
    box.textContent = message;
    box.hidden = false;
    $("answer").setAttribute("aria-invalid", "true");
  }

  function hideAnswerError() {
    const box = $("answer-error");
    box.textContent = "";
    box.hidden = true;
    $("answer").removeAttribute("aria-invalid");
  }

  function setMode(wanted) {
    mode = wanted;
    $("sign-in").hidden = wanted !== "sign-in";
    $("work").hidden = wanted !== "work";
    $("idle").hidden = wanted !== "idle";
    $("sign-out").hidden = wanted === "sign-in" || reviewer === null;
    document.body.dataset.mode = wanted;
  }

  // ---------------------------------------------------------------- the queue

  /** Claim one item of the chosen kind (null: none waits), with when its lease runs out on this
   * machine's clock. */
  async function claimOne() {
    const wanted = kind ? { reviewer, kind } : { reviewer };
    const { response, body } = await api("/reviews/claim", { method: "POST", body: wanted });
    if (body === null) return null;
    const item = body.item || body;
    // The lease's length from the service's own clock (its Date header), so a machine whose
    // clock is off still knows how long it holds the item.
    const served = Date.parse(response.headers.get("Date") || "");
    const expires = Date.parse(body.lease_expires || item.lease_expires || "");
    let length = expires - (Number.isNaN(served) ? Date.now() : served);
    if (Number.isNaN(length)) length = 60000;
    return { item, lease: body.lease, deadline: Date.now() + length, url: null, width: 0, height: 0, decoded: false };
  }

  /** Fetch an item's image with the key, as a blob URL, and decode it before it is shown. */
  async function loadImage(entry) {
    const { body } = await api(`/reviews/${encodeURIComponent(entry.item.review_id)}/image`, { raw: true });
    entry.url = URL.createObjectURL(body);
    const picture = new Image();
    picture.src = entry.url;
    try {
      await picture.decode();
      entry.width = picture.naturalWidth;
      entry.height = picture.naturalHeight;
      entry.decoded = entry.width > 0 && entry.height > 0;
    } catch {
      // A type the browser cannot show (TIFF, say): the item is shown without its picture.
      entry.decoded = false;
    }
    const size = entry.item.reading && entry.item.reading.image;
    if (!entry.decoded && size) {
      entry.width = size.width;
      entry.height = size.height;
    }
  }

  function forget(entry) {
    if (entry && entry.url) URL.revokeObjectURL(entry.url);
  }

  /** Give an item back to the queue (skipped, or held when the page goes away). */
  function release(entry, { keepalive = false } = {}) {
    if (!entry) return Promise.resolve();
    const path = `/reviews/${encodeURIComponent(entry.item.review_id)}/release`;
    const body = JSON.stringify({ lease: entry.lease });
    const headers = { "Content-Type": "application/json", Accept: "application/json", ...keyHeaders() };
    // A lease that already ran out, or an item keyed meanwhile, is no one's to give back.
    return fetch(path, { method: "POST", headers, body, keepalive }).catch(() => undefined);
  }

  /**
   * Claim the next item this reviewer has not skipped, with its image. Skipped items the claim
   * hands out are held until a fresh one is found (so the claim cannot hand them out again),
   * then given back.
   */
  async function claimFresh() {
    const held = [];
    try {
      for (let attempt = 0; attempt <= skipped.size + 2; attempt += 1) {
        const entry = await claimOne();
        if (entry === null) break;
        if (skipped.has(entry.item.review_id)) {
          held.push(entry);
          continue;
        }
        try {
          await loadImage(entry);
        } catch (err) {
          // Its image was deleted between the claim and the fetch (retention): take another.
          if (err instanceof ServiceError && (err.status === 404 || err.status === 410)) continue;
          forget(entry);
          release(entry);
          throw err;
        }
        skippedWaiting = 0;
        return entry;
      }
      skippedWaiting = held.length;
      return null;
    } finally {
      for (const entry of held) release(entry);
    }
  }

  const fresh = (entry) => entry !== null && entry.deadline - Date.now() > LEASE_MARGIN_MS;
  /** Whether an item is of the kind chosen now (one claimed before a change may not be). */
  const wanted = (entry) => entry !== null && (!kind || entry.item.kind === kind);

  /** Claim the item after the current one while the current one is keyed. */
  function prefetch() {
    if (next !== null || prefetching !== null || current === null) return;
    const started = generation;
    prefetching = claimFresh()
      .then((entry) => {
        if (started === generation) next = entry;
        else if (entry) {
          forget(entry);
          release(entry);
        }
      })
      .catch(() => {
        // Not fatal: the next item is claimed when it is needed, and any error shown then.
      })
      .finally(() => {
        prefetching = null;
      });
  }

  /** Show the next item: the prefetched one while its lease runs (and it is of the chosen
   * kind), else a freshly claimed one. ``focus``: put the focus in the answer field. */
  async function advance({ focus = true } = {}) {
    if (prefetching !== null) await prefetching;
    let entry = next;
    next = null;
    if (entry !== null && !(fresh(entry) && wanted(entry))) {
      forget(entry);
      release(entry);
      entry = null;
    }
    if (entry === null) entry = await claimFresh();
    if (entry === null) {
      showIdle({ focus });
      return;
    }
    show(entry, { focus });
  }

  // ---------------------------------------------------------------- showing an item

  function readingDigits(reading) {
    if (typeof reading.digits === "string") return reading.digits;
    if (reading.digit !== undefined && reading.digit !== null) return String(reading.digit);
    return "";
  }

  function segmentsOf(reading) {
    if (Array.isArray(reading.segments)) return reading.segments;
    // A single digit (/predict) has no segments: one digit, no box.
    if (reading.digit !== undefined && reading.digit !== null) {
      return [{ digit: reading.digit, confidence: reading.confidence, box: null }];
    }
    return [];
  }

  /** The indexes (from 0) of the digits a review reason names (reasons count from 1). */
  function flaggedPositions(reading) {
    const positions = new Set();
    for (const reason of reading.review_reasons || []) {
      if (Number.isInteger(reason.position)) positions.add(reason.position - 1);
    }
    return positions;
  }

  function show(entry, { focus = true } = {}) {
    const previous = current;
    current = entry;
    if (previous && previous !== entry) forget(previous);
    stopPolling();
    const { item } = entry;
    const reading = item.reading || {};
    const digits = readingDigits(reading);
    const segments = segmentsOf(reading);
    const flagged = flaggedPositions(reading);

    // The picture, at most IMAGE_HEIGHT high and the page's width wide; small images (a 28×28
    // digit) are scaled up with their pixels kept sharp.
    const stage = $("stage");
    const image = $("item-image");
    const width = entry.width || 1;
    const height = entry.height || 1;
    stage.style.aspectRatio = `${width} / ${height}`;
    stage.style.width = `min(100%, ${Math.round((IMAGE_HEIGHT * width) / height)}px)`;
    stage.classList.toggle("pixelated", IMAGE_HEIGHT / height >= 3);
    stage.classList.toggle("undecodable", !entry.decoded);
    if (entry.decoded) image.src = entry.url;
    else image.removeAttribute("src");
    image.alt = entry.decoded
      ? `The image to key (the service read ${digits || "nothing"})`
      : "";

    // A box over each digit, placed in percent of the image so it follows the displayed size.
    $("boxes").replaceChildren(
      ...segments
        .map((segment, index) => {
          if (!segment.box || !entry.width || !entry.height) return null;
          const box = document.createElement("div");
          box.className = flagged.has(index) ? "box flagged" : "box";
          box.dataset.position = String(index);
          // No room for the label above the box (about 20 CSS pixels of the image as shown).
          if ((segment.box.y / entry.height) * IMAGE_HEIGHT < 20) box.dataset.edge = "top";
          box.style.left = `${(100 * segment.box.x) / entry.width}%`;
          box.style.top = `${(100 * segment.box.y) / entry.height}%`;
          box.style.width = `${(100 * segment.box.width) / entry.width}%`;
          box.style.height = `${(100 * segment.box.height) / entry.height}%`;
          const label = document.createElement("span");
          label.className = "box-label";
          const confidence = document.createElement("span");
          confidence.className = "box-confidence";
          confidence.textContent = ` · ${percent(segment.confidence, 0)}`;
          label.append(String(segment.digit), confidence);
          box.append(label);
          return box;
        })
        .filter((box) => box !== null),
    );

    const count = segments.length;
    $("item-caption").textContent = entry.decoded
      ? `${entry.width}×${entry.height} pixels, ${count} digit${count === 1 ? "" : "s"} found.`
      : `This browser cannot show the image (${item.image_type || "unknown type"}). ` +
        "Skip it (Esc) for someone who can, or mark it.";

    $("digit-list").replaceChildren(
      ...segments.map((segment, index) => {
        const entryItem = document.createElement("li");
        entryItem.className = flagged.has(index) ? "flagged" : "";
        const digit = document.createElement("span");
        digit.className = "digit-char";
        digit.textContent = String(segment.digit);
        const confidence = document.createElement("span");
        confidence.className = "digit-confidence";
        confidence.textContent = percent(segment.confidence);
        entryItem.append(digit, confidence);
        entryItem.setAttribute(
          "aria-label",
          `digit ${index + 1}: ${segment.digit}, confidence ${percent(segment.confidence)}` +
            (flagged.has(index) ? ", flagged" : ""),
        );
        return entryItem;
      }),
    );

    const reasons = reading.review_reasons || [];
    $("reasons").replaceChildren(
      ...reasons.map((reason) => {
        const line = document.createElement("li");
        line.textContent = reason.message;
        line.dataset.code = reason.code;
        return line;
      }),
    );
    $("reasons-block").hidden = reasons.length === 0;
    $("audit-note").hidden = item.kind !== "audit";

    $("answer-hint").textContent = item.expected_length
      ? `The request asked for ${item.expected_length} digit${item.expected_length === 1 ? "" : "s"}.`
      : "Type exactly the digits the image shows.";

    const meta = [`Item ${item.review_id}`, item.kind, item.endpoint, `model version ${item.model_version}`];
    const created = Date.parse(item.created_at);
    if (!Number.isNaN(created)) meta.push(`read ${ago(Math.max(0, (Date.now() - created) / 1000))} ago`);
    if (item.client_ref) meta.push(`client reference ${item.client_ref}`);
    $("item-meta").textContent = meta.filter(Boolean).join(" · ");

    $("work").dataset.reviewId = item.review_id;
    $("work").dataset.kind = item.kind;
    const answer = $("answer");
    if (answer.dataset.reviewId !== item.review_id) {
      // A new item: the service's reading, selected, so typing replaces it. The same item again
      // (claimed anew after a lease ran out) keeps what was typed.
      answer.value = digits;
      hideAnswerError();
    }
    answer.dataset.reviewId = item.review_id;
    if ($("status").dataset.transient === "true") say("");
    setMode("work");
    // One more item is held now: the counts follow at once rather than at the next refresh.
    refreshStats();
    if (focus) {
      answer.focus();
      answer.select();
    }
    prefetch();
  }

  function showIdle({ focus = true } = {}) {
    if (current) forget(current);
    current = null;
    $("answer").dataset.reviewId = "";
    delete $("work").dataset.reviewId;
    const others = skippedWaiting;
    const title = kind
      ? `No ${others ? "other " : ""}${KINDS[kind]} waiting`
      : others
        ? "Nothing else waiting"
        : "Nothing waiting";
    $("idle-title").textContent = title;
    $("idle-text").textContent = others
      ? `Only ${others === 1 ? "the item" : `${others} items`} you skipped ${others === 1 ? "is" : "are"} ` +
        "waiting. This page looks for new ones every few seconds."
      : kind
        ? `You chose to key ${KINDS[kind]} only. This page looks for new ones every few seconds.`
        : "Every reading is keyed. This page looks again every few seconds.";
    $("skipped-block").hidden = skipped.size === 0;
    $("idle").dataset.state = "empty";
    showOtherKinds();
    const wasIdle = mode === "idle";
    setMode("idle");
    if (!wasIdle) {
      say(`${title}.`);
      // Keyboard first: Enter brings the skipped items back, when there are any.
      if (focus) (skipped.size ? $("show-skipped") : $("idle")).focus();
    }
    startPolling();
  }

  /** On the idle panel: how many items of the kinds not chosen wait, from the last counts. */
  function showOtherKinds() {
    const line = $("idle-others");
    const byKind = (lastStats && lastStats.by_kind) || {};
    const others = Object.keys(KINDS)
      .filter((name) => name && name !== kind && byKind[name] && Number(byKind[name].waiting) > 0)
      .map((name) => {
        const count = Number(byKind[name].waiting);
        return `${count} ${count === 1 ? KINDS[name].replace(/s$/, "") : KINDS[name]}`;
      });
    line.hidden = !kind || others.length === 0;
    line.textContent = line.hidden ? "" : `Also waiting: ${others.join(" and ")}. Choose All to key them.`;
  }

  // ---------------------------------------------------------------- keying

  function setBusy(value) {
    busy = value;
    $("work").setAttribute("aria-busy", String(value));
    $("answer").readOnly = value;
    for (const id of ["save", "skip", "unreadable", "not-digits"]) $(id).disabled = value;
  }

  /** Send a result for the item on screen; on success show the next item at once. */
  async function submit(result, description) {
    if (busy || current === null || mode !== "work") return;
    const entry = current;
    setBusy(true);
    try {
      try {
        await api(`/reviews/${encodeURIComponent(entry.item.review_id)}`, {
          method: "POST",
          body: { lease: entry.lease, reviewer, ...result },
        });
      } catch (err) {
        await submitFailed(err, entry);
        return;
      }
      keyed += 1;
      $("count-mine").textContent = String(keyed);
      hideAnswerError();
      refreshStats();
      say(`Saved: ${description}.`);
      // Saved: whatever happens next, this item is done with.
      current = null;
      forget(entry);
      try {
        await advance();
      } catch (err) {
        failed(err);
      }
    } finally {
      setBusy(false);
      if (mode === "work") $("answer").focus();
    }
  }

  async function submitFailed(err, entry) {
    if (!(err instanceof ServiceError)) throw err;
    if (isAuthError(err)) {
      askForKey(err);
      return;
    }
    if (err.status === 422) {
      // The answer itself is refused (wrong length, not digits): say why where it was typed.
      showAnswerError(err.message);
      say("Not saved: see the message under the field.", "error");
      $("answer").select();
      return;
    }
    if (err.status === 409 || err.status === 404 || err.status === 410) {
      // lease_expired: claim again (the same item comes back if no one took it, with what was
      // typed); held by another, already keyed, deleted: the item is gone, go on.
      const again = err.code === "lease_expired";
      say(`${err.message} ${again ? "Claiming it again…" : "Going on to the next item."}`, "error");
      if (!again) {
        forget(entry);
        current = null;
      }
      try {
        if (again) {
          const entry2 = await claimFresh();
          if (entry2 === null) showIdle();
          else show(entry2);
          if (entry2 && entry2.item.review_id === entry.item.review_id) {
            say("Your hold on this item had run out; it is yours again. Press Enter to save.", "error");
          }
        } else {
          await advance();
        }
      } catch (claimErr) {
        failed(claimErr);
      }
      return;
    }
    // 503, a network failure: keep the item and what was typed, and say so.
    say(`Not saved: ${err.message} Press Enter to try again.`, "error");
  }

  function keyDigits() {
    const typed = $("answer").value.replace(/\s+/g, "");
    if (typed === "") {
      showAnswerError(
        "Type the digits the image shows, or mark it unreadable (Alt+U) or not digits (Alt+N).",
      );
      return;
    }
    submit({ digits: typed }, `“${typed}”`);
  }

  function markUnreadable() {
    submit({ verdict: "unreadable" }, "unreadable");
  }

  function markNotDigits() {
    submit({ verdict: "not_digits" }, "not digits");
  }

  async function skip() {
    if (busy || current === null || mode !== "work") return;
    const entry = current;
    skipped.add(entry.item.review_id);
    setBusy(true);
    current = null;
    try {
      // The next one is claimed while the skipped one is still held, so it cannot come back.
      await advance();
      say("Skipped: given back for someone else.");
    } catch (err) {
      failed(err);
    } finally {
      await release(entry);
      forget(entry);
      setBusy(false);
      if (mode === "work") $("answer").focus();
    }
  }

  // ---------------------------------------------------------------- errors, sign-in, polling

  /** An error outside submitting: ask for the key again, or say so and try again later. */
  function failed(err) {
    if (isAuthError(err) || (err instanceof ServiceError && err.status === 422)) {
      // A key refused, or (422 on a claim) a name the service does not take: ask again.
      askForKey(err);
      return;
    }
    const message = err instanceof ServiceError ? err.message : String(err);
    say(`${message} Trying again in a few seconds.`, "error", { transient: true });
    if (current === null) {
      setMode("idle");
      $("idle").dataset.state = "trouble";
      $("idle-title").textContent = "Waiting for the service";
      $("idle-text").textContent = message;
      startPolling();
    }
  }

  function askForKey(err) {
    stopPolling();
    stopStats();
    const box = $("sign-in-error");
    let message = err.message;
    if (isAuthError(err) && err.code !== "reviews_closed") message += " Enter the reviewer key again.";
    box.textContent = message;
    box.hidden = false;
    showSignIn();
    say(isAuthError(err) ? "The service did not accept the reviewer key." : "The service refused the name.", "error");
  }

  function showSignIn() {
    setMode("sign-in");
    $("reviewer-name").value = reviewer || "";
    $("reviewer-key").value = "";
    (reviewer ? $("reviewer-key") : $("reviewer-name")).focus();
  }

  $("sign-in-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const name = $("reviewer-name").value.trim();
    const box = $("sign-in-error");
    if (!NAME_PATTERN.test(name)) {
      box.textContent = "Your name must be 1 to 64 letters, digits or . _ @ + - (no spaces), like alice.";
      box.hidden = false;
      $("reviewer-name").setAttribute("aria-invalid", "true");
      $("reviewer-name").focus();
      return;
    }
    $("reviewer-name").removeAttribute("aria-invalid");
    box.hidden = true;
    reviewer = name;
    apiKey = $("reviewer-key").value.trim();
    sessionStorage.setItem(STORE_NAME, reviewer);
    sessionStorage.setItem(STORE_KEY, apiKey);
    start();
  });

  $("sign-out").addEventListener("click", () => {
    generation += 1;
    stopPolling();
    stopStats();
    for (const entry of [current, next]) {
      release(entry);
      forget(entry);
    }
    current = null;
    next = null;
    reviewer = null;
    apiKey = "";
    sessionStorage.removeItem(STORE_NAME);
    sessionStorage.removeItem(STORE_KEY);
    $("sign-in-error").hidden = true;
    say("");
    showSignIn();
  });

  /** Begin (or go on) keying: the item kept over a sign-in again, else the next one. */
  async function start() {
    startStats();
    if (current !== null) {
      show(current);
      say("Signed in again: press Enter to save.");
      return;
    }
    say("Looking for an item…", "info", { transient: true });
    try {
      await advance();
    } catch (err) {
      failed(err);
    }
  }

  async function poll() {
    pollTimer = null;
    if (mode !== "idle" || document.hidden) {
      startPolling();
      return;
    }
    try {
      const stats = await refreshStats({ quiet: false });
      // Only skipped items (or none) wait: nothing to claim until the count grows.
      if (stats && waitingOf(stats) > skippedWaiting) {
        const entry = await claimFresh();
        if (entry !== null) {
          show(entry);
          say("A new item arrived.");
          return;
        }
        showIdle();
        return;
      }
      if (stats && $("idle").dataset.state === "trouble") showIdle();
    } catch (err) {
      failed(err);
      return;
    }
    startPolling();
  }

  function startPolling() {
    if (pollTimer === null) pollTimer = setTimeout(poll, POLL_MS);
  }

  function stopPolling() {
    if (pollTimer !== null) clearTimeout(pollTimer);
    pollTimer = null;
  }

  // ---------------------------------------------------------------- the counts

  /** The counts of the chosen kind (the totals when every kind is keyed, or the service gives
   * no counts per kind). */
  function countsOf(stats) {
    const own = kind && stats.by_kind ? stats.by_kind[kind] : null;
    return own || stats;
  }

  const waitingOf = (stats) => Number(countsOf(stats).waiting ?? 0);

  /** Read the queue's counts and show them; errors throw only when not ``quiet``. */
  async function refreshStats({ quiet = true } = {}) {
    let stats;
    try {
      ({ body: stats } = await api("/reviews/stats"));
    } catch (err) {
      $("counts").dataset.state = "error";
      if (quiet) return null;
      throw err;
    }
    lastStats = stats;
    const counts = countsOf(stats);
    const scoped = counts !== stats;
    $("count-scope").hidden = !scoped;
    $("count-scope").textContent = scoped ? `${KINDS[kind][0].toUpperCase()}${KINDS[kind].slice(1)}:` : "";
    $("count-waiting").textContent = String(waitingOf(stats));
    $("count-claimed").textContent = String(counts.claimed ?? 0);
    $("count-done").textContent = String(counts.done ?? 0);
    // The service gives the oldest item's age over every kind only.
    const oldest = scoped ? null : stats.oldest_waiting_seconds;
    $("count-oldest").textContent =
      typeof oldest === "number" ? `(the oldest waiting for ${ago(oldest)})` : "";
    $("counts").dataset.state = "fresh";
    if (mode === "idle") showOtherKinds();
    return stats;
  }

  function startStats() {
    stopStats();
    refreshStats();
    statsTimer = setInterval(() => {
      if (!document.hidden) refreshStats();
    }, STATS_MS);
  }

  function stopStats() {
    if (statsTimer !== null) clearInterval(statsTimer);
    statsTimer = null;
  }

  // ---------------------------------------------------------------- which kind to key

  function kindFromAddress() {
    const asked = new URLSearchParams(window.location.search).get("kind") || "";
    return Object.hasOwn(KINDS, asked) ? asked : "";
  }

  function showKind() {
    for (const input of document.querySelectorAll('input[name="kind"]')) input.checked = input.value === kind;
    document.body.dataset.kind = kind || "all";
  }

  /**
   * Key only ``chosen`` ("" for every kind) from now on: kept in the address, so a reload or a
   * link keeps it. An item on screen of another kind is given back and one of the chosen kind
   * shown; ``focus``: then put the focus in the answer field (not when the choice was made with
   * the arrow keys, which move on through the choices).
   */
  async function chooseKind(chosen, { focus = true } = {}) {
    if (chosen === kind) return;
    kind = chosen;
    const address = new URL(window.location.href);
    if (kind) address.searchParams.set("kind", kind);
    else address.searchParams.delete("kind");
    window.history.replaceState(window.history.state, "", address);
    showKind();
    if (next !== null && !wanted(next)) {
      release(next);
      forget(next);
      next = null;
    }
    if (mode !== "work" && mode !== "idle") return; // signing in: the choice applies once started
    refreshStats();
    say(kind ? `Keying ${KINDS[kind]} only.` : "Keying every item, oldest first.", "info", { transient: true });
    if (busy || (mode === "work" && wanted(current))) return;
    const entry = current;
    current = null;
    stopPolling();
    setBusy(true);
    try {
      if (entry !== null) {
        await release(entry);
        forget(entry);
      }
      await advance({ focus });
    } catch (err) {
      failed(err);
    } finally {
      setBusy(false);
    }
  }

  let choosingByKeys = false;
  $("kind-choice").addEventListener("keydown", (event) => {
    choosingByKeys = event.key.startsWith("Arrow");
    if (event.key === "Enter" && mode === "work") {
      // Chosen: back to keying.
      event.preventDefault();
      $("answer").focus();
      $("answer").select();
    }
  });
  $("kind-choice").addEventListener("pointerdown", () => {
    choosingByKeys = false;
  });
  $("kind-choice").addEventListener("change", (event) => {
    if (event.target.name !== "kind") return;
    chooseKind(event.target.value, { focus: !choosingByKeys });
  });

  // ---------------------------------------------------------------- keys and buttons

  $("answer-form").addEventListener("submit", (event) => {
    event.preventDefault();
    keyDigits();
  });
  $("skip").addEventListener("click", skip);
  $("unreadable").addEventListener("click", markUnreadable);
  $("not-digits").addEventListener("click", markNotDigits);
  $("show-skipped").addEventListener("click", () => {
    skipped.clear();
    skippedWaiting = 0;
    $("skipped-block").hidden = true;
    say("Looking for an item…", "info", { transient: true });
    stopPolling();
    advance().catch(failed);
  });

  document.addEventListener("keydown", (event) => {
    if (mode !== "work" || event.isComposing) return;
    if (event.key === "Escape" && !event.altKey && !event.ctrlKey && !event.metaKey) {
      event.preventDefault();
      skip();
      return;
    }
    // By physical key, so Alt+U works whatever a keyboard layout makes of it (¨ on a Mac).
    if (event.altKey && !event.ctrlKey && !event.metaKey) {
      if (event.code === "KeyU") {
        event.preventDefault();
        markUnreadable();
      } else if (event.code === "KeyN") {
        event.preventDefault();
        markNotDigits();
      }
    }
  });

  // Leaving the page gives back what it holds, so no one waits for a lease to run out.
  window.addEventListener("pagehide", () => {
    stopPolling();
    stopStats();
    for (const entry of [current, next]) release(entry, { keepalive: true });
  });
  // Back from the browser's page cache: those leases were given back, so start over.
  window.addEventListener("pageshow", (event) => {
    if (!event.persisted || reviewer === null) return;
    generation += 1;
    current = null;
    next = null;
    start();
  });

  // ---------------------------------------------------------------- start

  showKind();
  if (reviewer === null) {
    setMode("sign-in");
    say("Enter your name and the reviewer key to start.");
    showSignIn();
  } else {
    start();
  }
})();
