"""Benchmark: one round of the review loop on real handwriting, end to end.

1. **Read.** A real server (``harness/servers.py``: the production launcher) serves a copy of the
   bundled versions with a fresh SQLite review queue, a client key and a reviewer key. The
   non-held-out ``usps-train`` digits and ``orand-car-a-dev`` checks go through ``/recognize``
   with the service's defaults: what it flags is queued, and a share of what it accepts too
   (``DIGITS_REVIEW_AUDIT_SHARE``).
2. **Review.** A scripted reviewer (:func:`review_queue`, through the HTTP API only) claims every
   waiting item and keys the true label from the set's ``labels.csv``.
3. **Export and train.** ``python -m training export-reviews`` writes the keyed items; ``python
   -m training`` trains a new version with the bundled versions' recipe (``default``, reader fit
   ``rule``) and ``--extra-data <export>/digits:WEIGHT``, into the served models directory.
4. **The gate.** The running server picks the version up at its next poll and the promotion gate
   serves or holds it (``/model``).
5. **Measure.** A second server with both versions pinned (queue off) reads the HELD-OUT parts
   (never sent in step 1, never fitted) of ``usps-train`` (``/predict`` and ``/recognize``),
   ``orand-car-a-dev`` and ``danish-rowid-dev`` (never trained on), the bundled version beside
   the new one, with ``benchmarks/bench_realworld.py``'s measures: accuracy, share flagged,
   error among accepted answers; and each version's MNIST test accuracy (its ``metrics.json``).

Usage::

    python -m benchmarks.bench_review                       # the whole round (minutes)
    python -m benchmarks.bench_review --usps 500 --orand 100 --epochs 2 --reader-fit none

Run it under ``flock /tmp/heavy.lock`` on a shared machine: it trains a version.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import httpx

from app.reading.review import DEFAULT_REVIEW_THRESHOLD
from benchmarks.bench_realworld import Answer, Row, print_table, read_predict, read_recognize
from benchmarks.machine import cpu_model
from harness.mnist import mnist_dir
from harness.realdigits import DATA_DIR_ENV, Item, load_items, realdigits_dir, set_dir
from harness.servers import REPO, RunningServer

BUNDLED_MODELS: Final = REPO / "models" / "mnist"
CLIENT_KEY: Final = "bench-client-key"
REVIEWER_KEY: Final = "bench-reviewer-key"
REVIEWER: Final = "bench-reviewer"
#: What an answer's ``queue`` field says, in the report.
QUEUE_FIELD: Final = {
    "queued": "flagged and queued",
    "audit": "accepted, queued as an audit sample",
    "None": "accepted, not queued",
    "not_queued": "not queued (database failed or full)",
}
#: Longest wait for the running server's poll to find the new version and the gate to decide.
GATE_TIMEOUT_SECONDS: Final = 120.0


@dataclasses.dataclass(frozen=True)
class RoundOptions:
    """What one round sends, how it trains and what it measures."""

    usps: int | None = None
    """At most this many non-held-out ``usps-train`` digits are sent (None: all)."""
    orand: int | None = None
    """At most this many non-held-out ``orand-car-a-dev`` checks are sent (None: all)."""
    weight: float = 1.0
    """The reviewed digits' sample weight against an MNIST digit's."""
    epochs: int | None = None
    """None: the recipe's."""
    augmentation: str | None = None
    """None: the recipe's; ``none`` turns it off."""
    reader_fit: str = "rule"
    audit_share: float | None = None
    """None: the service's default."""
    measure: int | None = None
    """At most this many held-out items of each set are measured (None: all)."""
    sets: tuple[str, ...] = ("usps-train", "orand-car-a-dev", "danish-rowid-dev")


@dataclasses.dataclass
class Sent:
    """What reading the sets did to the queue."""

    items: Counter[str] = dataclasses.field(default_factory=Counter)
    queue: Counter[str] = dataclasses.field(default_factory=Counter)
    """Answers by their ``queue`` field (``queued``, ``audit``, ``not_queued``, ``none``)."""
    truth_of: dict[str, str] = dataclasses.field(default_factory=dict)
    """review id -> the true label."""
    seconds: float = 0.0


@dataclasses.dataclass
class Reviewed:
    """What the scripted reviewer did."""

    keyed: int = 0
    reading_was_correct: int = 0
    by_kind: Counter[str] = dataclasses.field(default_factory=Counter)
    unknown: int = 0
    """Items it did not send (marked unreadable)."""
    seconds: float = 0.0


@dataclasses.dataclass
class RoundResult:
    """Everything a round measured."""

    sent: Sent
    reviewed: Reviewed
    export: dict[str, Any]
    bundled: int
    new: int
    metrics: dict[str, Any]
    """The new version's metrics.json."""
    bundled_metrics: dict[str, Any]
    gate: str
    """``served``, ``held: <reason>`` or ``failed: <reason>``."""
    train_seconds: float
    rows: dict[int, list[Row]]
    """Per version, the held-out measures."""


# --- 1. read -----------------------------------------------------------------------------------


def items_to_send(root: Path, options: RoundOptions) -> list[tuple[str, Item]]:
    """The non-held-out items of the sets reviewers would see: (set, item)."""
    chosen: list[tuple[str, Item]] = []
    for name, limit in (("usps-train", options.usps), ("orand-car-a-dev", options.orand)):
        folder = set_dir(name, root)
        if folder is None or limit == 0:
            continue
        items = [item for item in load_items(folder) if not item.held_out]
        chosen += [(name, item) for item in items[:limit]]
    return chosen


def send(http: httpx.Client, items: Sequence[tuple[str, Item]]) -> Sent:
    """Every item through ``/recognize`` with the service's defaults; remember the truths."""
    sent = Sent()
    started = time.perf_counter()
    for name, item in items:
        response = http.post(
            "/recognize",
            files={"file": (item.path.name, item.path.read_bytes(), "image/png")},
            headers={"X-Client-Ref": f"{name}/{item.path.name}"},
        )
        sent.items[name] += 1
        if response.status_code != 200:
            sent.queue[f"refused {response.status_code}"] += 1
            continue
        body = response.json()
        sent.queue[str(body.get("queue"))] += 1
        if body.get("review_id"):
            sent.truth_of[str(body["review_id"])] = item.label
    sent.seconds = time.perf_counter() - started
    return sent


# --- 2. review ---------------------------------------------------------------------------------


def review_queue(
    base_url: str, reviewer_key: str | None, truth_of: Mapping[str, str], reviewer: str = REVIEWER
) -> Reviewed:
    """The scripted reviewer: claim every waiting item through the HTTP API and key its truth.

    An item it did not send (no truth known) is marked ``unreadable``, never guessed.
    """
    done = Reviewed()
    started = time.perf_counter()
    headers = {"X-API-Key": reviewer_key} if reviewer_key else {}
    with httpx.Client(base_url=base_url, headers=headers, timeout=60.0) as http:
        while True:
            claimed = http.post("/reviews/claim", json={"reviewer": reviewer, "kind": None})
            if claimed.status_code == 204:
                break
            claimed.raise_for_status()
            item = claimed.json()
            review_id = str(item["review_id"])
            body: dict[str, Any] = {"lease": item["lease"], "reviewer": reviewer}
            truth = truth_of.get(review_id)
            if truth is None:
                body["verdict"] = "unreadable"
                done.unknown += 1
            else:
                body["digits"] = truth
            answered = http.post(f"/reviews/{review_id}", json=body)
            answered.raise_for_status()
            result = answered.json()["result"]
            if truth is not None:
                done.keyed += 1
                done.by_kind[str(item["kind"])] += 1
                done.reading_was_correct += bool(result["reading_was_correct"])
    done.seconds = time.perf_counter() - started
    return done


# --- 3. export and train -----------------------------------------------------------------------


def run_command(command: list[str], what: str) -> str:
    """Run one of the project's commands from the repository; its output, or a clear failure."""
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{what} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return done.stdout


def export_reviews(database_url: str, out: Path) -> dict[str, Any]:
    """``python -m training export-reviews``; the export's summary."""
    run_command(
        [sys.executable, "-m", "training", "export-reviews", "--database", database_url,
         "--out", str(out)],
        "export-reviews",
    )  # fmt: skip
    summary: dict[str, Any] = json.loads((out / "export.json").read_text())
    return summary


def train(models_dir: Path, extra: Path, options: RoundOptions) -> tuple[int, float]:
    """``python -m training`` with the bundled recipe and the export; (version, seconds)."""
    command = [sys.executable, "-m", "training", "--recipe", "default",
               "--models-dir", str(models_dir), "--extra-data", f"{extra}:{options.weight:g}",
               "--reader-fit", options.reader_fit]  # fmt: skip
    found = mnist_dir()  # the trainer would otherwise download it
    if found is not None:
        command += ["--data-dir", str(found)]
    if options.epochs is not None:
        command += ["--epochs", str(options.epochs)]
    if options.augmentation is not None:
        command += ["--augmentation", options.augmentation]
    started = time.perf_counter()
    before = {p.name for p in models_dir.iterdir()}
    run_command(command, "training")
    [new] = [p.name for p in models_dir.iterdir() if p.name not in before]
    return int(new), time.perf_counter() - started


# --- 4. the gate -------------------------------------------------------------------------------


def gate_decision(http: httpx.Client, version: int) -> str:
    """Wait for the running server's poll to see ``version``; what the store decided."""
    deadline = time.monotonic() + GATE_TIMEOUT_SECONDS
    while True:
        model = http.get("/model").json()
        if version in [v["version"] for v in model["served_versions"]]:
            return "served"
        for held in model["held_versions"]:
            if held["version"] == version:
                return f"held: {held['reason']}"
        for failed in model["failed_versions"]:
            if failed["version"] == version:
                return f"failed: {failed['reason']}"
        if time.monotonic() > deadline:
            return f"undecided after {GATE_TIMEOUT_SECONDS:.0f} s"
        time.sleep(0.5)


# --- 5. measure --------------------------------------------------------------------------------


def review_threshold(models_dir: Path, version: int) -> float:
    """The threshold ``/predict`` flags below for ``version`` (its reader.json, else default)."""
    try:
        calibration = json.loads((models_dir / str(version) / "reader.json").read_text())
        return float(calibration.get("review_threshold", DEFAULT_REVIEW_THRESHOLD))
    except (OSError, ValueError):
        return DEFAULT_REVIEW_THRESHOLD


def measure(
    base_url: str, version: int, root: Path, threshold: float, options: RoundOptions
) -> list[Row]:
    """The held-out part of every set through its endpoints, answered by ``version``."""
    rows = []
    with httpx.Client(base_url=base_url, params={"version": version}, timeout=60.0) as http:
        for name in options.sets:
            folder = set_dir(name, root)
            if folder is None:
                print(f"- skipped `{name}`: no {root / name}/labels.csv", file=sys.stderr)
                continue
            held = [item for item in load_items(folder) if item.held_out][: options.measure]
            endpoints = ["/predict", "/recognize"] if name == "usps-train" else ["/recognize"]
            for endpoint in endpoints:
                started = time.perf_counter()
                answers: list[Answer] = []
                for item in held:
                    png = item.path.read_bytes()
                    if endpoint == "/predict":
                        answers.append(read_predict(http, item.label, png, threshold))
                    else:
                        answers.append(read_recognize(http, item.label, png, str(item.path)))
                seconds = time.perf_counter() - started
                rows.append(Row(f"{name} (held-out), v{version}", endpoint, answers, seconds))
    return rows


# --- the round -----------------------------------------------------------------------------------


def run_round(
    options: RoundOptions, workdir: Path, root: Path, models_source: Path = BUNDLED_MODELS
) -> RoundResult:
    """Steps 1 to 5 in ``workdir`` (a copy of ``models_source``, the queue, the export)."""
    models_dir = workdir / "models"
    shutil.copytree(models_source, models_dir)
    database_url = f"sqlite:///{workdir / 'reviews.sqlite3'}"
    environment = {
        "DIGITS_API_KEY": CLIENT_KEY,
        "DIGITS_REVIEWER_API_KEY": REVIEWER_KEY,
        "DIGITS_REVIEW_DATABASE_URL": database_url,
        "DIGITS_DATA_DIR": str(workdir / "data"),
        "DIGITS_LOG_LEVEL": "WARNING",
    }
    if options.audit_share is not None:
        environment["DIGITS_REVIEW_AUDIT_SHARE"] = str(options.audit_share)
    bundled = max(int(p.name) for p in models_dir.iterdir() if p.name.isdigit())

    server = RunningServer.start(models_dir, workdir / "round.log", env=environment)
    try:
        with httpx.Client(
            base_url=server.url, headers={"X-API-Key": CLIENT_KEY}, timeout=60.0
        ) as http:
            served = http.get("/model").json()["version"]
            if served != bundled:
                raise RuntimeError(f"the round expects version {bundled} served, not {served}")
            sent = send(http, items_to_send(root, options))
            reviewed = review_queue(server.url, REVIEWER_KEY, sent.truth_of)
            export = export_reviews(database_url, workdir / "export")
            new, train_seconds = train(models_dir, workdir / "export" / "digits", options)
            gate = gate_decision(http, new)
    finally:
        server.stop()

    # Both versions pinned, so a held one is measured too; nothing queued while measuring.
    pinned = {
        "DIGITS_VERSION_POLICY": "specific",
        "DIGITS_VERSIONS": f"{bundled},{new}",
        "DIGITS_REVIEW_QUEUE": "false",
        "DIGITS_LOG_LEVEL": "WARNING",
    }
    server = RunningServer.start(models_dir, workdir / "measure.log", env=pinned)
    try:
        rows = {
            version: measure(
                server.url, version, root, review_threshold(models_dir, version), options
            )
            for version in (bundled, new)
        }
    finally:
        server.stop()
    return RoundResult(
        sent=sent,
        reviewed=reviewed,
        export=export,
        bundled=bundled,
        new=new,
        metrics=json.loads((models_dir / str(new) / "metrics.json").read_text()),
        bundled_metrics=json.loads((models_dir / str(bundled) / "metrics.json").read_text()),
        gate=gate,
        train_seconds=train_seconds,
        rows=rows,
    )


# --- the report --------------------------------------------------------------------------------


def print_round(result: RoundResult, options: RoundOptions) -> None:
    """The round's tables, as markdown."""
    sent, reviewed, export, metrics = result.sent, result.reviewed, result.export, result.metrics
    items = ", ".join(f"{name} {n}" for name, n in sent.items.items())
    queued = "; ".join(
        f"{QUEUE_FIELD.get(k, k)} {n}" for k, n in sorted(sent.queue.items(), key=lambda kv: -kv[1])
    )
    print("## The round\n")
    print("| step | figures |\n| --- | --- |")
    print(f"| sent through /recognize | {items} in {sent.seconds:.0f} s: {queued} |")
    kinds = ", ".join(f"{kind} {n}" for kind, n in sorted(reviewed.by_kind.items()))
    print(
        f"| keyed by the scripted reviewer | {reviewed.keyed} ({kinds}); the service's reading "
        f"was right on {reviewed.reading_was_correct}; not ours {reviewed.unknown}; "
        f"{reviewed.seconds:.0f} s |"
    )
    left = "; ".join(f"{k} {n}" for k, n in export["left_out"].items()) or "nothing"
    print(
        f"| exported | {export['strings']} images ({export['strings_with_boxes']} with a box "
        f"per digit), {export['digits']} digits ({export['held_out_digits']} held out); left "
        f"out: {left} |"
    )
    [extra] = metrics["extra_data"]
    print(
        f"| trained v{result.new} | `default` recipe, reader fit {options.reader_fit}, "
        f"{metrics['hyperparameters']['epochs']} epochs, {extra['fit_items']} reviewed digits "
        f"fitted at weight {extra['weight']:g}; {result.train_seconds:.0f} s in all |"
    )
    real = metrics.get("real_digits") or {}
    baseline = real.get("baseline") or {}
    if real:
        print(
            f"| held-out reviewed digits (metrics.json) | v{result.new} {real['accuracy']:.4f}, "
            f"v{baseline.get('version')} {baseline.get('accuracy', float('nan')):.4f} on the "
            f"same {real['items']} |"
        )
    print(f"| promotion gate | v{result.new} {result.gate} |")

    print("\n## MNIST test accuracy (metrics.json)\n")
    print("| version | test accuracy |\n| --- | ---: |")
    for version, document in (
        (result.bundled, result.bundled_metrics),
        (result.new, result.metrics),
    ):
        print(f"| v{version} | {document['test']['accuracy']:.4f} |")

    print("\n## Held-out real scans, each version\n")
    print_table([row for version in (result.bundled, result.new) for row in result.rows[version]])

    print(f"\n## Side by side: v{result.bundled} (bundled) → v{result.new} (reviewed data)\n")
    print("| set | endpoint | items | accuracy | flagged | error among accepted | accepted |")
    print("| --- | --- | ---: | --- | --- | --- | --- |")
    for old, new in zip(result.rows[result.bundled], result.rows[result.new], strict=True):
        name = old.name.rsplit(",", 1)[0]
        print(
            f"| {name} | {old.endpoint} | {old.count} | {old.accuracy:.3f} → {new.accuracy:.3f} "
            f"| {old.flagged:.1%} → {new.flagged:.1%} "
            f"| {old.error_cell} → {new.error_cell} "
            f"| {old.accepted:.1%} → {new.accepted:.1%} |"
        )


def main(argv: list[str] | None = None) -> int:
    """Run one round and print its report."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=None, help=f"${DATA_DIR_ENV}")
    parser.add_argument("--usps", type=int, default=None, help="usps digits sent (default all)")
    parser.add_argument("--orand", type=int, default=None, help="checks sent (default all)")
    parser.add_argument("--weight", type=float, default=1.0, help="the reviewed digits' weight")
    parser.add_argument("--epochs", type=int, default=None, help="default: the recipe's")
    parser.add_argument("--augmentation", choices=["none", "thickness"], default=None)
    parser.add_argument("--reader-fit", choices=["rule", "full", "none"], default="rule")
    parser.add_argument("--audit-share", type=float, default=None, help="default: the service's")
    parser.add_argument("--measure", type=int, default=None, help="held-out items per set")
    parser.add_argument("--keep", type=Path, default=None, help="work in this (new) folder")
    args = parser.parse_args(argv)
    root = args.data_dir or realdigits_dir()
    if root is None:
        print(f"error: the real-scan sets are needed: set {DATA_DIR_ENV}", file=sys.stderr)
        return 2
    options = RoundOptions(
        usps=args.usps,
        orand=args.orand,
        weight=args.weight,
        epochs=args.epochs,
        augmentation=args.augmentation,
        reader_fit=args.reader_fit,
        audit_share=args.audit_share,
        measure=args.measure,
    )
    with tempfile.TemporaryDirectory(prefix="bench-review-") as scratch:
        workdir = args.keep or Path(scratch)
        workdir.mkdir(parents=True, exist_ok=True)
        load = os.getloadavg()[0]
        started = time.perf_counter()
        result = run_round(options, workdir, root)
        seconds = time.perf_counter() - started
    print("# One review round on real scans\n")
    print(
        f"Machine: {cpu_model()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
        f"load average {load:.1f} at the start. {seconds:.0f} s in all.\n"
    )
    print_round(result, options)
    return 0


if __name__ == "__main__":
    sys.exit(main())
