"""Benchmark: how the service reads real scans, and how honest its review flag is there.

Sends every image of the real-scan development sets (``$REALDIGITS_DATA_DIR``, see
harness/realdigits.py) through the real service (create_app + TestClient: decoding,
normalization, segmentation, the inference worker and the SavedModel, the path a client's
request takes), plus synthetic postal codes of MNIST test digits (training/postal_codes.py),
and prints one table:

* count; refusals by error code;
* accuracy: the whole answer right (a refusal counts as wrong); character accuracy,
  1 - edit distance / length;
* flagged: answers with ``needs_review`` (for ``/predict``, a confidence below the service's
  review threshold, the same rule ``/recognize`` applies to each digit);
* error among unflagged answers, and the accepted share: unflagged answers out of all items.

Each real set is reported on its fixed held-out part (``crc32(filename) % 5 == 0``, the sets'
own rule: nothing is ever fitted on it), and on the whole set beside it, marked as such.

``--scan N`` adds synthetic scan-like codes of MNIST test digits (training/scan_codes.py);
``--show-errors`` lists the accepted answers that are wrong (with their files), to see what the
review rule misses. Single digits (``usps-train``) go to ``/predict`` and to ``/recognize``;
strings to ``/recognize``. All with the service's default settings (no ``threshold``, no
``expected_length``). The real sets are for measuring only: nothing is fitted on them.

Usage::

    python -m benchmarks.bench_realworld --limit 300 --postal 300 [--scan 300] [--show-errors]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from benchmarks.bench_postal import edit_distance
from benchmarks.machine import cpu_model
from harness.realdigits import DATA_DIR_ENV, SETS, load_items, realdigits_dir, set_dir


@dataclasses.dataclass(frozen=True)
class Answer:
    """What the service said about one item."""

    truth: str
    read: str | None
    """The digits read; None when the request was refused."""
    flagged: bool
    error: str | None = None
    ignored: int = 0
    source: str = ""
    """Where the item came from (its file), to look at it."""
    reasons: tuple[str, ...] = ()  # review reason codes
    held_out: bool = True
    """In the set's fixed held-out part (synthetic codes: always, nothing is fitted on them)."""


@dataclasses.dataclass(frozen=True)
class Row:
    """The measures of one set through one endpoint."""

    name: str
    endpoint: str
    answers: list[Answer]
    seconds: float

    @property
    def count(self) -> int:
        return len(self.answers)

    @property
    def refusals(self) -> Counter[str]:
        return Counter(a.error for a in self.answers if a.error is not None)

    @property
    def accuracy(self) -> float:
        return sum(a.read == a.truth for a in self.answers) / max(1, self.count)

    @property
    def char_accuracy(self) -> float:
        total = sum(len(a.truth) for a in self.answers)
        wrong = sum(min(edit_distance(a.read or "", a.truth), len(a.truth)) for a in self.answers)
        return 1.0 - wrong / max(1, total)

    @property
    def flagged(self) -> float:
        answered = [a for a in self.answers if a.read is not None]
        return sum(a.flagged for a in answered) / max(1, len(answered))

    @property
    def unflagged(self) -> list[Answer]:
        return [a for a in self.answers if a.read is not None and not a.flagged]

    @property
    def accepted(self) -> float:
        return len(self.unflagged) / max(1, self.count)

    @property
    def error_cell(self) -> str:
        """The error among unflagged answers with its counts ("0.2% (2 of 1177)"), or "none
        accepted": a share of a few answers means little without them."""
        accepted = self.unflagged
        if not accepted:
            return "none accepted"
        wrong = sum(a.read != a.truth for a in accepted)
        return f"{wrong / len(accepted):.1%} ({wrong} of {len(accepted)})"


def _refused(truth: str, body: dict[str, object]) -> Answer:
    error = body.get("error")
    code = error.get("code") if isinstance(error, dict) else None
    return Answer(truth, None, True, str(code))


def read_predict(client: object, truth: str, png: bytes, threshold: float) -> Answer:
    """One single-digit image through ``/predict``."""
    response = client.post("/predict", files={"file": ("x.png", png, "image/png")})  # type: ignore[attr-defined]
    body = response.json()
    if response.status_code != 200:
        return _refused(truth, body)
    return Answer(truth, str(body["digit"]), float(body["confidence"]) < threshold)


def read_recognize(client: object, truth: str, png: bytes, source: str = "") -> Answer:
    """One image through ``/recognize`` with the service's defaults."""
    response = client.post("/recognize", files={"file": ("x.png", png, "image/png")})  # type: ignore[attr-defined]
    body = response.json()
    if response.status_code != 200:
        return _refused(truth, body)
    return Answer(
        truth,
        str(body["digits"]),
        bool(body["needs_review"]),
        None,
        len(body.get("ignored", [])),
        source,
        tuple(reason["code"] for reason in body.get("review_reasons", [])),
    )


def measure_sets(
    client: object, root: Path, names: list[str], limit: int | None, threshold: float
) -> list[Row]:
    """Every requested set through its endpoints; absent sets are reported and skipped."""
    rows = []
    for name in names:
        folder = set_dir(name, root)
        if folder is None:
            print(f"- skipped `{name}`: no {root / name}/labels.csv", file=sys.stderr)
            continue
        items = load_items(folder, limit=limit)
        endpoints = ["/predict", "/recognize"] if SETS[name] == "digit" else ["/recognize"]
        for endpoint in endpoints:
            started = time.perf_counter()
            answers = []
            for item in items:
                png = item.path.read_bytes()
                if endpoint == "/predict":
                    answer = read_predict(client, item.label, png, threshold)
                else:
                    answer = read_recognize(client, item.label, png, str(item.path))
                answers.append(dataclasses.replace(answer, held_out=item.held_out))
            seconds = time.perf_counter() - started
            held = [a for a in answers if a.held_out]
            share = len(held) / max(1, len(answers))
            rows.append(Row(f"{name} (held-out)", endpoint, held, seconds * share))
            rows.append(Row(f"{name} (whole set)", endpoint, answers, seconds))
    return rows


def measure_postal(client: object, count: int, seed: int, data_dir: str | None) -> Row | None:
    """Synthetic postal codes of MNIST test digits through ``/recognize``."""
    from training.postal_codes import generate_postal_codes

    return _measure_codes(client, generate_postal_codes, "postal", count, seed, data_dir)


def measure_scan(client: object, count: int, seed: int, data_dir: str | None) -> Row | None:
    """Synthetic scan-like codes (training/scan_codes.py) of MNIST test digits."""
    from training.scan_codes import generate_scan_codes

    return _measure_codes(client, generate_scan_codes, "scan-like", count, seed, data_dir)


def _measure_codes(
    client: object,
    generate: Callable[..., Sequence[Any]],
    kind: str,
    count: int,
    seed: int,
    data_dir: str | None,
) -> Row | None:
    """``count`` codes drawn by ``generate`` from MNIST test digits, through ``/recognize``;
    None (said on stderr) when MNIST is not available."""
    from training.postal_codes import load_test_digits

    try:
        images, labels = load_test_digits(data_dir)
    except Exception as exc:  # any failure to find MNIST: report it, keep the real sets
        print(f"- skipped the synthetic {kind} codes: MNIST not available ({exc})", file=sys.stderr)
        return None
    codes = generate(images, labels, count, seed=seed)
    started = time.perf_counter()
    answers = [read_recognize(client, code.digits, code.png) for code in codes]
    return Row(f"synthetic {kind} (MNIST test, seed {seed})", "/recognize", answers,
               time.perf_counter() - started)  # fmt: skip


def print_table(rows: list[Row]) -> None:
    """The measures as one markdown table."""
    print(
        "| set | endpoint | count | refused (by code) | accuracy | character accuracy "
        "| flagged | error among unflagged | accepted | ms per image |"
    )
    print("| --- | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for row in rows:
        refusals = ", ".join(f"{code} {n}" for code, n in sorted(row.refusals.items())) or "0"
        print(
            f"| {row.name} | {row.endpoint} | {row.count} | {refusals} | {row.accuracy:.3f} "
            f"| {row.char_accuracy:.3f} | {row.flagged:.1%} | {row.error_cell} "
            f"| {row.accepted:.1%} | {1000 * row.seconds / max(1, row.count):.0f} |"
        )


def print_errors(rows: list[Row]) -> None:
    """The accepted answers that are wrong (unflagged and not the truth), one line each."""
    for row in rows:
        wrong = [a for a in row.unflagged if a.read != a.truth]
        if not wrong:
            continue
        print(f"\n## Accepted but wrong: {row.name} {row.endpoint} ({len(wrong)})\n")
        for answer in wrong:
            print(f"- truth {answer.truth!r} read {answer.read!r} {answer.source}")


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print its report as markdown."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=None, help=f"${DATA_DIR_ENV}")
    parser.add_argument("--sets", nargs="*", default=list(SETS), choices=list(SETS))
    parser.add_argument("--limit", type=int, default=None, help="first N items of each set")
    parser.add_argument("--postal", type=int, default=500, help="synthetic codes (0: none)")
    parser.add_argument("--seed", type=int, default=2024, help="seed of the synthetic codes")
    parser.add_argument(
        "--scan", type=int, default=0, help="synthetic scan-like codes of test digits (0: none)"
    )
    parser.add_argument("--mnist-dir", default=None, help="MNIST directory ($MNIST_DATA_DIR)")
    parser.add_argument("--models-dir", type=Path, default=Path("models/mnist"))
    parser.add_argument(
        "--show-errors", action="store_true", help="list the accepted answers that are wrong"
    )
    args = parser.parse_args(argv)

    root = args.data_dir or realdigits_dir()
    from fastapi.testclient import TestClient

    from app.main import create_app
    from app.reading.review import DEFAULT_REVIEW_THRESHOLD
    from app.settings import Settings

    # The reading alone: no review queue (it would store every flagged item in ./data and
    # count that storing in the times).
    settings = Settings(
        models_dir=args.models_dir, model_poll_seconds=0.0, log_level="WARNING", review_queue=False
    )
    rows: list[Row] = []
    with TestClient(create_app(settings)) as client:
        described = client.get("/model").json()
        version = described.get("version")
        # The threshold /recognize applies by default: the setting, else the version's own.
        calibrated = (described.get("reader_calibration") or {}).get("review_threshold")
        threshold = next(
            t
            for t in (settings.review_threshold, calibrated, DEFAULT_REVIEW_THRESHOLD)
            if t is not None
        )
        if root is None:
            print(f"- skipped the real sets: set {DATA_DIR_ENV}", file=sys.stderr)
        else:
            rows += measure_sets(client, root, args.sets, args.limit, threshold)
        if args.postal > 0:
            postal = measure_postal(client, args.postal, args.seed, args.mnist_dir)
            if postal is not None:
                rows.append(postal)
        if args.scan > 0:
            scan = measure_scan(client, args.scan, args.seed, args.mnist_dir)
            if scan is not None:
                rows.append(scan)

    import tensorflow as tf

    limit = f"first {args.limit} of each set" if args.limit else "every item"
    print("# Real scans: reading and review\n")
    print(
        f"Machine: {cpu_model()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"TensorFlow {tf.__version__}. Model version {version}; {limit}; review threshold "
        f"{threshold}.\n"
    )
    print_table(rows)
    if args.show_errors:
        print_errors(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
