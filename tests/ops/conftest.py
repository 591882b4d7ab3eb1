"""Fixtures for the operations tests: the real service under uvicorn, in its own process.

Each test that needs a server starts one with :func:`start_server` (the production launcher,
``python -m app.serve``, on 127.0.0.1 and a free port, settings through ``DIGITS_*``
environment variables, output captured to a log file; see :mod:`harness.servers`) and
gets it stopped at the end.

The served model is the bundled one (newest ``models/mnist/<n>``) when it exists, else a tiny
SavedModel with the same signature built here. The expected answers come from loading that
SavedModel in this process and calling its signature, independently of the service.
"""

from __future__ import annotations

import io
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from harness.mnist import mnist_dir, read_test_set
from harness.servers import REPO, RunningServer

BUNDLED_MODELS = REPO / "models" / "mnist"
DIGIT_COUNT = 64


# --- digits and the model's own answers ----------------------------------------------------


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


def softmax_outputs(x: Any, w: Any) -> dict[str, Any]:
    """What a well-behaved model answers: softmax probabilities and their argmax."""
    import tensorflow as tf

    probabilities = tf.nn.softmax(tf.matmul(x, w))
    return {"probabilities": probabilities, "digit": tf.argmax(probabilities, axis=1)}


def build_model(
    path: Path,
    outputs: Callable[[Any, Any], dict[str, Any]] = softmax_outputs,
    *,
    seed: int = 3,
) -> None:
    """A 784→10 SavedModel with the service's signature and fixed random weights, whose outputs
    ``outputs(pixels / 255 [N, 784], weights)`` computes."""
    import tensorflow as tf

    rng = np.random.default_rng(seed)
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
            return outputs(x, self.w)

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
        build_model(version_dir)
        source = "tiny fixture model"
    directory = mnist_dir()
    images = (
        read_test_set(directory)[0][:DIGIT_COUNT]
        if directory is not None
        else _synthetic_digits(DIGIT_COUNT)
    )
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
        graceful_seconds: int = 10,
    ) -> RunningServer:
        """Start the service and wait until ``/health/<wait_for>`` answers 200.

        ``as_pid_1`` runs uvicorn as PID 1 of a new PID namespace, as in a container: after a
        graceful shutdown uvicorn re-raises SIGTERM, which a PID 1 ignores, so it exits 0.
        """
        server = RunningServer.start(
            models_dir,
            self._tmp / f"server-{len(self._servers)}.log",
            env={"DIGITS_GRACEFUL_SHUTDOWN_SECONDS": f"{graceful_seconds:g}", **(env or {})},
            pid_1=as_pid_1,
            ready_path=f"/health/{wait_for}",
        )
        self._servers.append(server)
        return server

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
