"""The launcher says ``ready:`` when the service is ready, and not before.

The model loads in the lifespan, tens of seconds after the process starts: the first line only
says it is starting, and one ``ready: serving model version N on http://host:port`` line comes
once ``/health/ready`` answers 200 (never while it answers anything else).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from harness.servers import READY_TIMEOUT_SECONDS, RunningServer
from tests.ops.conftest import ServedModel, install_version

pytestmark = pytest.mark.slow

READY_LINE = "ready: serving model version"


@pytest.fixture
def spawned(tmp_path: Path) -> Iterator[list[RunningServer]]:
    """Servers started without waiting for them (stopped at the end of the test)."""
    servers: list[RunningServer] = []
    try:
        yield servers
    finally:
        for server in servers:
            server.stop()


def ready_status(server: RunningServer) -> int | None:
    """What /health/ready answers now (None while nothing listens)."""
    try:
        return httpx.get(f"{server.url}/health/ready", timeout=10).status_code
    except httpx.TransportError:
        return None


def watch_until_ready_line(server: RunningServer, timeout: float) -> list[int | None]:
    """Ask /health/ready until the log holds the ready line; every time the line was already
    in the log before asking, the answer must be 200. The answers seen, in order."""
    answers: list[int | None] = []
    deadline = time.monotonic() + timeout
    while True:
        assert server.process.poll() is None, server.tail()
        announced = READY_LINE in server.log()
        answers.append(ready_status(server))
        if announced:
            assert answers[-1] == 200, f"announced ready, /health/ready says {answers[-1]}"
            return answers
        assert time.monotonic() < deadline, (
            f"no ready line; answers {answers[-5:]}\n{server.tail()}"
        )
        time.sleep(0.05)


def test_the_ready_line_comes_once_ready_answers_200(
    spawned: list[RunningServer], models_dir: Path, tmp_path: Path
) -> None:
    server = RunningServer.spawn(models_dir, tmp_path / "server.log")
    spawned.append(server)
    answers = watch_until_ready_line(server, READY_TIMEOUT_SECONDS)
    assert answers[0] != 200, "the model loads after start: it cannot be ready at once"
    log = server.log()
    assert log.count(READY_LINE) == 1, log
    assert f"{READY_LINE} 1 on {server.url} (1 worker process)" in log
    starting = log.index("starting: loading the model, then listening on")
    assert starting < log.index(READY_LINE)
    assert "not ready" not in log
    # Still true later on.
    assert ready_status(server) == 200


def test_no_ready_line_without_a_model_until_one_is_served(
    spawned: list[RunningServer], tmp_path: Path, served_model: ServedModel
) -> None:
    models = tmp_path / "models"
    models.mkdir()
    server = RunningServer.spawn(
        models, tmp_path / "server.log", env={"DIGITS_MODEL_POLL_SECONDS": "1"}
    )
    spawned.append(server)
    # Up, answering, not ready: the launcher says so once, and does not claim readiness.
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    while "not ready: " + server.url not in server.log():
        assert server.process.poll() is None, server.tail()
        assert time.monotonic() < deadline, server.tail()
        time.sleep(0.1)
    assert ready_status(server) == 503
    assert READY_LINE not in server.log()

    # A version appears: it is loaded, and only then is the service announced ready.
    install_version(models, served_model.version_dir, 1)
    watch_until_ready_line(server, READY_TIMEOUT_SECONDS)
    log = server.log()
    assert log.count(READY_LINE) == 1
    assert log.count("not ready: " + server.url) == 1, "said once, not at every ask"
