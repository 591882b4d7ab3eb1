// The page's behaviour: a drawing pad with a live guess, a photo reader, the model's figures.
// Plain browser JavaScript, no build step and no third-party code, so the page works offline.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);

  // ---------------------------------------------------------------- talking to the service

  const { ServiceError, readAnswer } = window.DigitsService;

  function authHeaders() {
    const key = $("api-key").value.trim();
    return key ? { "X-API-Key": key } : {};
  }

  /** Fetch JSON; any failure becomes a ServiceError whose message a person can act on. */
  async function callApi(url, options = {}) {
    let response;
    try {
      response = await fetch(url, {
        ...options,
        headers: { Accept: "application/json", ...authHeaders(), ...(options.headers || {}) },
      });
    } catch (err) {
      if (err.name === "AbortError") throw err;
      throw new ServiceError(
        "The service could not be reached. Check that it is running and try again.",
        "network_error",
        0,
      );
    }
    return readAnswer(response, "Try again later.");
  }

  function percent(value, decimals = 1) {
    const text = (value * 100).toFixed(decimals);
    // Rounding must not claim a certainty the model did not.
    if (value < 1 && Number(text) >= 100) return `> ${(100 - 10 ** -decimals).toFixed(decimals)} %`;
    return `${text} %`;
  }

  function showError(element, err) {
    element.textContent = err.message;
    element.hidden = false;
    if (err.status === 401) {
      // The service wants a key: open the field where it goes, and say where that is.
      $("api-key-details").open = true;
      element.textContent += " Enter it under “API key” at the end of the page.";
    }
  }

  function hideError(element) {
    element.textContent = "";
    element.hidden = true;
  }

  // ---------------------------------------------------------------- model figures

  let shownModelVersion = null;
  // The page can open while the service is still loading its model (503): look again a few times.
  const MODEL_INFO_RETRIES = 20;
  const MODEL_INFO_RETRY_MS = 3000;

  async function loadModelInfo(retriesLeft = MODEL_INFO_RETRIES) {
    const status = $("model-status");
    try {
      const metrics = await callApi("/metrics");
      const model = metrics.model;
      $("model-version").textContent = String(model.version);
      $("model-accuracy").textContent = percent(model.test.accuracy, 2);
      shownModelVersion = model.version;
      status.hidden = true;
      $("model-details").hidden = false;
    } catch (err) {
      status.textContent = `Model details are unavailable: ${err.message}`;
      status.hidden = false;
      $("model-details").hidden = true;
      if (err.status === 503 && retriesLeft > 0) {
        setTimeout(() => loadModelInfo(retriesLeft - 1), MODEL_INFO_RETRY_MS);
      }
    }
  }

  /** Answers name the model that made them; when it changed (a new version was loaded), refresh. */
  function noteModelVersion(version) {
    if (shownModelVersion !== null && version !== shownModelVersion) {
      shownModelVersion = version;
      loadModelInfo();
    }
  }

  // ---------------------------------------------------------------- drawing pad

  const pad = $("pad");
  const ink = pad.getContext("2d");
  // About a tenth of the pad: once the server scales the drawing into MNIST's 20×20 box the
  // stroke is 2–3 pixels wide, as MNIST's pen strokes are.
  const STROKE_WIDTH = 24;
  // Wait this long after the last change before asking, and never longer than MAX_WAIT_MS while
  // the pen keeps moving, so the guess follows the drawing without a request per pointer event.
  const DEBOUNCE_MS = 200;
  const MAX_WAIT_MS = 600;

  let drawing = false;
  let penId = null;
  let lastPoint = null;
  let hasInk = false;
  let timer = null;
  let firstChangeAt = null;
  let inFlight = null;
  let predictSeq = 0;

  function resetPad() {
    // An opaque background: a transparent PNG would read as "no ink" or the wrong polarity.
    ink.globalCompositeOperation = "source-over";
    ink.fillStyle = "#000";
    ink.fillRect(0, 0, pad.width, pad.height);
    ink.strokeStyle = "#fff";
    ink.fillStyle = "#fff";
    ink.lineWidth = STROKE_WIDTH;
    ink.lineCap = "round";
    ink.lineJoin = "round";
    hasInk = false;
  }

  function padPoint(event) {
    const rect = pad.getBoundingClientRect();
    return {
      x: ((event.clientX - rect.left) * pad.width) / rect.width,
      y: ((event.clientY - rect.top) * pad.height) / rect.height,
    };
  }

  function dot(point) {
    ink.beginPath();
    ink.arc(point.x, point.y, STROKE_WIDTH / 2, 0, Math.PI * 2);
    ink.fill();
  }

  function line(from, to) {
    ink.beginPath();
    ink.moveTo(from.x, from.y);
    ink.lineTo(to.x, to.y);
    ink.stroke();
  }

  pad.addEventListener("pointerdown", (event) => {
    if (event.pointerType === "mouse" && event.button !== 0) return;
    // One pen at a time: a second finger on the pad would draw a line jumping between the two.
    if (drawing) return;
    event.preventDefault();
    pad.setPointerCapture(event.pointerId);
    penId = event.pointerId;
    drawing = true;
    lastPoint = padPoint(event);
    dot(lastPoint);
    inkChanged();
  });

  pad.addEventListener("pointermove", (event) => {
    if (!drawing || event.pointerId !== penId) return;
    const events = typeof event.getCoalescedEvents === "function" ? event.getCoalescedEvents() : [];
    for (const each of events.length ? events : [event]) {
      const point = padPoint(each);
      line(lastPoint, point);
      lastPoint = point;
    }
    inkChanged();
  });

  function endStroke(event) {
    if (!drawing || event.pointerId !== penId) return;
    drawing = false;
    penId = null;
    lastPoint = null;
    // Ask now rather than after the debounce: the stroke is finished.
    schedulePrediction(0);
  }

  pad.addEventListener("pointerup", endStroke);
  pad.addEventListener("pointercancel", endStroke);

  // ---------------------------------------------------------------- live prediction

  const predictionBox = $("prediction");
  const bars = [];

  function buildBars() {
    const list = $("bars");
    for (let digit = 0; digit < 10; digit += 1) {
      const item = document.createElement("li");
      item.className = "bar-row";
      const label = document.createElement("span");
      label.className = "bar-digit";
      label.textContent = String(digit);
      const track = document.createElement("span");
      track.className = "bar-track";
      const fill = document.createElement("span");
      fill.className = "bar-fill";
      track.append(fill);
      const value = document.createElement("span");
      value.className = "bar-value";
      item.append(label, track, value);
      list.append(item);
      bars.push({ item, fill, value });
    }
    showProbabilities(null);
  }

  function showProbabilities(probabilities) {
    let best = -1;
    if (probabilities) {
      best = probabilities.indexOf(Math.max(...probabilities));
    }
    bars.forEach((bar, digit) => {
      const p = probabilities ? probabilities[digit] : 0;
      bar.fill.style.width = `${Math.max(0, Math.min(1, p)) * 100}%`;
      bar.value.textContent = probabilities ? percent(p) : "–";
      bar.item.classList.toggle("top", digit === best);
      bar.item.setAttribute("aria-label", probabilities ? `${digit}: ${percent(p)}` : `${digit}: no guess yet`);
    });
  }

  function setPredictState(state, message) {
    predictionBox.dataset.state = state;
    $("predict-status").textContent = message;
  }

  function inkChanged() {
    hasInk = true;
    schedulePrediction(DEBOUNCE_MS);
  }

  function schedulePrediction(delay) {
    const now = performance.now();
    if (firstChangeAt === null) firstChangeAt = now;
    const wait = Math.max(0, Math.min(delay, firstChangeAt + MAX_WAIT_MS - now));
    if (timer !== null) clearTimeout(timer);
    timer = setTimeout(predictNow, wait);
    setPredictState("pending", "Reading your drawing…");
  }

  function padAsPng() {
    return new Promise((resolve, reject) => {
      pad.toBlob((blob) => (blob ? resolve(blob) : reject(new Error("The drawing could not be encoded."))), "image/png");
    });
  }

  async function predictNow() {
    timer = null;
    firstChangeAt = null;
    if (!hasInk) return;
    predictSeq += 1;
    const seq = predictSeq;
    if (inFlight) inFlight.abort();
    const controller = new AbortController();
    inFlight = controller;
    try {
      const form = new FormData();
      form.append("file", await padAsPng(), "drawing.png");
      // "always": the pad is 280×280, but say so explicitly: a drawing is never MNIST-ready.
      const result = await callApi("/predict?normalize=always", {
        method: "POST",
        body: form,
        signal: controller.signal,
      });
      if (seq !== predictSeq) return;
      hideError($("predict-error"));
      $("predicted-digit").textContent = String(result.digit);
      $("predicted-confidence").textContent = percent(result.confidence);
      showProbabilities(result.probabilities);
      noteModelVersion(result.model_version);
      if (timer === null && !drawing) {
        setPredictState("done", `Model version ${result.model_version} reads a ${result.digit}.`);
      }
    } catch (err) {
      if (err.name === "AbortError" || seq !== predictSeq) return;
      showError($("predict-error"), err);
      setPredictState("error", "No guess: see the message below.");
    } finally {
      if (inFlight === controller) inFlight = null;
    }
  }

  function clearAll() {
    if (timer !== null) clearTimeout(timer);
    timer = null;
    firstChangeAt = null;
    predictSeq += 1;
    if (inFlight) inFlight.abort();
    inFlight = null;
    drawing = false;
    penId = null;
    resetPad();
    hideError($("predict-error"));
    $("predicted-digit").textContent = "–";
    $("predicted-confidence").textContent = "–";
    showProbabilities(null);
    setPredictState("idle", "Draw a digit to see the guess.");
  }

  $("clear").addEventListener("click", clearAll);

  // ---------------------------------------------------------------- reading a photo

  const fileInput = $("file-input");
  const dropZone = $("drop-zone");
  const reading = $("reading");
  const preview = $("preview");
  const PREVIEW_MAX_WIDTH = 560;
  const PREVIEW_MAX_HEIGHT = 280;
  let currentFile = null;
  let readSeq = 0;

  async function decodeForPreview(file) {
    try {
      return await createImageBitmap(file);
    } catch {
      // The browser cannot show every file the service reads (or the file is not an image at
      // all, which the service will explain); the reading is shown without the picture.
      return null;
    }
  }

  function expectedLength() {
    const raw = $("expected-length").value.trim();
    return raw === "" ? null : raw;
  }

  async function readFile(file) {
    currentFile = file;
    readSeq += 1;
    const seq = readSeq;
    const errorBox = $("read-error");
    hideError(errorBox);
    reading.dataset.state = "pending";
    const picture = decodeForPreview(file);
    const form = new FormData();
    form.append("file", file, file.name || "upload");
    const params = new URLSearchParams();
    const expected = expectedLength();
    if (expected !== null) params.set("expected_length", expected);
    const query = params.toString();
    try {
      const result = await callApi(`/recognize${query ? `?${query}` : ""}`, { method: "POST", body: form });
      const bitmap = await picture;
      if (seq !== readSeq) return;
      showReading(result, bitmap, file.name);
      noteModelVersion(result.model_version);
    } catch (err) {
      if (seq !== readSeq) return;
      reading.hidden = true;
      reading.dataset.state = "error";
      showError(errorBox, err);
    }
  }

  function showReading(result, bitmap, fileName) {
    $("read-digits").textContent = result.digits;
    $("read-confidence").textContent = percent(result.confidence);

    const reasons = $("review-reasons");
    reasons.replaceChildren(
      ...result.review_reasons.map((reason) => {
        const item = document.createElement("li");
        item.textContent = reason.message;
        item.dataset.code = reason.code;
        return item;
      }),
    );
    $("review").hidden = !result.needs_review;
    $("review-ok").hidden = result.needs_review;

    const rows = $("segments");
    rows.replaceChildren(
      ...result.segments.map((segment, index) => {
        const row = document.createElement("tr");
        for (const text of [String(index + 1), String(segment.digit), percent(segment.confidence)]) {
          const cell = document.createElement("td");
          cell.textContent = text;
          row.append(cell);
        }
        return row;
      }),
    );

    // Older services answer without "ignored": nothing was left out as far as the page knows.
    const ignored = Array.isArray(result.ignored) ? result.ignored : [];
    const kinds = ignoredByKind(ignored);
    $("ignored-marks").replaceChildren(
      ...[...kinds].map(([kind, count]) => {
        const item = document.createElement("li");
        item.dataset.kind = kind;
        item.textContent = `${count} ${markName(kind, count)}`;
        return item;
      }),
    );
    $("ignored").hidden = ignored.length === 0;
    $("ignored-legend").hidden = ignored.length === 0;

    drawPreview(result, bitmap, ignored);
    const count = result.segments.length;
    $("preview-caption").textContent =
      `${fileName || "Upload"}: ${result.image.width}×${result.image.height} pixels, ` +
      `${count} digit${count === 1 ? "" : "s"} found` +
      (ignored.length ? `, ${ignored.length} other mark${ignored.length === 1 ? "" : "s"} left out.` : ".");
    preview.setAttribute(
      "aria-label",
      "The uploaded image with a box around each digit found" +
        (ignored.length ? " and a dashed box around each mark left out" : ""),
    );
    reading.hidden = false;
    reading.dataset.state = "done";
  }

  // What each kind of ignored mark is called on the page (the API's kinds are identifiers).
  const MARK_NAMES = {
    margin: ["scan margin", "scan margins"],
    ruled_line: ["ruled line", "ruled lines"],
    speck: ["speck", "specks"],
    stray: ["stray mark", "stray marks"],
    punctuation: ["punctuation mark", "punctuation marks"],
  };

  function markName(kind, count = 1) {
    const names = MARK_NAMES[kind] || [String(kind).replace(/_/g, " "), `${String(kind).replace(/_/g, " ")}s`];
    return names[count === 1 ? 0 : 1];
  }

  /** Counts of the ignored marks by kind, in the order the kinds first appear. */
  function ignoredByKind(ignored) {
    const kinds = new Map();
    for (const mark of ignored) kinds.set(mark.kind, (kinds.get(mark.kind) || 0) + 1);
    return kinds;
  }

  const IGNORED_COLOUR = "#1ea0ff";

  /**
   * Dashed blue boxes for the marks left out, each named by its kind where the name has room:
   * drawn before the digits' solid orange boxes, which stay on top.
   */
  function drawIgnored(g, ignored, scale, top) {
    const labelSize = 12;
    g.save();
    const frames = ignored.map((mark) => {
      const box = mark.box;
      // A one-pixel speck still gets a box big enough to see.
      const w = Math.max(4, box.width * scale);
      const h = Math.max(4, box.height * scale);
      return {
        kind: mark.kind,
        x: box.x * scale - (w - box.width * scale) / 2,
        y: top + box.y * scale - (h - box.height * scale) / 2,
        w,
        h,
      };
    });
    g.setLineDash([6, 4]);
    for (const frame of frames) {
      g.strokeStyle = "#000";
      g.lineWidth = 4;
      g.strokeRect(frame.x, frame.y, frame.w, frame.h);
      g.strokeStyle = IGNORED_COLOUR;
      g.lineWidth = 2;
      g.strokeRect(frame.x, frame.y, frame.w, frame.h);
    }
    g.setLineDash([]);
    // Names after every box, so no box is drawn over a name; the largest marks are named first,
    // and a name that would cover another is left out (the list under the picture has them all).
    g.font = `${labelSize}px system-ui, sans-serif`;
    g.textBaseline = "top";
    const placed = [];
    const overlaps = (a) =>
      placed.some((b) => a.x < b.x + b.w && b.x < a.x + a.w && a.y < b.y + b.h && b.y < a.y + a.h);
    for (const frame of [...frames].sort((a, b) => b.w * b.h - a.w * a.h)) {
      const text = markName(frame.kind);
      const label = { w: g.measureText(text).width + 6, h: labelSize + 4 };
      // Under the box, or inside its bottom edge when the box reaches the bottom of the picture.
      label.x = Math.min(Math.max(0, frame.x), preview.width - label.w);
      label.y = Math.min(frame.y + frame.h + 2, preview.height - label.h);
      if (overlaps(label)) continue;
      placed.push(label);
      g.fillStyle = IGNORED_COLOUR;
      g.fillRect(label.x, label.y, label.w, label.h);
      g.fillStyle = "#000";
      g.fillText(text, label.x + 3, label.y + 2);
    }
    g.restore();
  }

  function drawPreview(result, bitmap, ignored) {
    const { width, height } = result.image;
    const labelSize = 16;
    // A strip above the picture, so a digit's label fits even when its box touches the top edge.
    const top = labelSize + 6;
    const scale = Math.min(PREVIEW_MAX_WIDTH / width, PREVIEW_MAX_HEIGHT / height);
    preview.width = Math.max(1, Math.round(width * scale));
    preview.height = Math.max(1, Math.round(height * scale)) + top;
    const g = preview.getContext("2d");
    g.fillStyle = "#ffffff";
    g.fillRect(0, 0, preview.width, top);
    g.fillStyle = "#d9dde3";
    g.fillRect(0, top, preview.width, preview.height - top);
    if (bitmap) {
      // Small images (a 28×28 digit) are scaled up a lot: show their pixels rather than a blur.
      g.imageSmoothingEnabled = scale < 3;
      g.drawImage(bitmap, 0, top, preview.width, preview.height - top);
    }
    drawIgnored(g, ignored, scale, top);
    const lineWidth = 3;
    g.font = `bold ${labelSize}px system-ui, sans-serif`;
    g.textBaseline = "top";
    for (const segment of result.segments) {
      const box = segment.box;
      const x = box.x * scale;
      const y = top + box.y * scale;
      const w = box.width * scale;
      const h = box.height * scale;
      // Two outlines, dark under light, stay visible on white paper and on black alike.
      g.strokeStyle = "#000";
      g.lineWidth = lineWidth + 2;
      g.strokeRect(x, y, w, h);
      g.strokeStyle = "#ff8c00";
      g.lineWidth = lineWidth;
      g.strokeRect(x, y, w, h);
      const label = String(segment.digit);
      const labelWidth = g.measureText(label).width + 8;
      const labelY = y - labelSize - 5;
      g.fillStyle = "#ff8c00";
      g.fillRect(x - 1.5, labelY, labelWidth, labelSize + 4);
      g.fillStyle = "#000";
      g.fillText(label, x + 2.5, labelY + 2);
    }
  }

  fileInput.addEventListener("change", () => {
    const file = fileInput.files && fileInput.files[0];
    if (file) readFile(file);
  });

  for (const type of ["dragenter", "dragover"]) {
    dropZone.addEventListener(type, (event) => {
      event.preventDefault();
      dropZone.classList.add("dragging");
    });
  }
  dropZone.addEventListener("dragleave", () => dropZone.classList.remove("dragging"));
  dropZone.addEventListener("drop", (event) => {
    event.preventDefault();
    dropZone.classList.remove("dragging");
    const file = event.dataTransfer && event.dataTransfer.files[0];
    if (file) readFile(file);
  });
  // A file dropped next to the zone would otherwise make the browser leave the page to show it.
  for (const type of ["dragover", "drop"]) {
    window.addEventListener(type, (event) => event.preventDefault());
  }

  // Enter in the length field submits the form; its "change" event already read the file again.
  $("upload-form").addEventListener("submit", (event) => event.preventDefault());
  $("api-key-form").addEventListener("submit", (event) => event.preventDefault());
  // A key just typed in (after a 401, say) applies at once to what is on the page.
  $("api-key").addEventListener("change", () => {
    if (hasInk) schedulePrediction(0);
    if (currentFile) readFile(currentFile);
  });
  $("expected-length").addEventListener("change", () => {
    if (currentFile) readFile(currentFile);
  });

  // ---------------------------------------------------------------- start

  resetPad();
  buildBars();
  loadModelInfo();
})();
