"""Fixtures for the service tests: MNIST digits, image encoders and a tiny SavedModel.

The tiny model has the exact serving signature of the real one but fixed weights: it answers
the digit whose template (a few lit pixels) the image covers most, so tests can tell which
version answered and what it should say without any training.
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import struct
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from app.main import create_app
from app.reviews.db import default_url
from app.settings import Settings
from harness import postgres
from harness.mnist import MISSING, mnist_dir, read_test_set
from tests.conftest import postgres_server

REPO = Path(__file__).resolve().parents[2]
# The committed model; TEST_BUNDLED_MODELS points these tests at another models directory.
BUNDLED_MODELS = Path(os.environ.get("TEST_BUNDLED_MODELS", REPO / "models" / "mnist"))


# --- MNIST ---------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def mnist_test() -> tuple[np.ndarray, np.ndarray]:
    """The 10,000 MNIST test images (uint8 [N, 28, 28]) and labels."""
    directory = mnist_dir()
    if directory is None:
        pytest.skip(MISSING)
    images, labels = read_test_set(directory)
    assert images.shape == (10_000, 28, 28)
    return images, labels


# --- the review queue's databases ---------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database of each kind (a test taking it runs once on each)."""
    if request.param == "sqlite":
        yield default_url(tmp_path / "data")
        return
    with postgres.fresh_database(postgres_server()) as url:
        yield url


# --- image builders ------------------------------------------------------------------------


def encode(img: Image.Image, fmt: str = "PNG", **options: object) -> bytes:
    """Encode a Pillow image to bytes in the given format."""
    buf = io.BytesIO()
    img.save(buf, fmt, **options)
    return buf.getvalue()


def _chunk(kind: bytes, payload: bytes) -> bytes:
    body = kind + payload
    return struct.pack(">I", len(payload)) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)


def png_header(width: int, height: int) -> bytes:
    """A well-formed PNG that declares the given size but carries only a few bytes of pixels.

    What a decompression-bomb probe looks like: the header is valid and cheap to read; decoding
    the pixels would need width × height bytes.
    """
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", ihdr)
        + _chunk(b"IDAT", zlib.compress(bytes(64)))
        + _chunk(b"IEND", b"")
    )


def pen_on_paper(digit: np.ndarray, seed: int = 0) -> Image.Image:
    """An MNIST digit as a phone photo of pen on paper would show it.

    Dark ink on light, textured paper, 600×800, the digit 400 px tall and off-centre, lit
    unevenly from one side, saved the way a phone would (JPEG).
    """
    rng = np.random.default_rng(seed)
    big = np.asarray(
        Image.fromarray(digit).resize((400, 400), Image.Resampling.BICUBIC), np.float32
    )
    height, width = 800, 600
    ink = np.zeros((height, width), np.float32)
    top, left = int(rng.integers(20, 380)), int(rng.integers(20, 180))
    ink[top : top + 400, left : left + 400] = big / 255.0
    yy, xx = np.mgrid[0:height, 0:width]
    light = 0.65 + 0.35 * (xx / width) * (1.0 - 0.3 * yy / height)
    paper = (225.0 - 180.0 * ink) * light + rng.normal(0.0, 6.0, (height, width))
    return Image.fromarray(np.clip(paper, 0, 255).astype(np.uint8))


@pytest.fixture
def mnist_png(mnist_test: tuple[np.ndarray, np.ndarray]) -> Callable[[int], bytes]:
    """PNG bytes of MNIST test image ``i`` exactly as the dataset has it (mode L, 28×28)."""
    images, _ = mnist_test
    return lambda i: encode(Image.fromarray(images[i]))


@pytest.fixture
def chdir_tmp(tmp_path: Path) -> Iterator[Path]:
    """Run a test from an empty directory (so relative default paths point nowhere)."""
    old = Path.cwd()
    os.chdir(tmp_path)
    try:
        yield tmp_path
    finally:
        os.chdir(old)


# --- tiny SavedModels ----------------------------------------------------------------------


def build_model(path: Path, weights: np.ndarray, bias: np.ndarray) -> None:
    """Save a 784→10 softmax model with the service's exact signature at ``path``."""
    import tensorflow as tf

    class Tiny(tf.Module):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.w = tf.Variable(weights.astype(np.float32))
            self.b = tf.Variable(bias.astype(np.float32))

        @tf.function(input_signature=[tf.TensorSpec([None, 28, 28], tf.uint8, name="images")])
        def serve(self, images: Any) -> dict[str, Any]:
            x = tf.reshape(tf.cast(images, tf.float32) / 255.0, [-1, 784])
            probabilities = tf.nn.softmax(tf.matmul(x, self.w) + self.b)
            return {"probabilities": probabilities, "digit": tf.argmax(probabilities, axis=1)}

    module = Tiny()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})


def constant_weights(digit: int) -> tuple[np.ndarray, np.ndarray]:
    """Weights of a model that answers ``digit`` for every image (probability ~0.94)."""
    bias = np.zeros(10, np.float32)
    bias[digit] = 5.0
    return np.zeros((784, 10), np.float32), bias


def metrics_for(version: int, accuracy: float) -> dict[str, Any]:
    """A metrics.json in the contract's shape."""
    return {
        "version": version,
        "recipe": "fixture",
        "created_at": "2025-01-01T00:00:00Z",
        "test": {
            "accuracy": accuracy,
            "loss": 1.5,
            "per_class": [
                {"digit": d, "precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 1000}
                for d in range(10)
            ],
            "confusion_matrix": [[100 if i == j else 0 for j in range(10)] for i in range(10)],
        },
        "train": {"accuracy": accuracy},
        "hyperparameters": {},
        "timing": {},
        "dataset": {},
        "versions": {},
    }


@pytest.fixture(scope="session")
def constant_models(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    """SavedModels answering always 1, 2 or 3 (built once per session; copy, don't modify)."""
    root = tmp_path_factory.mktemp("constant-models")
    built = {}
    for digit in (1, 2, 3):
        build_model(root / str(digit), *constant_weights(digit))
        built[digit] = root / str(digit)
    return built


class ModelsDir:
    """A models directory for one test, with helpers to add versions."""

    def __init__(self, path: Path, constant_models: dict[int, Path]) -> None:
        self.path = path
        self._constant = constant_models

    def add(
        self,
        version: int,
        digit: int,
        accuracy: float = 0.5,
        real_digits: dict[str, Any] | None = None,
    ) -> Path:
        """Install a version that answers ``digit`` for everything, atomically (via rename);
        ``real_digits`` goes into its metrics.json as training writes it."""
        staging = self.path / f".tmp-{version}"
        shutil.copytree(self._constant[digit], staging)
        metrics = metrics_for(version, accuracy)
        if real_digits is not None:
            metrics["real_digits"] = real_digits
        (staging / "metrics.json").write_text(json.dumps(metrics))
        target = self.path / str(version)
        staging.rename(target)
        return target

    def add_corrupt(self, version: int) -> Path:
        """Install a version whose saved_model.pb is garbage."""
        target = self.path / str(version)
        (target / "variables").mkdir(parents=True)
        (target / "saved_model.pb").write_bytes(b"this is not a protocol buffer" * 10)
        return target


@pytest.fixture
def models(tmp_path: Path, constant_models: dict[int, Path]) -> ModelsDir:
    """An empty models directory for this test."""
    path = tmp_path / "models"
    path.mkdir()
    return ModelsDir(path, constant_models)


#: The environment form of make_settings' floors, for tests that start the service in a process
#: of its own with the fixture models (which answer one digit for everything).
FIXTURE_MODEL_ENV: dict[str, str] = {
    "DIGITS_PROBE_MIN_ACCURACY": "0",
    "DIGITS_PROMOTION_MIN_ACCURACY": "0",
}


def make_settings(models_dir: Path, **overrides: Any) -> Settings:
    """Settings for a test app: this models directory, no polling unless asked.

    The fixture models answer one digit for everything and report an accuracy of 0.5: the
    probe's accuracy floor and the promotion gate's floor are off unless a test asks for them
    (the probe's other checks and the gate's tolerance still apply). No unflagged reading is
    sampled as an audit unless a test asks (``review_audit_share``): a random sample would make
    an answer's ``queue`` differ from run to run.
    """
    values: dict[str, Any] = {
        "models_dir": models_dir,
        "model_poll_seconds": 0.0,
        "probe_min_accuracy": 0.0,
        "promotion_min_accuracy": 0.0,
        "review_audit_share": 0.0,
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
def client(models: ModelsDir) -> Iterator[TestClient]:
    """A running app (lifespan done) serving version 1 of a model that always answers 1."""
    models.add(1, digit=1)
    with TestClient(create_app(make_settings(models.path))) as test_client:
        yield test_client


@pytest.fixture(scope="session")
def bundled_model_dir() -> Path:
    """The committed model's newest version directory (skips only if none is committed)."""
    versions = (
        sorted((int(p.name) for p in BUNDLED_MODELS.iterdir() if p.name.isdigit()), reverse=True)
        if BUNDLED_MODELS.is_dir()
        else []
    )
    if not versions:
        pytest.skip(f"no bundled model under {BUNDLED_MODELS} yet (training writes models/mnist/1)")
    return BUNDLED_MODELS / str(versions[0])


@pytest.fixture(scope="module")
def bundled_client(bundled_model_dir: Path) -> Iterator[TestClient]:
    """A running app serving the committed model (shared by a test module)."""
    # Quiet access log: these tests send thousands of requests.
    settings = make_settings(bundled_model_dir.parent, log_level="WARNING")
    with TestClient(create_app(settings)) as test_client:
        yield test_client


@pytest.fixture
def app_logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """``caplog`` that sees the service's own log lines: the service's ``app`` logger does not
    propagate to the root logger once the app configured logging, so the capture handler is
    attached to it directly (whatever test ran before)."""
    logger = logging.getLogger("app")
    logger.addHandler(caplog.handler)
    try:
        yield caplog
    finally:
        logger.removeHandler(caplog.handler)
