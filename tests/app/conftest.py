"""Fixtures for the service tests: MNIST digits, image encoders and a tiny SavedModel.

The tiny model has the exact serving signature of the real one but fixed weights: it answers
the digit whose template (a few lit pixels) the image covers most, so tests can tell which
version answered and what it should say without any training.
"""

from __future__ import annotations

import gzip
import io
import os
import struct
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
BUNDLED_MODELS = REPO / "models" / "mnist"


# --- MNIST ---------------------------------------------------------------------------------


def _mnist_dir() -> Path | None:
    candidates = [os.environ.get("MNIST_DATA_DIR"), str(REPO.parent / "shared" / "data" / "mnist")]
    for candidate in candidates:
        if candidate and (Path(candidate) / "t10k-images-idx3-ubyte.gz").is_file():
            return Path(candidate)
    return None


def _read_idx(path: Path) -> np.ndarray:
    raw = gzip.decompress(path.read_bytes())
    ndim = raw[3]
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(dims)


@pytest.fixture(scope="session")
def mnist_test() -> tuple[np.ndarray, np.ndarray]:
    """The 10,000 MNIST test images (uint8 [N, 28, 28]) and labels."""
    directory = _mnist_dir()
    if directory is None:
        pytest.skip("MNIST not found: set MNIST_DATA_DIR to the directory of the IDX .gz files")
    images = _read_idx(directory / "t10k-images-idx3-ubyte.gz")
    labels = _read_idx(directory / "t10k-labels-idx1-ubyte.gz")
    assert images.shape == (10_000, 28, 28)
    return images, labels


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
