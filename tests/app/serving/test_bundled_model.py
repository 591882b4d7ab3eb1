"""The committed model behind the HTTP API: MNIST accuracy reproduced exactly, real images read.

These tests use ``models/mnist/<newest>`` and the real MNIST test set.
"""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image, ImageDraw

from tests.app.conftest import encode, pen_on_paper

MNIST = tuple[np.ndarray, np.ndarray]


@pytest.fixture(scope="module")
def offline(bundled_model_dir: Path, mnist_test: MNIST) -> tuple[np.ndarray, np.ndarray]:
    """The SavedModel's own answers on the raw test array: (digits, probabilities)."""
    import tensorflow as tf

    signature = tf.saved_model.load(str(bundled_model_dir)).signatures["serving_default"]
    images, _ = mnist_test
    result = signature(images=tf.constant(images))
    return np.asarray(result["digit"]), np.asarray(result["probabilities"])


def post_png(client: TestClient, data: bytes, name: str = "d.png") -> dict[str, object]:
    response = client.post("/predict", files={"file": (name, data, "application/octet-stream")})
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def test_http_answers_reproduce_offline_accuracy_exactly(
    bundled_client: TestClient,
    bundled_model_dir: Path,
    mnist_test: MNIST,
    offline: tuple[np.ndarray, np.ndarray],
) -> None:
    """All 10,000 test images as PNG over HTTP: the same digit for every one as offline."""
    images, labels = mnist_test
    offline_digits, offline_probabilities = offline
    pngs = [encode(Image.fromarray(image)) for image in images]

    async def post_all() -> list[dict[str, Any]]:
        # Through the ASGI interface in one event loop, 16 at a time: the same requests a
        # server would get, without a thread hop per request (and micro-batching at work).
        transport = httpx.ASGITransport(app=bundled_client.app)
        gate = asyncio.Semaphore(16)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:

            async def one(data: bytes) -> dict[str, Any]:
                async with gate:
                    response = await client.post(
                        "/predict", files={"file": ("digit.png", data, "image/png")}
                    )
                assert response.status_code == 200, response.text
                return response.json()  # type: ignore[no-any-return]

            return await asyncio.gather(*(one(data) for data in pngs))

    answers = asyncio.run(post_all())
    assert all(a["normalized"] is False for a in answers)
    # The policy serves the newest committed version (the promotion gate let it through), so
    # the answers are compared with that version's own evaluation.
    assert {a["model_version"] for a in answers} == {int(bundled_model_dir.name)}
    served = np.array([a["digit"] for a in answers])
    # Requests are batched differently from the offline call, so float sums run in another
    # order (differences ~1e-6). Only a near-tie could flip an answer; none is allowed to
    # hide here: every image whose top two classes are further apart than that must match.
    top2 = np.sort(offline_probabilities, axis=1)[:, -2:]
    decided = top2[:, 1] - top2[:, 0] > 1e-4
    assert decided.mean() > 0.99
    np.testing.assert_array_equal(served[decided], offline_digits[decided])
    # Batched with other requests, float32 sums run in another order: the last digits move.
    np.testing.assert_allclose(
        [a["probabilities"] for a in answers], offline_probabilities, rtol=0, atol=1e-5
    )
    http_accuracy = float((served == labels).mean())
    offline_accuracy = float((offline_digits == labels).mean())
    assert http_accuracy == offline_accuracy
    reported = json.loads((bundled_model_dir / "metrics.json").read_text())["test"]["accuracy"]
    assert http_accuracy == pytest.approx(reported, abs=1e-9)


def test_batch_answers_equal_offline(
    bundled_client: TestClient, mnist_test: MNIST, offline: tuple[np.ndarray, np.ndarray]
) -> None:
    images, _ = mnist_test
    files = [
        ("files", (f"{i}.png", encode(Image.fromarray(images[i])), "image/png")) for i in range(256)
    ]
    response = bundled_client.post("/predict/batch", files=files)
    assert response.status_code == 200
    digits = [r["prediction"]["digit"] for r in response.json()["results"]]
    np.testing.assert_array_equal(digits, offline[0][:256])


def confident(offline: tuple[np.ndarray, np.ndarray], labels: np.ndarray, count: int) -> list[int]:
    """Test digits the model reads right with probability > 0.9: unambiguous references."""
    digits, probabilities = offline
    good = np.flatnonzero((digits == labels) & (probabilities.max(axis=1) > 0.9))
    return [int(i) for i in good[:count]]


def variants(digit: np.ndarray) -> dict[str, bytes]:
    """The same MNIST digit in the encodings and modes people upload."""
    gray = Image.fromarray(digit)
    rgba = Image.merge("RGBA", [Image.new("L", gray.size, 255)] * 3 + [gray])  # ink as alpha
    exif = Image.Exif()
    exif[0x0112] = 8  # stored turned clockwise; the viewer must turn it back
    rotated = gray.transpose(Image.Transpose.ROTATE_270)
    return {
        "png": encode(gray),
        "jpeg": encode(gray, "JPEG", quality=95),
        "rgb": encode(gray.convert("RGB")),
        "rgba-transparent": encode(rgba),
        "palette": encode(gray.convert("P", palette=Image.Palette.ADAPTIVE, colors=64)),
        "16-bit": encode(Image.fromarray(digit.astype(np.uint16) * 257)),
        "exif-rotated": encode(rotated, "JPEG", quality=95, exif=exif),
        "inverted-bmp": encode(Image.fromarray(255 - digit), "BMP"),
        "webp": encode(gray.convert("RGB"), "WEBP", lossless=True),
    }


def test_same_digit_in_every_format_gets_the_same_answer(
    bundled_client: TestClient, mnist_test: MNIST, offline: tuple[np.ndarray, np.ndarray]
) -> None:
    images, labels = mnist_test
    chosen = confident(offline, labels, 30)
    assert len(chosen) == 30
    for i in chosen:
        for name, data in variants(images[i]).items():
            opened = Image.open(io.BytesIO(data))
            assert opened.size in ((28, 28),), name
            answer = post_png(bundled_client, data, name=f"{i}-{name}")
            assert answer["digit"] == labels[i], f"test image {i} as {name}"


def test_pen_on_paper_photos_read_as_well_as_mnist(
    bundled_client: TestClient, mnist_test: MNIST, offline: tuple[np.ndarray, np.ndarray]
) -> None:
    images, labels = mnist_test
    # Not hand-picked: the first 200 test digits, whatever the model makes of them.
    sample = range(200)
    mnist_right = sum(int(offline[0][i] == labels[i]) for i in sample)
    photo_right = 0
    for i in sample:
        photo = encode(pen_on_paper(images[i], seed=i), "JPEG", quality=85)
        answer = post_png(bundled_client, photo, name="photo.jpg")
        assert answer["normalized"] is True
        photo_right += int(answer["digit"] == labels[i])
    # Read as well as the MNIST originals themselves, give or take 3 digits in 200.
    assert photo_right >= mnist_right - 6, (photo_right, mnist_right)


def drawn_with_a_fine_pen(digit: int) -> Image.Image:
    """A digit drawn with 7-px strokes on a 600×800 light page, off-centre: thin next to
    MNIST's strokes once scaled down, which the normalization must make up for."""
    page = Image.new("L", (600, 800), 235)
    pen = ImageDraw.Draw(page)
    ink, width = 30, 7
    if digit == 0:
        pen.ellipse([(220, 180), (420, 560)], outline=ink, width=width)
    elif digit == 1:
        pen.line([(330, 150), (330, 600)], fill=ink, width=width)
    elif digit == 3:
        pen.line([(220, 220), (420, 220), (300, 380)], fill=ink, width=width)
        pen.arc([(220, 330), (430, 600)], -90, 150, fill=ink, width=width)
    elif digit == 4:
        pen.line([(380, 150), (200, 450), (440, 450)], fill=ink, width=width)
        pen.line([(380, 150), (380, 620)], fill=ink, width=width)
    elif digit == 7:
        pen.line([(200, 200), (420, 200), (280, 620)], fill=ink, width=width, joint="curve")
    return page


@pytest.mark.parametrize("digit", [0, 1, 3, 4, 7])
def test_digits_drawn_with_a_fine_pen_are_read(bundled_client: TestClient, digit: int) -> None:
    photo = encode(drawn_with_a_fine_pen(digit), "JPEG", quality=85)
    answer = post_png(bundled_client, photo, name="drawn.jpg")
    assert answer["digit"] == digit
