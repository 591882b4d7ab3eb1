"""Requests for ``make test-compose`` (scripts/test-compose.sh), sent to the Compose stack
through its load balancer on this host's loopback.

    python scripts/compose_probe.py requests --http 127.0.0.1:8000 --grpc 127.0.0.1:8001
    python scripts/compose_probe.py load --http 127.0.0.1:8000 --stop-file F --report R
    python scripts/compose_probe.py metrics --http 127.0.0.1:8000 [--prometheus H:P --replicas N]
    python scripts/compose_probe.py shared-queue --http 127.0.0.1:8000 --replicas 2 \
        -- docker compose -p PROJECT -f docker-compose.yml

Each command prints what it checked and exits non-zero when a check fails. ``load`` sends a
bounded number of uploads at a fixed rate until the stop file appears, and counts every answer:
a failed request is a transport error, a status other than 200, or a wrong reading.
``shared-queue`` runs a probe inside each ``api`` replica (``docker compose exec --index``):
each one connects to the database its DIGITS_REVIEW_DATABASE_URL names, and, where the service
has the review queue, a flagged reading sent through the balancer shows in every replica's
``/reviews/stats``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
DIGIT = REPO / "examples" / "digit.png"
POSTAL_CODE = REPO / "examples" / "postal-code.png"
#: What the README says the examples read as.
DIGIT_READ, POSTAL_READ = 3, "75011"
#: nginx's body limit (deploy/nginx.conf) and the service's (DIGITS_MAX_UPLOAD_BYTES default).
BALANCER_LIMIT, SERVICE_LIMIT = 6 * 1024 * 1024, 5 * 1024 * 1024


class CheckFailedError(Exception):
    """A check of the stack did not hold."""


def check(condition: bool, what: str) -> None:
    if not condition:
        raise CheckFailedError(what)


def say(line: str) -> None:
    print(line, flush=True)


# ----------------------------------------------------------------------------- requests


def _upload(client: httpx.Client, path: str, image: Path) -> httpx.Response:
    return client.post(path, files={"file": (image.name, image.read_bytes(), "image/png")})


def _error_code(response: httpx.Response) -> str:
    body: dict[str, Any] = response.json()
    code: str = body["error"]["code"]
    return code


def requests_check(http: str, grpc: str | None) -> None:
    """README's requests through the balancer, its own error answers, and gRPC."""
    with httpx.Client(base_url=f"http://{http}", timeout=30) as client:
        started = time.perf_counter()
        answer = _upload(client, "/predict", DIGIT)
        check(answer.status_code == 200, f"/predict: {answer.status_code} {answer.text[:200]}")
        digit = answer.json()["digit"]
        check(digit == DIGIT_READ, f"/predict read {digit}, not {DIGIT_READ}")
        say(f"  POST /predict examples/digit.png             200 digit={digit}")

        answer = _upload(client, "/recognize?expected_length=5", POSTAL_CODE)
        check(answer.status_code == 200, f"/recognize: {answer.status_code}")
        digits = answer.json()["digits"]
        check(digits == POSTAL_READ, f"/recognize read {digits!r}, not {POSTAL_READ!r}")
        say(f'  POST /recognize examples/postal-code.png     200 digits="{digits}"')

        answer = client.get("/health/ready")
        check(answer.status_code == 200, f"/health/ready: {answer.status_code}")
        say(f"  GET  /health/ready                           200 {answer.text}")

        answer = client.get("/metrics", headers={"Accept": "text/plain"})
        lines = [line for line in answer.text.splitlines() if line.startswith("digits_http_")]
        check(answer.status_code == 200 and bool(lines), "/metrics: no digits_http_* series")
        say(f"  GET  /metrics (text/plain)                   200 {len(lines)} digits_http_* lines")

        # Between the service's limit and the balancer's: the service refuses it.
        answer = client.post(
            "/predict", files={"file": ("big.png", b"\0" * (SERVICE_LIMIT + 1024), "image/png")}
        )
        check(answer.status_code == 413, f"over the service's limit: {answer.status_code}")
        check(_error_code(answer) == "payload_too_large", answer.text[:200])
        say(f"  POST 5 MiB + 1 KiB (service's limit)         413 {answer.text[:70]}...")
        # Over the balancer's: nginx refuses it, in the same shape.
        answer = client.post(
            "/predict",
            content=b"\0" * (BALANCER_LIMIT + 1024),
            headers={"Content-Type": "application/octet-stream"},
        )
        check(answer.status_code == 413, f"over nginx's limit: {answer.status_code}")
        check(answer.headers.get("content-type") == "application/json", "nginx's 413 is JSON")
        check(_error_code(answer) == "payload_too_large", answer.text[:200])
        check(answer.json()["error"]["details"]["max_bytes"] == BALANCER_LIMIT, answer.text)
        say(f"  POST 6 MiB + 1 KiB (nginx's limit)           413 {answer.text[:70]}...")
        say(f"  ({time.perf_counter() - started:.2f} s)")
    if grpc is not None:
        grpc_check(grpc)


def grpc_check(address: str) -> None:
    """The Open Inference Protocol over gRPC, through the balancer's gRPC port."""
    try:
        import tritonclient.grpc as grpcclient
    except ImportError:
        say("  gRPC: skipped (tritonclient is not installed)")
        return
    client = grpcclient.InferenceServerClient(address)
    check(client.is_server_ready(), "gRPC ServerReady is false")
    image = np.zeros((1, 28, 28), np.uint8)
    image[0, 4:24, 12:16] = 255  # a vertical bar: a 1, as in docs/versions.md
    images = grpcclient.InferInput("images", [1, 28, 28], "UINT8")
    images.set_data_from_numpy(image)
    result = client.infer("mnist", [images])
    digit = result.as_numpy("digit")
    check(digit is not None and int(digit[0]) == 1, f"gRPC ModelInfer read {digit}")
    version = result.get_response().model_version
    say(f"  gRPC ServerReady true; ModelInfer digit={int(digit[0])} model_version={version}")


# ----------------------------------------------------------------------------- load


@dataclass
class LoadReport:
    """What the load saw: answers by status, failures with when and what."""

    sent: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    failures: list[dict[str, Any]] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    seconds: float = 0.0

    def record(self, started: float, t0: float, outcome: str, failure: str | None) -> None:
        self.statuses[outcome] += 1
        self.latencies.append(time.perf_counter() - started)
        if failure is not None:
            self.failures.append({"at_s": round(started - t0, 2), "what": failure})

    def summary(self) -> dict[str, Any]:
        ordered = sorted(self.latencies) or [0.0]
        return {
            "requests": self.sent,
            "seconds": round(self.seconds, 1),
            "statuses": dict(sorted(self.statuses.items())),
            "failed": len(self.failures),
            "failures": self.failures[:20],
            "latency_ms": {
                "median": round(statistics.median(ordered) * 1000, 1),
                "p99": round(ordered[int(0.99 * (len(ordered) - 1))] * 1000, 1),
                "max": round(ordered[-1] * 1000, 1),
            },
        }


async def _one(client: httpx.AsyncClient, number: int) -> tuple[str, str | None]:
    """One upload (every fifth a postal code): its outcome and, when it failed, why."""
    postal = number % 5 == 4
    image = POSTAL_CODE if postal else DIGIT
    path = "/recognize?expected_length=5" if postal else "/predict"
    try:
        answer = await client.post(
            path, files={"file": (image.name, image.read_bytes(), "image/png")}
        )
    except httpx.HTTPError as error:
        return type(error).__name__, f"{path}: {type(error).__name__}: {error}"
    outcome = str(answer.status_code)
    if answer.status_code != 200:
        return outcome, f"{path}: {answer.status_code} {answer.text[:160]}"
    read = answer.json()["digits" if postal else "digit"]
    if read != (POSTAL_READ if postal else DIGIT_READ):
        return "wrong", f"{path}: read {read!r}"
    return outcome, None


async def load(http: str, rate: float, concurrency: int, most: int, stop: Path) -> LoadReport:
    """Uploads at ``rate`` per second, ``concurrency`` at once, until ``stop`` exists or
    ``most`` were sent."""
    report = LoadReport()
    t0 = time.perf_counter()
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=f"http://{http}", timeout=90, limits=limits) as client:

        async def worker() -> None:
            while report.sent < most and not stop.exists():
                number = report.sent
                report.sent += 1
                due = t0 + number / rate
                await asyncio.sleep(max(0.0, due - time.perf_counter()))
                started = time.perf_counter()
                outcome, failure = await _one(client, number)
                report.record(started, t0, outcome, failure)
                if failure is not None:
                    say(f"  load: failure at {started - t0:.1f} s: {failure}")

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    report.seconds = time.perf_counter() - t0
    return report


# ----------------------------------------------------------------------------- metrics


def _samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    from prometheus_client.parser import text_string_to_metric_families

    return [
        (sample.name, sample.labels, sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    ]


def metrics_check(http: str, prometheus: str | None, replicas: int | None) -> None:
    """/metrics through the balancer parses and describes the served model; Prometheus (when
    running) scrapes every replica."""
    with httpx.Client(base_url=f"http://{http}", timeout=30) as client:
        served = client.get("/model").json()["version"]
        answer = client.get("/metrics", headers={"Accept": "text/plain"})
    check(answer.status_code == 200, f"/metrics: {answer.status_code}")
    check(answer.headers["content-type"].startswith("text/plain"), "Prometheus text")
    samples = _samples(answer.text)
    values = {name: value for name, labels, value in samples if not labels}
    check(values.get("digits_ready") == 1, f"digits_ready {values.get('digits_ready')}")
    check(values.get("digits_model_version") == served, "digits_model_version is /model's")
    answered = sum(
        value
        for name, labels, value in samples
        if name == "digits_http_requests_total" and labels.get("status") == "200"
    )
    check(answered > 0, "this worker counted no answered request")
    say(
        f"  /metrics: {len(samples)} samples parsed; digits_ready 1; digits_model_version "
        f"{served:g} (= /model); this worker counted {answered:g} requests answered 200"
    )
    if prometheus is None or replicas is None:
        return
    deadline = time.monotonic() + 75  # DNS discovery refreshes every 15 s, scrapes every 15 s
    up: list[str] = []
    while time.monotonic() < deadline:
        targets = httpx.get(f"http://{prometheus}/api/v1/targets", timeout=10).json()
        up = [
            t["labels"]["instance"]
            for t in targets["data"]["activeTargets"]
            if t["labels"].get("job") == "mnist-digits" and t["health"] == "up"
        ]
        if len(up) == replicas:
            break
        time.sleep(3)
    check(len(up) == replicas, f"Prometheus scrapes {len(up)} replicas, not {replicas}: {up}")
    query = httpx.get(
        f"http://{prometheus}/api/v1/query",
        params={"query": "count(digits_ready == 1)"},
        timeout=10,
    ).json()
    ready = int(float(query["data"]["result"][0]["value"][1]))
    check(ready == replicas, f"Prometheus sees {ready} ready replicas, not {replicas}")
    say(f"  Prometheus: {len(up)} replicas up and scraped ({', '.join(sorted(up))}), all ready")


# ----------------------------------------------------------------------------- shared queue

#: Run by ``python -c`` inside an api replica: the database its own setting names, reached
#: with the image's own driver, and its /reviews/stats (the HTTP status where there is none).
REPLICA_PROBE = """
import json, os, urllib.error, urllib.request
import psycopg
url = os.environ["DIGITS_REVIEW_DATABASE_URL"]
conninfo = url.replace("postgresql+psycopg://", "postgresql://", 1)
with psycopg.connect(conninfo, connect_timeout=5) as connection:
    row = connection.execute(
        "select current_user, current_database(), inet_server_addr()::text, version()"
    ).fetchone()
try:
    with urllib.request.urlopen("http://127.0.0.1:8000/reviews/stats", timeout=5) as answer:
        stats = json.load(answer)
except urllib.error.HTTPError as error:
    stats = error.code
print(json.dumps({"url": url.split("@")[-1], "user": row[0], "database": row[1],
                  "server": row[2], "version": row[3].split(" on ")[0], "stats": stats}))
"""


def _replica_probes(compose: list[str], replicas: int) -> list[dict[str, Any]]:
    """What :data:`REPLICA_PROBE` prints in each api replica."""
    probes = []
    for index in range(1, replicas + 1):
        argv = [*compose, "exec", "-T", "--index", str(index), "api"]
        result = subprocess.run(
            [*argv, "python", "-c", REPLICA_PROBE],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        check(result.returncode == 0, f"replica {index}: {result.stderr.strip()[-400:]}")
        probes.append(json.loads(result.stdout.strip().splitlines()[-1]))
    return probes


def shared_queue_check(http: str, replicas: int, compose: list[str]) -> None:
    """Every api replica reaches the same PostgreSQL; with the review queue, a flagged reading
    sent through the balancer is counted by every replica."""
    before = _replica_probes(compose, replicas)
    for index, probe in enumerate(before, start=1):
        say(
            f"  replica {index}: {probe['url']} as {probe['user']}: database "
            f"{probe['database']} on {probe['server']} ({probe['version']})"
        )
    servers = {(p["server"], p["database"]) for p in before}
    check(len(servers) == 1, f"the replicas reach different databases: {servers}")
    for probe in before:
        check(isinstance(probe["stats"], dict), f"/reviews/stats answered {probe['stats']}")
    with httpx.Client(base_url=f"http://{http}", timeout=30) as client:
        # The postal code read against the wrong length: flagged, so queued.
        answer = _upload(client, "/recognize?expected_length=6", POSTAL_CODE)
    check(answer.status_code == 200, f"/recognize: {answer.status_code} {answer.text[:200]}")
    body = answer.json()
    check(body.get("queue") == "queued", f"the flagged reading was not queued: {body}")
    after = _replica_probes(compose, replicas)
    waiting = [p["stats"]["waiting"] for p in after]
    check(len(set(waiting)) == 1, f"the replicas count different queues: {waiting}")
    check(waiting[0] == before[0]["stats"]["waiting"] + 1, f"waiting {before} -> {after}")
    say(
        f"  a flagged /recognize through the balancer (review_id {body.get('review_id')}): "
        f"waiting {before[0]['stats']['waiting']} -> {waiting[0]} on all {replicas} replicas"
    )


# ----------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    requests = commands.add_parser("requests", help="README's requests and error answers")
    requests.add_argument("--http", required=True)
    requests.add_argument("--grpc")
    loading = commands.add_parser("load", help="uploads at a fixed rate until told to stop")
    loading.add_argument("--http", required=True)
    loading.add_argument("--rate", type=float, default=40.0, help="requests per second")
    loading.add_argument("--concurrency", type=int, default=8)
    loading.add_argument("--most", type=int, default=20_000, help="the bound on requests")
    loading.add_argument("--stop-file", type=Path, required=True)
    loading.add_argument("--report", type=Path, required=True)
    metrics = commands.add_parser("metrics", help="/metrics, and Prometheus' targets")
    metrics.add_argument("--http", required=True)
    metrics.add_argument("--prometheus")
    metrics.add_argument("--replicas", type=int)
    shared = commands.add_parser("shared-queue", help="the api replicas share one database")
    shared.add_argument("--http", required=True)
    shared.add_argument("--replicas", type=int, required=True)
    shared.add_argument("compose", nargs=argparse.REMAINDER, help="-- docker compose -p ...")
    args = parser.parse_args(argv)
    try:
        if args.command == "requests":
            requests_check(args.http, args.grpc)
        elif args.command == "load":
            report = asyncio.run(
                load(args.http, args.rate, args.concurrency, args.most, args.stop_file)
            )
            summary = report.summary()
            args.report.write_text(json.dumps(summary, indent=2))
            check(report.failures == [], f"{len(report.failures)} failed requests")
        elif args.command == "shared-queue":
            compose = args.compose[1:] if args.compose[:1] == ["--"] else args.compose
            shared_queue_check(args.http, args.replicas, compose)
        else:
            metrics_check(args.http, args.prometheus, args.replicas)
    except CheckFailedError as failure:
        say(f"  FAILED: {failure}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
