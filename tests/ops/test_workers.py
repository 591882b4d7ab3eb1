"""Several worker processes (``WEB_CONCURRENCY``), started as production starts them.

The launcher (``python -m app.serve``) runs uvicorn's workers: each one is a process with its
own model and event loop, each enforces the connection limits, exactly one of them serves the
gRPC port, and a scrape of /metrics counts the requests of all of them, whichever answers.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
from prometheus_client.parser import text_string_to_metric_families

from harness.servers import HOST, LAUNCHER, REPO, free_port, rss_bytes, server_environment
from tests.ops.conftest import ServedModel, ServerFactory
from tests.ops.test_shutdown import HalfSentRequest, _in_progress, _multipart, _refuses_connections

pytestmark = pytest.mark.slow

#: A bound on waiting for the second worker to finish loading TensorFlow, not a speed check.
BOTH_READY_SECONDS = 120.0


def _worker_processes(launcher_pid: int) -> list[int]:
    children = Path(f"/proc/{launcher_pid}/task/{launcher_pid}/children").read_text().split()
    return [int(pid) for pid in children]


def test_two_workers_both_answer_and_one_serves_grpc(
    start_server: ServerFactory, models_dir: Path, served_model: ServedModel
) -> None:
    grpc_port = free_port()
    server = start_server(models_dir, {"WEB_CONCURRENCY": "2", "DIGITS_GRPC_PORT": str(grpc_port)})
    # The launcher supervises; the workers are its child processes (uvicorn's spawn also
    # starts a resource tracker, which serves nothing).
    workers = [
        pid
        for pid in _worker_processes(server.pid)
        if "multiprocessing.resource_tracker" not in Path(f"/proc/{pid}/cmdline").read_text()
    ]
    assert len(workers) == 2, server.tail()

    # Each connection belongs to one worker: /metrics names it (its start time), and the
    # prediction sent on the same connection is that worker's answer.
    answered: dict[str, int] = {}
    deadline = time.monotonic() + BOTH_READY_SECONDS
    attempt = 0
    while len(answered) < 2:
        assert time.monotonic() < deadline, f"only {sorted(answered)} answered:\n{server.tail()}"
        index = attempt % len(served_model.pngs)
        attempt += 1
        with httpx.Client(base_url=server.url, timeout=30) as client:
            worker = client.get("/metrics", headers={"Accept": "application/json"})
            response = client.post(
                "/predict", files={"file": ("d.png", served_model.pngs[index], "image/png")}
            )
        if response.status_code == 503:  # that worker is still loading its model
            time.sleep(0.2)
            continue
        assert response.status_code == 200, response.text
        assert response.json()["digit"] == served_model.digits[index]
        started_at = worker.json()["service"]["started_at"]
        answered[started_at] = answered.get(started_at, 0) + 1

    # The limits hold in every worker: a request head over the limit is refused on connections
    # that land on either of them.
    big = {"X-Padding": "a" * 40_000}
    for _ in range(6):
        with httpx.Client(base_url=server.url, timeout=30) as client:
            assert client.get("/health/live", headers=big).status_code == 431

    with triton_grpc.InferenceServerClient(f"{HOST}:{grpc_port}") as client:
        assert client.is_server_ready()
        tensor = triton_grpc.InferInput("images", [4, 28, 28], "UINT8")
        tensor.set_data_from_numpy(served_model.images[:4])
        digits = client.infer("mnist", [tensor]).as_numpy("digit")
    np.testing.assert_array_equal(digits, served_model.digits[:4])
    log = server.log()
    assert log.count("gRPC service listening on") == 1, log
    assert log.count("is served by another worker process") == 1, log


def prometheus_values(text: str) -> dict[str, float]:
    """``name{label=value,...}`` → value, for every sample of a Prometheus text answer."""
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            values[f"{sample.name}{{{labels}}}"] = sample.value
    return values


def shared_metrics_dir(worker: int) -> Path:
    """The metrics directory the launcher gave a worker (in its environment at spawn)."""
    environ = Path(f"/proc/{worker}/environ").read_bytes().split(b"\0")
    (entry,) = [v for v in environ if v.startswith(b"PROMETHEUS_MULTIPROC_DIR=")]
    return Path(entry.partition(b"=")[2].decode())


def scrape_values(url: str) -> dict[str, float]:
    """One scrape, on a new connection (either worker may answer it)."""
    with httpx.Client(base_url=url, timeout=30) as client:
        return prometheus_values(client.get("/metrics", headers={"Accept": "text/plain"}).text)


PREDICTED = "digits_http_requests_total{endpoint=/predict,method=POST,status=200}"
SCRAPED = "digits_http_requests_total{endpoint=/metrics,method=GET,status=200}"


def test_every_scrape_counts_the_requests_of_both_workers(
    start_server: ServerFactory, models_dir: Path, served_model: ServedModel
) -> None:
    server = start_server(models_dir, {"WEB_CONCURRENCY": "2"})
    workers = server.worker_pids()
    assert len(workers) == 2, server.tail()
    directory = shared_metrics_dir(workers[0])
    assert shared_metrics_dir(workers[1]) == directory
    assert directory.stat().st_mode & 0o777 == 0o700, "private to the service's user"

    # Each request on a connection of its own, so that both workers take some.
    requests = 20
    for index in range(requests):
        png = served_model.pngs[index % len(served_model.pngs)]
        with httpx.Client(base_url=server.url, timeout=30) as client:
            response = client.post("/predict", files={"file": ("d.png", png, "image/png")})
        assert response.status_code == 200, response.text

    # A worker counts a request just after its answer has left: let the last one land.
    deadline = time.monotonic() + 10
    while scrape_values(server.url)[PREDICTED] != requests:
        assert time.monotonic() < deadline, server.tail()
        time.sleep(0.1)

    # Scrape, each time on a new connection, until each worker has answered at least twice:
    # every scrape gives the replica's count, and no count ever goes down.
    scrapes: list[dict[str, float]] = []
    by_worker: dict[str, int] = {}
    deadline = time.monotonic() + BOTH_READY_SECONDS
    while len(by_worker) < 2 or min(by_worker.values()) < 2:
        assert time.monotonic() < deadline, f"answered by {by_worker}:\n{server.tail()}"
        with httpx.Client(base_url=server.url, timeout=30) as client:
            text = client.get("/metrics", headers={"Accept": "text/plain"}).text
            # The same connection, so the same worker: JSON names it by its start time.
            service = client.get("/metrics").json()["service"]
        values = prometheus_values(text)
        assert values[PREDICTED] == requests, (by_worker, values[PREDICTED])
        assert service["endpoints"]["POST /predict"]["requests"] == requests
        assert service["images_predicted"] == requests
        assert service["inference"]["requests"] == requests
        if scrapes:
            previous = scrapes[-1]
            for name, value in previous.items():
                if name.endswith("_total") and not name.startswith("process_"):
                    assert values.get(name, 0.0) >= value, name
        scrapes.append(values)
        by_worker[service["started_at"]] = by_worker.get(service["started_at"], 0) + 1
    assert (
        scrapes[-1]["process_resident_memory_bytes{}"]
        > sum(rss_bytes(pid) for pid in workers) * 0.9
    ), "process_* covers every process of the replica"

    # A worker that dies is replaced; its counts stay and its requests in flight stop counting.
    os.kill(workers[1], signal.SIGKILL)
    deadline = time.monotonic() + 30
    while any(directory.glob(f"gauge_live*_{workers[1]}.db")):
        assert time.monotonic() < deadline, "the launcher never marked the worker dead"
        time.sleep(0.1)
    for _ in range(3):
        values = scrape_values(server.url)
        assert values[PREDICTED] == requests
        assert values["digits_http_requests_in_progress{}"] == 1, "the scrape itself only"

    log = server.log()
    # uvicorn's "running on" is not logged at bind time, before any worker has its model.
    assert "Uvicorn running on" not in log
    deadline = time.monotonic() + 30
    while "ready: serving model version 1" not in (log := server.log()):
        assert time.monotonic() < deadline, log
        time.sleep(0.1)
    assert log.count("ready: serving") == 1
    assert log.index("starting: 2 worker processes") < log.index("ready: serving")
    assert f"ready: serving model version 1 on {server.url} (2 worker processes)" in log

    server.stop()
    assert not directory.exists(), "the launcher removes the metrics directory at exit"


def run_launcher(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run the launcher on a free port until it exits (these tests expect it to refuse)."""
    return subprocess.run(
        [sys.executable, "-m", LAUNCHER, "--host", HOST, "--port", str(free_port())],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_busy_grpc_port_fails_a_multi_worker_start(models_dir: Path, tmp_path: Path) -> None:
    """A worker that cannot bind leaves gRPC to a sibling, so the launcher checks the port first."""
    with socket.socket() as holder:
        holder.bind((HOST, 0))
        holder.listen()
        busy = holder.getsockname()[1]
        env = server_environment(
            models_dir, {"WEB_CONCURRENCY": "2", "DIGITS_GRPC_PORT": str(busy)}
        )
        result = run_launcher(env)
    assert result.returncode != 0
    assert f"cannot listen on {HOST}:{busy}" in result.stderr, result.stderr


def test_web_concurrency_must_be_a_positive_integer(models_dir: Path) -> None:
    env = server_environment(models_dir, {"WEB_CONCURRENCY": "two"})
    result = run_launcher(env)
    assert result.returncode != 0
    assert "WEB_CONCURRENCY='two'" in result.stderr
    assert "positive integer" in result.stderr


def test_with_several_workers_a_stopping_replica_refuses_new_connections_at_once(
    start_server: ServerFactory, models_dir: Path, served_model: ServedModel
) -> None:
    # A balancer scaling in must see "connection refused" (and try another replica), not a
    # connection queued on a socket nobody will accept from, reset after it sent its upload.
    server = start_server(models_dir, {"WEB_CONCURRENCY": "2"}, graceful_seconds=20)
    body, content_type = _multipart("file", [served_model.pngs[0]])
    held = HalfSentRequest(server.port, "/predict", body, content_type)
    deadline = time.monotonic() + BOTH_READY_SECONDS
    while _in_progress(server) < 2:  # the held request and the probe itself
        assert time.monotonic() < deadline, server.tail()
        time.sleep(0.05)
    os.kill(server.pid, signal.SIGTERM)
    deadline = time.monotonic() + 10.0
    while not _refuses_connections(server.port):
        assert time.monotonic() < deadline, "new connections were still taken while draining"
        time.sleep(0.05)
    # The request in flight still gets its answer.
    status, _, answer = held.finish()
    assert status == 200, answer
    assert answer["digit"] == served_model.digits[0]
