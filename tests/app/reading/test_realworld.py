"""Reading real scans (issue 8): framing, honest confidence and the marks that are not digits.

Real images come from small fixed samples of the real-scan sets (``$REALDIGITS_DATA_DIR``,
harness/realdigits.py; every k-th item, so the sample spreads over the whole set) and are
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

from app.reading.normalize import ink_map, normalize_image
from harness.realdigits import MISSING, Item, is_held_out, load_items, set_dir
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


# --- §2/§3: strings on real scans --------------------------------------------------------------


def recognize(client: TestClient, png: bytes) -> Any:
    return client.post("/recognize", files={"file": ("s.png", png, "image/png")})


def overlap(a: dict[str, int], b: dict[str, int]) -> float:
    """Share of box ``a`` covered by box ``b``."""
    width = min(a["x"] + a["width"], b["x"] + b["width"]) - max(a["x"], b["x"])
    height = min(a["y"] + a["height"], b["y"] + b["height"]) - max(a["y"], b["y"])
    return max(0, width) * max(0, height) / (a["width"] * a["height"])


def test_danish_margins_and_rules_are_never_read(bundled_client: TestClient) -> None:
    answered, with_margin = 0, 0
    for item in sample("danish-rowid-dev", 20):
        response = recognize(bundled_client, item.path.read_bytes())
        assert response.status_code in (200, 422), response.json()
        if response.status_code != 200:
            assert response.json()["error"]["code"] in ("no_digits_found", "too_many_digits")
            continue
        answered += 1
        body = response.json()
        lines = [m["box"] for m in body["ignored"] if m["kind"] in ("margin", "ruled_line")]
        with_margin += any(m["kind"] == "margin" for m in body["ignored"])
        for segment in body["segments"]:
            # No digit read is mostly made of an ignored margin or rule.
            assert all(overlap(segment["box"], line) < 0.5 for line in lines), body
    # The set's README: "often a black scan margin along one side"; nearly all are read.
    assert answered >= 17
    assert with_margin >= 5


def test_danish_unflagged_answers_are_mostly_right(bundled_client: TestClient) -> None:
    unflagged, wrong = 0, 0
    for item in sample("danish-rowid-dev", 20):
        response = recognize(bundled_client, item.path.read_bytes())
        if response.status_code == 200 and not response.json()["needs_review"]:
            unflagged += 1
            wrong += response.json()["digits"] != item.label
    # Before issue 8 about half of these were unflagged and nearly all of those wrong.
    assert unflagged <= 6
    assert wrong <= 2


def test_orand_amounts_are_read_without_their_punctuation(bundled_client: TestClient) -> None:
    right, with_punctuation, unflagged_wrong = 0, 0, 0
    for item in sample("orand-car-a-dev", 20):
        response = recognize(bundled_client, item.path.read_bytes())
        assert response.status_code in (200, 422), response.json()
        if response.status_code != 200:
            continue
        body = response.json()
        with_punctuation += any(m["kind"] == "punctuation" for m in body["ignored"])
        right += body["digits"] == item.label
        unflagged_wrong += not body["needs_review"] and body["digits"] != item.label
    # Most amounts end in a dash, a full stop or "=" (the set's README): they are listed.
    assert with_punctuation >= 8
    assert unflagged_wrong <= 1
    # Target 0.20 on the whole set: 4 of 20 expected; 2 leaves room for the sample's spread.
    assert right >= 2


def test_the_held_out_part_is_a_fixed_fifth_by_file_name() -> None:
    names = [f"item-{i:05d}.png" for i in range(10_000)]
    held = [n for n in names if is_held_out(n)]
    assert 0.18 < len(held) / len(names) < 0.22
    # Fixed: the same names are held out on every call, whatever the order.
    assert held == [n for n in reversed(names) if is_held_out(n)][::-1]
    item = Item(Path("/anywhere") / held[0], "7")
    assert item.held_out
