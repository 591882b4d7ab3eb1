"""Reading real scans (issue 8): framing, honest confidence and the marks that are not digits.

Real images come from small fixed samples of the real-scan sets (``$REALDIGITS_DATA_DIR``,
benchmarks/realdigits.py; every k-th item, so the sample spreads over the whole set) and are
skipped, saying why, when the sets are absent. Everything else is drawn here from MNIST test
digits or with numpy, so the properties hold whatever data is around.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from app.imaging import ink_map, normalize_image
from benchmarks.realdigits import MISSING, Item, load_items, set_dir
from tests.app.conftest import encode


def sample(name: str, count: int) -> list[Item]:
    """``count`` items of a set spread evenly over it (skips when the set is absent)."""
    folder = set_dir(name)
    if folder is None:
        pytest.skip(f"{MISSING} ({name} not found)")
    total = len(load_items(folder))
    return load_items(folder, every=max(1, total // count), limit=count)


def predict(client: TestClient, png: bytes) -> Any:
    return client.post("/predict", files={"file": ("d.png", png, "image/png")})


def tight_crop(digit: np.ndarray) -> np.ndarray:
    """An MNIST digit as dark ink on white paper, cropped to its ink: the ink touches the frame."""
    rows = np.flatnonzero(digit.max(axis=1) > 0)
    cols = np.flatnonzero(digit.max(axis=0) > 0)
    crop = digit[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    return (255 - crop).astype(np.uint8)


# --- §1: any framing -------------------------------------------------------------------------


def test_a_tight_crop_keeps_its_ink(mnist_test: tuple[np.ndarray, np.ndarray]) -> None:
    images, _ = mnist_test
    for digit in images[:200]:
        crop = tight_crop(digit)
        ink = ink_map(crop.astype(np.float32))
        # The ink is where the crop is dark: the dark pixels stay ink, most of them strong.
        dark = crop < 128
        assert (ink[dark] > 0).mean() > 0.95
        assert (ink[dark] > 0.5).mean() > 0.7


def test_a_tight_crop_reads_like_the_digit_with_its_margin(
    bundled_client: TestClient, mnist_test: tuple[np.ndarray, np.ndarray]
) -> None:
    images, labels = mnist_test
    right = 0
    for digit, label in zip(images[:100], labels[:100], strict=True):
        response = predict(bundled_client, encode(Image.fromarray(tight_crop(digit))))
        assert response.status_code == 200, response.json()
        right += response.json()["digit"] == int(label)
    # The model reads about 97% of these digits with their margin; cropping must cost little.
    assert right >= 90


def test_a_blank_tight_image_is_still_refused(bundled_client: TestClient) -> None:
    for level in (0, 128, 255):
        blank = Image.fromarray(np.full((16, 16), level, np.uint8))
        response = predict(bundled_client, encode(blank))
        assert response.status_code == 422
        assert response.json()["error"]["code"] == "no_digit_found"


def test_usps_digits_sent_as_stored_are_read(bundled_client: TestClient) -> None:
    items = sample("usps-train", 50)
    refused, right = 0, 0
    for item in items:
        response = predict(bundled_client, item.path.read_bytes())
        if response.status_code != 200:
            refused += 1
            continue
        right += str(response.json()["digit"]) == item.label
    assert refused == 0
    # Target 0.94 on the whole set; on 50 digits that is 47 ± 1.7, so 44 leaves two sd.
    assert right >= 44


def test_usps_normalization_keeps_the_frame_ink() -> None:
    for item in sample("usps-train", 20):
        with Image.open(Path(item.path)) as img:
            out = normalize_image(img)
        assert out.max() == 255
