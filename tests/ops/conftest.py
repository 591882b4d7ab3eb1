"""Fixtures for the operations tests: the real service under uvicorn, in its own process.

Each test that needs a server starts one with :func:`start_server` (``uvicorn
app.main:create_app --factory`` on 127.0.0.1 and a free port, settings through ``DIGITS_*``
environment variables, output captured to a log file) and gets it stopped at the end. Waiting
for readiness is bounded; the bound is generous because importing TensorFlow on a busy 2-core
machine takes seconds, and it is not a speed check.

The served model is the bundled one (newest ``models/mnist/<n>``) when it exists, else a tiny
SavedModel with the same signature built here. The expected answers come from loading that
SavedModel in this process and calling its signature, independently of the service.
"""

from __future__ import annotations

import gzip
import io
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
BUNDLED_MODELS = REPO / "models" / "mnist"
HOST = "127.0.0.1"
# Bounds on waiting, never speed checks: TensorFlow's import alone takes several seconds here.
READY_TIMEOUT_SECONDS = 120.0
STOP_TIMEOUT_SECONDS = 30.0
DIGIT_COUNT = 64


# --- digits and the model's own answers ----------------------------------------------------


def _mnist_test_images() -> np.ndarray | None:
    candidates = [os.environ.get("MNIST_DATA_DIR"), str(REPO.parent / "shared" / "data" / "mnist")]
    for candidate in candidates:
        path = Path(candidate) / "t10k-images-idx3-ubyte.gz" if candidate else None
        if path is not None and path.is_file():
            raw = gzip.decompress(path.read_bytes())
            count, rows, cols = struct.unpack(">III", raw[4:16])
            return np.frombuffer(raw, np.uint8, offset=16).reshape(count, rows, cols)
    return None


def png(image: np.ndarray) -> bytes:
    """PNG bytes of a uint8 grayscale image."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "PNG")
    return buffer.getvalue()


def _synthetic_digits(count: int) -> np.ndarray:
    """White strokes on black, different per image (only when MNIST is not available)."""
    rng = np.random.default_rng(7)
    images = np.zeros((count, 28, 28), np.uint8)
    for image in images:
        for _ in range(3):
            top, left = rng.integers(3, 20, size=2)
            height, width = rng.integers(2, 9, size=2)
            image[top : top + height, left : left + width] = rng.integers(150, 256)
    return images


def _build_tiny_model(path: Path) -> None:
    """A 784→10 softmax SavedModel with the service's signature and fixed random weights."""
    import tensorflow as tf

    rng = np.random.default_rng(3)
    weights = rng.normal(0.0, 0.05, (784, 10)).astype(np.float32)

    class Tiny(tf.Module):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.w = tf.Variable(weights)

        @tf.function(  # type: ignore[untyped-decorator]  # tensorflow ships no type hints
            input_signature=[tf.TensorSpec([None, 28, 28], tf.uint8, name="images")]
        )
        def serve(self, images: Any) -> dict[str, Any]:
            x = tf.reshape(tf.cast(images, tf.float32) / 255.0, [-1, 784])
            probabilities = tf.nn.softmax(tf.matmul(x, self.w))
            return {"probabilities": probabilities, "digit": tf.argmax(probabilities, axis=1)}

    module = Tiny()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})


@dataclass(frozen=True)
class ServedModel:
    """A good model version to install, the digits to send, and the model's answers."""

    version_dir: Path
    source: str
    images: np.ndarray
    pngs: list[bytes]
    digits: list[int]


@pytest.fixture(scope="session")
def served_model(tmp_path_factory: pytest.TempPathFactory) -> ServedModel:
    """The bundled model if committed (else a tiny one), digits, and what the model says."""
    import tensorflow as tf

    versions = (
        sorted((p for p in BUNDLED_MODELS.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
        if BUNDLED_MODELS.is_dir()
        else []
    )
    if versions:
        version_dir, source = versions[-1], f"bundled model {versions[-1]}"
    else:
        version_dir = tmp_path_factory.mktemp("tiny-model") / "1"
        _build_tiny_model(version_dir)
        source = "tiny fixture model"
    images = _mnist_test_images()
    images = images[:DIGIT_COUNT] if images is not None else _synthetic_digits(DIGIT_COUNT)
    signature = tf.saved_model.load(str(version_dir)).signatures["serving_default"]
    digits = signature(images=tf.constant(images))["digit"].numpy()
    return ServedModel(
        version_dir, source, images, [png(image) for image in images], [int(d) for d in digits]
    )


def install_version(models_dir: Path, source: Path, version: int) -> Path:
    """Copy a model version into ``models_dir`` atomically: a hidden staging copy, renamed."""
    models_dir.mkdir(parents=True, exist_ok=True)
    staging = models_dir / f".staging-{version}"
    shutil.copytree(source, staging)
    target = models_dir / str(version)
    staging.rename(target)
    return target


def install_corrupt_version(models_dir: Path, version: int) -> Path:
    """A version directory whose saved_model.pb is garbage."""
    target = models_dir / str(version)
    (target / "variables").mkdir(parents=True)
    (target / "saved_model.pb").write_bytes(b"\x08\x01garbage, not a SavedModel protobuf" * 20)
    return target


@pytest.fixture
def models_dir(tmp_path: Path, served_model: ServedModel) -> Path:
    """A models directory for one test holding the good model as version 1."""
    path = tmp_path / "models"
    install_version(path, served_model.version_dir, 1)
    return path


# --- the server ------------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def rss_bytes(pid: int) -> int:
    """Resident memory of a process (VmRSS in /proc/<pid>/status), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for process {pid}")


@dataclass
class RunningServer:
    """A uvicorn process serving the app; ``pid`` is uvicorn's own (not unshare's)."""

    process: subprocess.Popen[bytes]
    pid: int
    port: int
    log_path: Path

    @property
    def url(self) -> str:
        """Base URL, e.g. http://127.0.0.1:12345."""
        return f"http://{HOST}:{self.port}"

    def log(self) -> str:
        """Everything the server has written so far."""
        return self.log_path.read_text(errors="replace")

    def tail(self, lines: int = 40) -> str:
        """The end of the log, for assertion messages."""
        return "\n".join(self.log().splitlines()[-lines:])

    def rss(self) -> int:
        """The server process's resident memory now, in bytes."""
        return rss_bytes(self.pid)

    def stop(self) -> None:
        """SIGTERM (graceful), then kill if it does not end in time."""
        if self.process.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _child_pid(parent: subprocess.Popen[bytes]) -> int:
    """The process unshare forked (the server, PID 1 inside its namespace)."""
    children = Path(f"/proc/{parent.pid}/task/{parent.pid}/children")
    deadline = time.monotonic() + 10
    while not (text := children.read_text().split()):
        assert parent.poll() is None, f"unshare exited with {parent.returncode}"
        assert time.monotonic() < deadline, "unshare started no child"
        time.sleep(0.02)
    return int(text[0])


class ServerFactory:
    """Starts servers for one test and stops them all at its end."""

    def __init__(self, tmp_path: Path) -> None:
        self._tmp = tmp_path
        self._servers: list[RunningServer] = []

    def __call__(
        self,
        models_dir: Path,
        env: dict[str, str] | None = None,
        *,
        wait_for: str = "ready",
        as_pid_1: bool = False,
        graceful_seconds: float = 10.0,
    ) -> RunningServer:
        """Start the service and wait until ``/health/<wait_for>`` answers 200.

        ``as_pid_1`` runs uvicorn as PID 1 of a new PID namespace, as in a container: after a
        graceful shutdown uvicorn re-raises SIGTERM, which a PID 1 ignores, so it exits 0.
        """
        port = free_port()
        environment = {k: v for k, v in os.environ.items() if not k.startswith("DIGITS_")}
        environment.update(
            {
                "DIGITS_MODELS_DIR": str(models_dir),
                "PYTHONUNBUFFERED": "1",
                "TF_CPP_MIN_LOG_LEVEL": "2",
            }
        )
        environment.update(env or {})
        command = [
            sys.executable,
            "-m",
            "uvicorn",
            "app.main:create_app",
            "--factory",
            "--host",
            HOST,
            "--port",
            str(port),
            "--timeout-graceful-shutdown",
            f"{graceful_seconds:g}",
        ]
        if as_pid_1:
            unshare = shutil.which("unshare")
            assert unshare is not None, "unshare (util-linux) runs the server as PID 1"
            user = [] if os.geteuid() == 0 else ["--user", "--map-root-user"]
            command = [unshare, *user, "--pid", "--fork", "--kill-child", *command]
        log_path = self._tmp / f"server-{len(self._servers)}.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                command, cwd=REPO, env=environment, stdout=log, stderr=subprocess.STDOUT
            )
        pid = _child_pid(process) if as_pid_1 else process.pid
        server = RunningServer(process, pid, port, log_path)
        self._servers.append(server)
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        with httpx.Client(base_url=server.url, timeout=5.0) as client:
            while True:
                assert process.poll() is None, (
                    f"server exited with {process.returncode}:\n{server.tail()}"
                )
                try:
                    if client.get(f"/health/{wait_for}").status_code == 200:
                        return server
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, f"server not up in time:\n{server.tail()}"
                time.sleep(0.05)

    def stop_all(self) -> None:
        """Stop every server this factory started."""
        for server in self._servers:
            server.stop()


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[ServerFactory]:
    """Start real uvicorn servers (stopped at the end of the test)."""
    factory = ServerFactory(tmp_path)
    try:
        yield factory
    finally:
        factory.stop_all()


def assert_error_shape(body: Any, code: str) -> None:
    """The service's one error shape, with the expected code and a message a person can read."""
    assert isinstance(body, dict), body
    assert set(body) == {"error"}, body
    error = body["error"]
    # ``details`` is present only when there is something to say (app.core.errors).
    assert {"code", "message"} <= set(error) <= {"code", "message", "details"}, error
    assert isinstance(error.get("details", {}), dict), error
    assert error["code"] == code, error
    assert isinstance(error["message"], str), error
    assert len(error["message"]) > 10, error
