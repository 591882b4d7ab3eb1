"""The reading pipeline without HTTP: an image and a model callable in, a judged string out."""

from __future__ import annotations

import contextlib
import tracemalloc
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from app.core.errors import DomainError
from app.reading.calibration import ReaderCalibration, load_calibration
from app.reading.pipeline import (
    ReadingLimits,
    judge_digit,
    judge_digits,
    looks_like_several_digits,
    prepare_string,
    read_string,
    recognize_image,
)
from app.reading.review import ReasonCode
from harness.attacks import thin_strip_png
from tests.app.conftest import encode
from tests.app.reading.test_segmentation import as_photo, draw_string, one, seven, zero

LIMITS = ReadingLimits(max_pixels=4_000_000, max_jpeg_scans=100, max_digits=12)


def reads(digit: int, confidence: float):  # type: ignore[no-untyped-def]
    """A model that reads every candidate as ``digit`` with ``confidence``."""

    def predict(batch: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
        rest = (1.0 - confidence) / 9
        out = np.full((len(batch), 10), rest, np.float32)
        out[:, digit] = confidence
        return out

    return predict


def test_a_string_is_read_and_judged_without_a_server() -> None:
    ink, boxes = draw_string([seven, zero, one])
    data = encode(as_photo(ink))
    calibration = ReaderCalibration()
    sure = recognize_image(data, reads(4, 0.999), calibration, LIMITS, expected_length=3)
    assert sure.digits == "444"
    assert not sure.needs_review, sure.reasons
    assert len(sure.segments) == len(boxes) == 3
    unsure = recognize_image(data, reads(4, 0.9), calibration, LIMITS, expected_length=4)
    assert unsure.needs_review
    codes = [(r.code, r.position) for r in unsure.reasons]
    assert (ReasonCode.LENGTH_MISMATCH, None) in codes
    assert [p for c, p in codes if c is ReasonCode.LOW_CONFIDENCE] == [1, 2, 3]


def test_the_request_threshold_wins_over_the_operator_and_the_version() -> None:
    ink, _ = draw_string([seven, zero, one])
    prepared = prepare_string(encode(as_photo(ink)), LIMITS)
    probabilities = reads(4, 0.95)(prepared.batch)
    calibration = ReaderCalibration(review_threshold=0.99)

    def threshold(**given: float) -> float:
        return read_string(prepared, probabilities, calibration, max_digits=12, **given).threshold

    assert threshold() == 0.99
    assert threshold(operator_threshold=0.9) == 0.9
    assert threshold(operator_threshold=0.9, threshold=0.5) == 0.5


def test_the_limits_are_kept() -> None:
    ink, _ = draw_string([seven, zero, one, one])
    few = ReadingLimits(4_000_000, 100, max_digits=2)
    with pytest.raises(DomainError) as refused:
        recognize_image(encode(as_photo(ink)), reads(4, 0.999), ReaderCalibration(), few)
    assert refused.value.code == "too_many_digits"
    with pytest.raises(DomainError) as too_big:
        prepare_string(encode(as_photo(ink)), ReadingLimits(100, 100, max_digits=12))
    assert too_big.value.code == "image_too_large"


@pytest.mark.parametrize(
    ("width", "height", "bar"), [(4096, 20, False), (20_000, 50, False), (20_000, 50, True)]
)
def test_a_thin_strip_costs_memory_of_its_working_size(width: int, height: int, bar: bool) -> None:
    # Such strips made the paper margin a quarter of their length on every side: 150-300 MiB of
    # float arrays for a 198-byte PNG.
    data = thin_strip_png(width, height, bar=bar)
    tracemalloc.start()
    try:
        # Refusing it is as good as reading it, as long as it is cheap.
        with contextlib.suppress(DomainError):
            recognize_image(data, reads(1, 0.999), ReaderCalibration(), LIMITS)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 48 * 2**20, f"{peak / 2**20:.0f} MiB"


def several_by_column_mass(image: npt.NDArray[np.uint8]) -> bool:
    """looks_like_several_digits as first written: every step on the column masses."""
    ink = image >= 64
    mass = np.where(ink, image, 0).sum(axis=0, dtype=np.int64)
    columns = np.flatnonzero(mass)
    if columns.size == 0:
        return False
    rows = np.flatnonzero(ink.any(axis=1))
    if int(columns[-1] - columns[0]) + 1 >= 2.0 * (int(rows[-1] - rows[0]) + 1):
        return True
    breaks = np.flatnonzero(np.diff(columns) > 1)
    if breaks.size == 0:
        return False
    total = float(mass.sum())
    runs = np.split(columns, breaks + 1)
    return sum(float(mass[run].sum()) >= 0.15 * total for run in runs) >= 2


def single_digit_images(mnist: npt.NDArray[np.uint8]) -> list[npt.NDArray[np.uint8]]:
    """Digits, pairs of digits side by side, a digit with a speck apart, dust, bars and
    blanks."""
    rng = np.random.default_rng(0)
    images = list(mnist[:400])
    for a, b in zip(mnist[400:600], mnist[600:800], strict=True):
        pair = np.concatenate([a, b], axis=1)[::2, ::2]  # 14×28: two digits, half size
        images.append(np.pad(pair, ((7, 7), (0, 0))))
        speck = a.copy()
        speck[rng.integers(0, 28), rng.integers(0, 3)] = 255
        images.append(speck)
        dust = np.zeros((28, 28), np.uint8)
        dust[rng.integers(0, 28, 5), rng.integers(0, 28, 5)] = rng.integers(0, 256, 5)
        images.append(dust)
    for height in range(1, 15):  # bars about twice as wide as tall: the aspect's boundary
        for width in (2 * height - 1, 2 * height, 2 * height + 1):
            bar = np.zeros((28, 28), np.uint8)
            bar[3 : 3 + height, 1 : 1 + min(width, 27)] = 200
            images.append(bar)
    images += [np.zeros((28, 28), np.uint8), np.full((28, 28), 255, np.uint8)]
    return images


def test_the_several_digits_test_keeps_its_definition(
    mnist_test: tuple[np.ndarray, np.ndarray],
) -> None:
    images = single_digit_images(mnist_test[0])
    expected = [several_by_column_mass(image) for image in images]
    assert [looks_like_several_digits(image) for image in images] == expected
    assert [looks_like_several_digits(image.astype(np.float32)) for image in images] == expected
    assert 150 < sum(expected) < len(images) - 400  # pairs are found, digits are not


def test_one_digit_is_judged_as_in_a_batch(
    mnist_test: tuple[np.ndarray, np.ndarray], bundled_model_dir: Path
) -> None:
    """judge_digit (/predict, every answer) gives judge_digits' reasons, in the same order."""
    calibration = load_calibration(bundled_model_dir)
    assert calibration.likeness is not None
    images = np.stack(single_digit_images(mnist_test[0]))
    rng = np.random.default_rng(1)
    probabilities = rng.dirichlet(np.full(10, 0.2), len(images)).astype(np.float32)
    seen: set[ReasonCode] = set()
    for given in ({}, {"threshold": 0.5}, {"operator_threshold": 0.9}):
        batch = judge_digits(images, probabilities, calibration, **given)
        for image, scores, expected in zip(images, probabilities, batch, strict=True):
            assert judge_digit(image, scores, calibration, **given) == expected
            seen.update(reason.code for reason in expected)
    assert seen == {
        ReasonCode.SEVERAL_DIGITS,
        ReasonCode.NOT_DIGIT_LIKE,
        ReasonCode.LOW_CONFIDENCE,
    }
    assert (
        judge_digit(images[0], probabilities[0], ReaderCalibration())
        == judge_digits(images[:1], probabilities[:1], ReaderCalibration())[0]
    )
