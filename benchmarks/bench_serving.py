"""Serving benchmark: the real service under uvicorn (one worker) against the framework's ceiling.

Prints markdown tables:

* ``POST /predict`` with one 28×28 PNG at concurrency 1, 16 and 64: requests/s, p50, p99,
  errors; the same load against ``POST /bench/noop`` (benchmarks/bench_app.py: the same
  multipart upload through the same app and middleware, answering a constant), and the ratio;
* ``POST /predict/batch`` with 256 images per request: images/s;
* time from process start to ready, resident memory idle and after the run;
* the memory benchmark (benchmarks/bench_memory.py): growth over 20,000 requests after 1,000
  warm-up requests, and over 1,000 hostile inputs;
* each target, met or not.

The load generator is wrk (Debian package ``wrk``: ``apt-get install -y wrk``), a C program
with its own event loop, so the client is not the bottleneck a Python client would be; the
same wrk script (benchmarks/wrk_post.lua) posts the same body to ``/predict`` and the no-op.
wrk and the server share the machine's cores, as the calibration prototype did. Every cell
gets a warm-up run that is not measured, then a fixed-duration measured run.

Usage (from the repository root)::

    python benchmarks/bench_serving.py [--duration 10] [--models-dir models/mnist]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

if __package__ in (None, ""):
    # Run as a script (``python benchmarks/bench_serving.py``): make ``benchmarks`` importable.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._server import (
    BENCH_APP,
    PUBLIC_APP,
    REPO,
    Server,
    cpu_seconds,
    digit_images,
    machine_lines,
    multipart,
    png,
    start_server,
)
from benchmarks.bench_app import NOOP_PATH
from benchmarks.bench_memory import MemoryResult, run_memory_benchmark

WRK_SCRIPT = Path(__file__).resolve().with_name("wrk_post.lua")
BATCH_SIZE = 256

# The targets of the serving issue.
TARGET_RATIO = 0.6
TARGET_P99_MS_C16 = 50.0
TARGET_BATCH_IMAGES_PER_S = 10_000.0
TARGET_READY_S = 10.0


@dataclass(frozen=True)
class Cell:
    """One measured wrk run."""

    path: str
    concurrency: int
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    errors: int
    server_cpu: float
    server_cpu_seconds: float
    requests_per_call: float | None = None

    @property
    def rps(self) -> float:
        """Completed requests per second."""
        return self.requests / self.seconds

    @property
    def cpu_ms_per_request(self) -> float:
        """Server CPU time (all threads) per completed request, in milliseconds.

        Unlike requests/s, this hardly depends on what else runs on the machine.
        """
        return 1000 * self.server_cpu_seconds / max(self.requests, 1)


def find_wrk() -> str:
    """The wrk binary, or exit with how to install it."""
    wrk = shutil.which("wrk")
    if wrk is None:
        sys.exit(
            "wrk is not installed. This benchmark uses wrk as its load generator because a C "
            "client is not the bottleneck that a Python client would be on a 2-core machine. "
            "Install it from Debian's packages: `apt-get install -y wrk` (as root)."
        )
    return wrk


def run_wrk(
    wrk: str,
    server: Server,
    path: str,
    body_file: Path,
    content_type: str,
    concurrency: int,
    seconds: float,
) -> Cell:
    """One wrk run with ``concurrency`` connections on one wrk thread."""
    env = dict(os.environ, BENCH_BODY=str(body_file), BENCH_CONTENT_TYPE=content_type)
    cpu_before = cpu_seconds(server.pid)
    started = time.perf_counter()
    # One wrk thread: it handles thousands of requests per second and leaves the second core
    # to the server; --timeout well above any latency we expect, so slow answers are measured
    # rather than counted as errors.
    command = [
        wrk,
        "-t1",
        f"-c{concurrency}",
        f"-d{seconds:g}s",
        "--timeout",
        "10s",
        "-s",
        str(WRK_SCRIPT),
        f"{server.url}{path}",
    ]
    completed = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    wall = time.perf_counter() - started
    cpu_used = cpu_seconds(server.pid) - cpu_before
    line = next((x for x in completed.stdout.splitlines() if x.startswith("BENCH_JSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no summary:\n{completed.stdout}\n{completed.stderr}")
    data = json.loads(line.removeprefix("BENCH_JSON "))
    errors = sum(data[k] for k in ("connect", "read", "write", "status", "timeout"))
    return Cell(
        path=path,
        concurrency=concurrency,
        requests=int(data["requests"]),
        seconds=data["duration_us"] / 1e6,
        p50_ms=data["p50_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
        errors=int(errors),
        server_cpu=cpu_used / wall,
        server_cpu_seconds=cpu_used,
    )


def _inference_counts(server: Server) -> tuple[int, int]:
    """(model calls, requests) of the service's inference worker so far (from /metrics)."""
    with httpx.Client(base_url=server.url, timeout=30) as client:
        inference = client.get("/metrics").json()["service"]["inference"]
    return int(inference["model_calls"]), int(inference["requests"])


def measure(
    wrk: str,
    server: Server,
    path: str,
    body: tuple[Path, str],
    concurrency: int,
    warmup: float,
    duration: float,
) -> Cell:
    """A warm-up run that is thrown away, then the measured run."""
    if warmup > 0:
        run_wrk(wrk, server, path, body[0], body[1], concurrency, warmup)
    before = _inference_counts(server)
    cell = run_wrk(wrk, server, path, body[0], body[1], concurrency, duration)
    after = _inference_counts(server)
    if after[0] == before[0]:
        return cell  # the no-op endpoint makes no model call
    per_call = (after[1] - before[1]) / (after[0] - before[0])
    return dataclasses.replace(cell, requests_per_call=per_call)


def check_answers(server: Server, single: tuple[bytes, str], batch: tuple[bytes, str]) -> None:
    """Make sure the bodies are answered correctly before timing them."""
    with httpx.Client(base_url=server.url, timeout=30) as client:
        one = client.post("/predict", content=single[0], headers={"Content-Type": single[1]})
        one.raise_for_status()
        assert set(one.json()) >= {"digit", "confidence", "probabilities", "model_version"}
        many = client.post("/predict/batch", content=batch[0], headers={"Content-Type": batch[1]})
        many.raise_for_status()
        results = many.json()["results"]
        assert len(results) == BATCH_SIZE
        assert all(r["error"] is None for r in results), "every batch image must be read"


def wait_for_quiet(max_load: float, max_wait: float) -> None:
    """Wait (up to ``max_wait`` seconds) for the 1-minute load average to drop below a bound."""
    deadline = time.monotonic() + max_wait
    while os.getloadavg()[0] >= max_load and time.monotonic() < deadline:
        print(f"(load {os.getloadavg()[0]:.2f} >= {max_load}: waiting)", file=sys.stderr)
        time.sleep(15)


def newest_version(models_dir: Path) -> int | None:
    """The highest integer-named version directory, if any."""
    versions = [int(p.name) for p in models_dir.glob("*") if p.name.isdigit() and p.is_dir()]
    return max(versions) if versions else None


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print its tables."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models-dir", type=Path, default=REPO / "models" / "mnist")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measured cell")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of warm-up per cell")
    parser.add_argument("--concurrency", default="1,16,64", help="connections for /predict")
    parser.add_argument("--batch-concurrency", default="1,4", help="connections for batches")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory benchmark")
    parser.add_argument(
        "--wait-idle",
        type=float,
        default=0.0,
        help="wait up to this many seconds for the load average to drop below --max-load",
    )
    parser.add_argument("--max-load", type=float, default=1.0)
    parser.add_argument("--log-dir", type=Path, default=REPO / "artifacts" / "bench")
    args = parser.parse_args(argv)

    wrk = find_wrk()
    models_dir = args.models_dir.resolve()
    version = newest_version(models_dir)
    if version is None:
        sys.exit(f"No model version under {models_dir}: train one first (make train).")
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    batch_concurrencies = [int(c) for c in args.batch_concurrency.split(",")]
    if args.wait_idle > 0:
        wait_for_quiet(args.max_load, args.wait_idle)

    images, source = digit_images(BATCH_SIZE)
    single = multipart("file", [png(images[0])])
    batch = multipart("files", [png(image) for image in images])
    wrk_version = subprocess.run([wrk, "-v"], capture_output=True, text=True).stdout.split("\n")[0]

    print("# Serving benchmark\n")
    print(*machine_lines(), sep="\n")
    print(f"- Load generator: {wrk_version.strip()} (1 thread), script {WRK_SCRIPT.name}")
    print(
        f"- Server: uvicorn, 1 worker, uvloop + httptools, settings from the environment "
        f"(defaults); model {models_dir}/{version}"
    )
    print(
        f"- Bodies: /predict one {len(single[0])}-byte multipart upload (28×28 PNG, {source}); "
        f"/predict/batch {BATCH_SIZE} images, {len(batch[0]):,} bytes"
    )
    print(f"- Each cell: {args.warmup:g} s warm-up (not measured), then {args.duration:g} s\n")
    sys.stdout.flush()

    with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp:
        single_file, batch_file = Path(tmp) / "single.body", Path(tmp) / "batch.body"
        single_file.write_bytes(single[0])
        batch_file.write_bytes(batch[0])
        single_body, batch_body = (single_file, single[1]), (batch_file, batch[1])

        public = start_server(PUBLIC_APP, models_dir, args.log_dir / "serving-public.log")
        bench: Server | None = None
        try:
            ready_seconds = public.ready_seconds
            time.sleep(1.0)  # let the process settle before reading its idle memory
            idle_rss = public.rss_mib()
            bench = start_server(BENCH_APP, models_dir, args.log_dir / "serving-bench.log")
            check_answers(public, single, batch)
            pairs: list[tuple[Cell, Cell]] = []
            for c in concurrencies:
                # Interleaved, so a change in background load hits both sides of the ratio.
                predict = measure(
                    wrk, public, "/predict", single_body, c, args.warmup, args.duration
                )
                noop = measure(wrk, bench, NOOP_PATH, single_body, c, args.warmup, args.duration)
                pairs.append((predict, noop))
            batches = [
                measure(wrk, public, "/predict/batch", batch_body, c, args.warmup, args.duration)
                for c in batch_concurrencies
            ]
            after_rss = public.rss_mib()
        finally:
            exit_code = public.stop()
            if bench is not None:
                bench.stop()

    print("## /predict against the no-op endpoint (same upload, same app and middleware)\n")
    print(
        "| concurrency | /predict req/s | p50 ms | p99 ms | errors | CPU ms/req | req/model call "
        "| no-op req/s | p50 ms | p99 ms | errors | CPU ms/req | ratio /predict ÷ no-op |"
    )
    print("| ---: " * 13 + "|")
    for predict, noop in pairs:
        print(
            f"| {predict.concurrency} | {predict.rps:,.0f} | {predict.p50_ms:.2f} "
            f"| {predict.p99_ms:.2f} | {predict.errors} | {predict.cpu_ms_per_request:.2f} "
            f"| {predict.requests_per_call or 0:.1f} | {noop.rps:,.0f} | {noop.p50_ms:.2f} "
            f"| {noop.p99_ms:.2f} | {noop.errors} "
            f"| {noop.cpu_ms_per_request:.2f} | {predict.rps / noop.rps:.2f} |"
        )
    print(f"\n## /predict/batch ({BATCH_SIZE} images per request)\n")
    print("| concurrency | requests/s | images/s | p50 ms | p99 ms | errors | CPU ms/image |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for cell in batches:
        print(
            f"| {cell.concurrency} | {cell.rps:,.1f} | {cell.rps * BATCH_SIZE:,.0f} "
            f"| {cell.p50_ms:.1f} | {cell.p99_ms:.1f} | {cell.errors} "
            f"| {cell.cpu_ms_per_request / BATCH_SIZE:.3f} |"
        )
    print("\n## Process\n")
    print("| start to ready | RSS idle | RSS after the run | exit code after SIGTERM |")
    print("| ---: | ---: | ---: | ---: |")
    print(f"| {ready_seconds:.2f} s | {idle_rss:.0f} MiB | {after_rss:.0f} MiB | {exit_code} |")
    if exit_code == -signal.SIGTERM:
        print(
            "\n(-15: after a clean graceful shutdown uvicorn re-raises SIGTERM on itself; as a "
            "container's PID 1, which ignores it, the process exits 0: tests/ops/test_shutdown.py.)"
        )
    sys.stdout.flush()

    memory: MemoryResult | None = None
    if not args.no_memory:
        print()
        memory = run_memory_benchmark(models_dir, args.log_dir)
        memory.print_table()

    by_c = {p.concurrency: (p, n) for p, n in pairs}
    checks: list[tuple[str, str, bool]] = []
    for c in (1, 16):
        if c in by_c:
            ratio = by_c[c][0].rps / by_c[c][1].rps
            checks.append((f"ratio ≥ {TARGET_RATIO} at c={c}", f"{ratio:.2f}", ratio >= 0.6))
    if 16 in by_c:
        p99 = by_c[16][0].p99_ms
        checks.append(
            (f"p99 ≤ {TARGET_P99_MS_C16:g} ms at c=16", f"{p99:.1f} ms", p99 <= TARGET_P99_MS_C16)
        )
    errors = sum(p.errors + n.errors for p, n in pairs) + sum(b.errors for b in batches)
    checks.append(("zero errors", str(errors), errors == 0))
    best = max(b.rps * BATCH_SIZE for b in batches) if batches else 0.0
    checks.append(
        (
            f"≥ {TARGET_BATCH_IMAGES_PER_S:,.0f} images/s in batch",
            f"{best:,.0f}",
            best >= TARGET_BATCH_IMAGES_PER_S,
        )
    )
    checks.append(
        (f"ready within {TARGET_READY_S:g} s", f"{ready_seconds:.2f} s", ready_seconds <= 10)
    )
    if memory is not None:
        checks.extend(memory.checks())
    print("\n## Targets\n")
    print("| target | measured | met |")
    print("| --- | ---: | :---: |")
    for name, value, met in checks:
        print(f"| {name} | {value} | {'yes' if met else 'NO'} |")
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"\nLoad average at the end: {load}")
    return 0 if all(met for _, _, met in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
