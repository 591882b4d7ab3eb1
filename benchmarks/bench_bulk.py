"""Bulk reading: folders of scans through the `digits` command line, against a loop of requests.

Writes 20,000 MNIST test PNGs (the 10,000 test digits, twice) and 2,000 synthetic postal codes
of MNIST test digits (training/postal_codes.py) into a temporary folder, starts the service
as production starts it (``python -m app.serve``) with two workers, and reads:

* the single digits with a plain loop of one ``POST /predict`` per image (httpx, one
  connection, the first ``--loop`` images: what a user without a client writes);
* the single digits with ``digits read FOLDER --url ... --out results.csv``;
* the postal codes with ``digits read FOLDER --recognize --expected-length 5 --url ...``;
* both again with ``digits read --local`` (in-process, no server).

Each `digits` run is a separate process, timed from start to exit (start-up included), its
resident memory sampled every 0.2 s (start, peak, end: flat means bounded by the batch, not
the folder). Prints one markdown table and the goals: single digits through the server at
least 10× the loop and at least 1,500 images/s, postal codes at least 100/s, client memory flat.

Usage::

    python -m benchmarks.bench_bulk [--digits 20000] [--codes 2000] [--loop 2000]
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.bodies import png
from harness.mnist import mnist_dir, read_test_set
from harness.servers import REPO, RunningServer
from training.postal_codes import generate_postal_codes

#: `digits` is the console script of the client package, beside this interpreter.
DIGITS = Path(sys.executable).parent / "digits"
WORKERS = 2
SAMPLE_SECONDS = 0.2
#: The goals (on this 2-core machine).
LOOP_FACTOR = 10.0
DIGITS_PER_SECOND = 1_500.0
CODES_PER_SECOND = 100.0
#: Client memory is flat when the second half of a run adds at most this.
FLAT_MIB = 64.0


@dataclass
class Run:
    """One timed read of a folder."""

    name: str
    items: int
    seconds: float
    rows: int = 0
    errors: int = 0
    flagged: int = 0
    rss_start: float = 0.0
    rss_peak: float = 0.0
    rss_end: float = 0.0
    rss_middle: float = 0.0
    """Resident memory halfway through the run: end minus middle is the run's growth."""

    @property
    def rate(self) -> float:
        return self.items / self.seconds if self.seconds else 0.0


def write_digits(folder: Path, count: int) -> int:
    """``count`` PNGs of MNIST test digits (cycling through the 10,000); how many."""
    images, _ = read_test_set(_mnist_dir())
    folder.mkdir(parents=True)
    for i in range(count):
        (folder / f"digit-{i:05d}.png").write_bytes(png(images[i % len(images)]))
    return count


def write_codes(folder: Path, count: int) -> int:
    """``count`` synthetic five-digit postal codes of MNIST test digits."""
    images, labels = read_test_set(_mnist_dir())
    folder.mkdir(parents=True)
    for i, code in enumerate(generate_postal_codes(images, labels, count, seed=2024)):
        (folder / f"code-{i:05d}.png").write_bytes(code.png)
    return count


def _mnist_dir() -> Path:
    found = mnist_dir()
    if found is None:
        sys.exit("MNIST not found: set MNIST_DATA_DIR to a directory with the four MNIST files")
    return found


def _rss_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def run_cli(name: str, args: list[str], items: int, out: Path) -> Run:
    """``digits read ...`` as its own process; wall time and sampled memory."""
    command = [str(DIGITS), "read", *args, "--out", str(out), "--no-progress"]
    samples: list[float] = []
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    while process.poll() is None:
        rss = _rss_mib(process.pid)
        if rss:
            samples.append(rss)
        time.sleep(SAMPLE_SECONDS)
    seconds = time.perf_counter() - started
    stderr = process.stderr.read().decode() if process.stderr else ""
    if process.returncode not in (0, 1):
        raise SystemExit(f"{name}: digits exited {process.returncode}\n{stderr}")
    with out.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    # The first samples are the interpreter starting; memory after start-up is the third.
    settled = samples[min(2, len(samples) - 1)] if samples else 0.0
    middle = samples[len(samples) // 2] if samples else 0.0
    return Run(
        name,
        items,
        seconds,
        rows=len(rows),
        errors=sum(1 for r in rows if r.get("error")),
        flagged=sum(1 for r in rows if r.get("needs_review") in ("true", "True", "1")),
        rss_start=settled,
        rss_peak=max(samples, default=0.0),
        rss_end=samples[-1] if samples else 0.0,
        rss_middle=middle,
    )


def run_loop(url: str, folder: Path, count: int, keep_alive: bool) -> Run:
    """One ``POST /predict`` per image, one after the other: on one kept-alive connection
    (an httpx.Client), or a new connection per request (``httpx.post``, as a quick script
    with ``requests.post`` does)."""
    files = sorted(folder.iterdir())[:count]
    errors = 0
    started = time.perf_counter()
    if keep_alive:
        with httpx.Client(base_url=url, timeout=60) as client:
            for path in files:
                response = client.post("/predict", files={"file": (path.name, path.read_bytes())})
                errors += response.status_code != 200
    else:
        for path in files:
            response = httpx.post(
                f"{url}/predict", files={"file": (path.name, path.read_bytes())}, timeout=60
            )
            errors += response.status_code != 200
    seconds = time.perf_counter() - started
    how = "one connection" if keep_alive else "a connection per request"
    return Run(f"single digits: a loop of POST /predict, {how}", len(files), seconds, len(files),
               errors)  # fmt: skip


def print_table(runs: list[Run]) -> None:
    print(
        "| run | items | seconds | items/s | rows | errors | flagged "
        "| client RSS after start / half-way / end (MiB) |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for r in runs:
        memory = (
            f"{r.rss_start:.0f} / {r.rss_peak:.0f} / {r.rss_end:.0f}"
            if r.rss_peak
            else "in-process"
        )
        print(
            f"| {r.name} | {r.items:,} | {r.seconds:.1f} | {r.rate:,.0f} | {r.rows:,} "
            f"| {r.errors} | {r.flagged:,} | {memory} |"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models-dir", type=Path, default=REPO / "models" / "mnist")
    parser.add_argument("--digits", type=int, default=20_000)
    parser.add_argument("--codes", type=int, default=2_000)
    parser.add_argument("--loop", type=int, default=2_000, help="images sent one by one")
    parser.add_argument("--no-local", action="store_true", help="skip the --local runs")
    parser.add_argument("--log-dir", type=Path, default=REPO / "artifacts" / "bench")
    args = parser.parse_args(argv)
    if not DIGITS.exists():
        sys.exit(f"no {DIGITS}: `make install-dev` installs the client and its command line")
    args.log_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench-bulk-") as tmp:
        root = Path(tmp)
        digits = write_digits(root / "digits", args.digits)
        codes = write_codes(root / "codes", args.codes)
        runs: list[Run] = []
        server = RunningServer.start(
            args.models_dir.resolve(), args.log_dir / "bulk-server.log", workers=WORKERS
        )
        try:
            url = server.url
            runs.append(run_loop(url, root / "digits", args.loop, keep_alive=True))
            runs.append(run_loop(url, root / "digits", args.loop, keep_alive=False))
            runs.append(
                run_cli(
                    f"single digits: digits read --url ({WORKERS} workers)",
                    ["--url", url, str(root / "digits")],
                    digits,
                    root / "digits-server.csv",
                )
            )
            runs.append(
                run_cli(
                    f"postal codes: digits read --recognize --url ({WORKERS} workers)",
                    ["--recognize", "--expected-length", "5", "--url", url, str(root / "codes")],
                    codes,
                    root / "codes-server.csv",
                )
            )
        finally:
            server.stop()
        if not args.no_local:
            runs.append(
                run_cli(
                    "single digits: digits read --local",
                    ["--local", "--models-dir", str(args.models_dir), str(root / "digits")],
                    digits,
                    root / "digits-local.csv",
                )
            )
            runs.append(
                run_cli(
                    "postal codes: digits read --recognize --local",
                    [
                        "--recognize",
                        "--expected-length",
                        "5",
                        "--local",
                        "--models-dir",
                        str(args.models_dir),
                        str(root / "codes"),
                    ],
                    codes,
                    root / "codes-local.csv",
                )
            )
    load = os.getloadavg()[0]
    print(
        f"# Bulk reading\n\nMachine: {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, Python {platform.python_version()}; load average {load:.1f} "
        f"at the end. Server: `python -m app.serve`, {WORKERS} workers, the bundled model.\n"
    )
    print_table(runs)
    kept, fresh, server_digits, server_codes = runs[0], runs[1], runs[2], runs[3]
    clients = runs[2:]
    goals = [
        (
            f"single digits through the server ≥ {LOOP_FACTOR:g}× the loop (one connection / "
            "a connection per request)",
            f"{server_digits.rate / kept.rate:.1f}× / {server_digits.rate / fresh.rate:.1f}×",
            server_digits.rate >= LOOP_FACTOR * kept.rate,
        ),
        (
            f"single digits through the server ≥ {DIGITS_PER_SECOND:,.0f}/s",
            f"{server_digits.rate:,.0f}/s",
            server_digits.rate >= DIGITS_PER_SECOND,
        ),
        (
            f"postal codes ≥ {CODES_PER_SECOND:g}/s",
            f"{server_codes.rate:,.0f}/s",
            server_codes.rate >= CODES_PER_SECOND,
        ),
        (
            f"client memory flat (the second half of each run adds at most {FLAT_MIB:g} MiB)",
            ", ".join(f"{r.rss_end - r.rss_middle:+.0f} MiB" for r in clients),
            all(r.rss_end - r.rss_middle <= FLAT_MIB for r in clients),
        ),
    ]
    print()
    for name, value, met in goals:
        print(f"- {name}: {value} ({'met' if met else 'NOT met'})")
    return 0 if all(met for _, _, met in goals) else 1


if __name__ == "__main__":
    sys.exit(main())
