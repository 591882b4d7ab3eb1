"""The reading pipeline without HTTP: an image and a model callable in, a judged string out."""

from __future__ import annotations

import contextlib
import tracemalloc

import numpy as np
import numpy.typing as npt
import pytest

from app.core.errors import DomainError
from app.reading.calibration import ReaderCalibration
from app.reading.pipeline import ReadingLimits, prepare_string, read_string, recognize_image
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
