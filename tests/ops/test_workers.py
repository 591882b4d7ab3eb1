"""Several worker processes (``WEB_CONCURRENCY``), started as production starts them.

The launcher (``python -m app.serve``) runs uvicorn's workers: each one is a process with its
own model and event loop, each enforces the connection limits, and exactly one of them serves
the gRPC port.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc

from harness.servers import HOST, LAUNCHER, REPO, free_port, server_environment
from tests.ops.conftest import ServedModel, ServerFactory

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
