"""Read a whole handwritten digit string: prepare the image, read it, judge it; judge one digit.

What ``POST /recognize`` does, as functions a benchmark, a command line or a test can call
without HTTP. Two steps, because the model call between them belongs to the caller (the service
batches it with other requests; a script may call a model in-process):

1. :func:`prepare_string`: decode the image within its limits, find the candidate digits
   (:mod:`app.reading.lattice`), normalize each exactly as a single digit is normalized.
   CPU work: the service runs it in a thread.
2. :func:`read_string`: from the model's probabilities for every candidate, choose the reading
   (:mod:`app.reading.reader`) and judge it (:mod:`app.reading.review`, with the digit-likeness
   of :mod:`app.reading.likeness`), with the served version's calibration.

:func:`recognize_image` runs both around a ``predict`` callable. :func:`judge_digit` gives the
review reasons of one digit read alone (``/predict``). Everything raises
:class:`app.core.errors.DomainError` with a code, never an HTTP status.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Final

import numpy as np
import numpy.typing as npt
from PIL import Image

from app.core.errors import DomainError
from app.core.tracing import child_span
from app.reading.calibration import ReaderCalibration
from app.reading.components import Box
from app.reading.decode import load_image, open_image, run_in_large_image_slot
from app.reading.lattice import MAX_WORK_PIXELS, Lattice, find_candidates, normalize_candidates
from app.reading.likeness import not_like_digit, not_like_digits
from app.reading.marks import Mark, is_hairline
from app.reading.reader import choose_reading
from app.reading.review import (
    ReasonCode,
    ReviewReason,
    distinct_figures,
    geometry_reasons,
    page_has_marks,
    review_reasons,
    review_threshold,
)

__all__ = [
    "SEGMENT_ALONE_PIXELS",
    "DigitReading",
    "PreparedString",
    "ReadingLimits",
    "StringReading",
    "judge_digit",
    "judge_digits",
    "looks_like_several_digits",
    "open_string",
    "open_strings",
    "prepare_opened_string",
    "prepare_string",
    "read_string",
    "read_strings",
    "recognize_image",
]

#: Segmentation turns up to MAX_WORK_PIXELS into several float arrays at once: from this many
#: pixels up it runs within the large-image limit, like the decode of a large photo.
SEGMENT_ALONE_PIXELS: Final = 250_000

#: An image read as one digit whose ink is this many times wider than tall is a string: a
#: normalized digit is fitted to 20×20 by its longer side, and digits are taller than wide.
_SEVERAL_ASPECT: Final = 2.0
#: ... or whose ink falls into column runs, apart, of which at least two hold this share of it.
_SEVERAL_SHARE: Final = 0.15
#: Pixels at least this bright (of 255) are ink, for the two tests above.
_INK_LEVEL: Final = 64

#: The model: a batch of 28×28 uint8 digits (MNIST polarity) → one row of ten probabilities each.
Predict = Callable[[npt.NDArray[np.uint8]], npt.NDArray[np.floating]]


@dataclasses.dataclass(frozen=True)
class ReadingLimits:
    """What one image may cost: checked before the work is done."""

    max_pixels: int
    """Pixels an image may declare (the smaller of the per-image and per-request limits)."""
    max_jpeg_scans: int
    """Progressive JPEG scans an image may declare."""
    max_digits: int
    """Digits a string may have; more is refused (``too_many_digits``)."""


@dataclasses.dataclass(frozen=True)
class PreparedString:
    """An image cut into candidate digits, each normalized for the model."""

    lattice: Lattice
    batch: npt.NDArray[np.uint8]
    """One 28×28 digit per candidate of the lattice, in its order."""
    size: tuple[int, int]
    """The image's width and height (after EXIF rotation): the boxes' coordinates."""


@dataclasses.dataclass(frozen=True)
class DigitReading:
    """One digit of the string as read."""

    digit: int
    confidence: float
    probabilities: npt.NDArray[np.floating]
    box: Box


@dataclasses.dataclass(frozen=True)
class StringReading:
    """A digit string as read and judged."""

    digits: str
    confidence: float
    """The product of the digits' confidences."""
    segments: tuple[DigitReading, ...]
    reasons: tuple[ReviewReason, ...]
    """Why a person should check it (empty: it can be trusted)."""
    threshold: float
    """The review threshold the digits were held to."""
    size: tuple[int, int]
    ignored: tuple[Mark, ...]
    """What was found and not read: margins, ruled lines, specks, strays, punctuation."""

    @property
    def needs_review(self) -> bool:
        """Whether a person should check the reading."""
        return bool(self.reasons)


def prepare_string(data: bytes, limits: ReadingLimits) -> PreparedString:
    """Decode, segment and normalize one image (CPU work: run it in a thread).

    A large image runs within the large-image limit, so the float arrays of segmentation are
    bounded by the same concurrency limit as the decode of a large photo.
    """
    return prepare_opened_string(open_string(data, limits), limits)


def open_string(data: bytes, limits: ReadingLimits) -> Image.Image:
    """Check an image's header against the limits, decoding no pixel (``width * height`` is
    then what it declares, for a request's pixel budget)."""
    return open_image(data, max_pixels=limits.max_pixels, max_jpeg_scans=limits.max_jpeg_scans)


def open_strings(items: Sequence[bytes], limits: ReadingLimits) -> list[Image.Image | DomainError]:
    """:func:`open_string` for each image of a batch; an image refused is its error."""
    opened: list[Image.Image | DomainError] = []
    for data in items:
        try:
            opened.append(open_string(data, limits))
        except DomainError as exc:
            opened.append(exc)
    return opened


def prepare_opened_string(img: Image.Image, limits: ReadingLimits) -> PreparedString:
    """:func:`prepare_string` for an image :func:`open_string` opened."""

    def segment() -> PreparedString:
        with child_span("decode"):
            loaded, size = load_image(
                img, max_pixels=limits.max_pixels, work_pixels=MAX_WORK_PIXELS
            )
        with child_span("segmentation"):
            lattice = find_candidates(loaded, max_digits=limits.max_digits, size=size)
        with child_span("normalize", {"digits.candidates": len(lattice.candidates)}):
            batch = normalize_candidates(lattice)
        return PreparedString(lattice, batch, size)

    if img.width * img.height < SEGMENT_ALONE_PIXELS:
        return segment()
    return run_in_large_image_slot(segment)


def read_string(
    prepared: PreparedString,
    probabilities: npt.NDArray[np.floating],
    calibration: ReaderCalibration,
    *,
    max_digits: int,
    threshold: float | None = None,
    operator_threshold: float | None = None,
    expected_length: int | None = None,
) -> StringReading:
    """Choose the reading of a prepared string from the model's answers and judge it.

    ``probabilities`` holds one row per candidate. ``threshold`` is the request's review
    threshold, ``operator_threshold`` the service's setting; without either, the version's
    calibrated one applies, raised to its ``marked_threshold`` on a page where margins or ruled
    lines were removed. Probabilities that are not probabilities are refused
    (``model_output_invalid``) before anything relies on them.
    """
    lattice = prepared.lattice
    reading = choose_reading(
        lattice,
        probabilities,
        max_digits=max_digits,
        weights=calibration.reading_weights,
        count_margin=calibration.count_margin,
        reading_margin=calibration.reading_margin,
    )
    chosen = list(reading.candidates)
    segments = []
    for index in chosen:
        probs = probabilities[index]
        digit = int(np.argmax(probs))
        box = lattice.candidates[index].box
        segments.append(DigitReading(digit, float(probs[digit]), probs, box))
    confidences = [s.confidence for s in segments]
    unlike = _hairlines_on_a_form(
        lattice, chosen, _not_digit_like(calibration, prepared.batch, probabilities, chosen)
    )
    limit = review_threshold(threshold, operator_threshold, calibration.review_threshold)
    marked = calibration.review.marked_threshold
    if threshold is None and marked is not None and page_has_marks(lattice):
        # A form or register: what was removed may have taken or left ink of the digits.
        limit = max(limit, marked)
    reasons = review_reasons(confidences, limit, expected_length, reading, unlike)
    reasons += geometry_reasons(lattice, chosen, prepared.size, calibration.review)
    return StringReading(
        digits="".join(str(s.digit) for s in segments),
        confidence=float(np.prod(confidences)),
        segments=tuple(segments),
        reasons=tuple(reasons),
        threshold=limit,
        size=prepared.size,
        ignored=tuple(lattice.ignored),
    )


def read_strings(
    prepared: Sequence[PreparedString],
    probabilities: npt.NDArray[np.floating],
    calibration: ReaderCalibration,
    *,
    max_digits: int,
    threshold: float | None = None,
    operator_threshold: float | None = None,
    expected_length: int | None = None,
) -> list[StringReading | DomainError]:
    """:func:`read_string` for each image of a batch, from its own rows of ONE model call over
    all their candidates (``probabilities``, in order); an image the reader refuses (too many
    digits) is its error. A model answer that is not scores refuses the whole batch."""
    out: list[StringReading | DomainError] = []
    start = 0
    for item in prepared:
        rows = probabilities[start : start + len(item.batch)]
        start += len(item.batch)
        try:
            out.append(
                read_string(
                    item,
                    rows,
                    calibration,
                    max_digits=max_digits,
                    threshold=threshold,
                    operator_threshold=operator_threshold,
                    expected_length=expected_length,
                )
            )
        except DomainError as exc:
            if exc.code == "model_output_invalid":
                raise
            out.append(exc)
    return out


def recognize_image(
    data: bytes,
    predict: Predict,
    calibration: ReaderCalibration,
    limits: ReadingLimits,
    *,
    threshold: float | None = None,
    operator_threshold: float | None = None,
    expected_length: int | None = None,
) -> StringReading:
    """:func:`prepare_string`, one ``predict`` call for every candidate, :func:`read_string`."""
    prepared = prepare_string(data, limits)
    return read_string(
        prepared,
        predict(prepared.batch),
        calibration,
        max_digits=limits.max_digits,
        threshold=threshold,
        operator_threshold=operator_threshold,
        expected_length=expected_length,
    )


def judge_digit(
    image: npt.NDArray[np.uint8],
    probabilities: npt.NDArray[np.floating],
    calibration: ReaderCalibration,
    *,
    threshold: float | None = None,
    operator_threshold: float | None = None,
) -> tuple[ReviewReason, ...]:
    """Why a person should check one digit read alone (empty: it can be trusted).

    ``image`` is the 28×28 digit the model read (MNIST polarity), ``probabilities`` its ten
    scores. The digit is held to the same threshold as a digit of a string (the request's, the
    operator's, else the version's calibrated one) and to the same likeness judge; an image that
    holds several digits side by side is flagged too (``/recognize`` reads strings).

    The same judgement as :func:`judge_digits` for a batch of one, computed without its batch
    bookkeeping: ``/predict`` makes it for every answer.
    """
    scores = np.asarray(probabilities)
    digit = int(scores.argmax())
    reasons = []
    if looks_like_several_digits(image):
        reasons.append(_SEVERAL)
    likeness, likeness_threshold = calibration.likeness, calibration.likeness_threshold
    if (
        likeness is not None
        and likeness_threshold is not None
        and not_like_digit(likeness, np.asarray(image), digit, likeness_threshold)
    ):
        reasons.append(_UNLIKE)
    confidence = float(scores[digit])
    limit = review_threshold(threshold, operator_threshold, calibration.review_threshold)
    if confidence < limit:
        reasons.append(_low_confidence(confidence, limit))
    return tuple(reasons)


def judge_digits(
    images: npt.NDArray[np.uint8],
    probabilities: npt.NDArray[np.floating],
    calibration: ReaderCalibration,
    *,
    threshold: float | None = None,
    operator_threshold: float | None = None,
) -> list[tuple[ReviewReason, ...]]:
    """:func:`judge_digit` for a batch of digits (``images`` [N, 28, 28], ``probabilities``
    [N, 10]), the likeness of all of them computed at once."""
    count = len(images)
    if count == 0:
        return []
    digits = np.argmax(probabilities, axis=1)
    confidences = probabilities[np.arange(count), digits]
    unlike = _not_digit_like(calibration, images, probabilities, list(range(count)))
    limit = review_threshold(threshold, operator_threshold, calibration.review_threshold)
    judged: list[tuple[ReviewReason, ...]] = []
    for index in range(count):
        reasons = []
        if looks_like_several_digits(images[index]):
            reasons.append(_SEVERAL)
        if unlike is not None and unlike[index]:
            reasons.append(_UNLIKE)
        confidence = float(confidences[index])
        if confidence < limit:
            reasons.append(_low_confidence(confidence, limit))
        judged.append(tuple(reasons))
    return judged


def _low_confidence(confidence: float, limit: float) -> ReviewReason:
    shown, limit_shown = distinct_figures(confidence, limit)
    return ReviewReason(
        ReasonCode.LOW_CONFIDENCE,
        f"the digit was read with confidence {shown}, below the threshold {limit_shown}",
        1,
    )


_SEVERAL: Final = ReviewReason(
    ReasonCode.SEVERAL_DIGITS,
    "the image holds several digits side by side: send it to /recognize to read a string",
)
_UNLIKE: Final = ReviewReason(
    ReasonCode.NOT_DIGIT_LIKE,
    "the image does not look like a handwritten digit (it may be a line, a mark or part of one)",
    1,
)


def looks_like_several_digits(image: npt.NDArray[np.uint8]) -> bool:
    """Whether a normalized 28×28 image holds a string rather than one digit: its ink is much
    wider than tall, or falls into two or more column runs apart that each hold a good share."""
    ink = np.asarray(image) >= _INK_LEVEL
    # Which columns and rows hold ink, as bytes (0 or 1 each): most digits are answered from
    # these alone, with a few bytes operations rather than more numpy calls (judge_digit makes
    # this test for every /predict answer).
    inked_columns = np.logical_or.reduce(ink, axis=0).tobytes()
    left = inked_columns.find(1)
    if left < 0:
        return False
    right = inked_columns.rfind(1)
    inked_rows = np.logical_or.reduce(ink, axis=1).tobytes()
    width = right - left + 1
    height = inked_rows.rfind(1) - inked_rows.find(1) + 1
    if width >= _SEVERAL_ASPECT * height:
        return True
    if 0 not in inked_columns[left : right + 1]:  # one run of columns: most digits end here
        return False
    mass = np.where(ink, image, 0).sum(axis=0, dtype=np.int64)
    columns = np.flatnonzero(mass)
    breaks = np.flatnonzero(np.diff(columns) > 1)
    total = float(mass.sum())
    runs = np.split(columns, breaks + 1)
    return sum(float(mass[run].sum()) >= _SEVERAL_SHARE * total for run in runs) >= 2


def _hairlines_on_a_form(
    lattice: Lattice, chosen: Sequence[int], unlike: list[bool] | None
) -> list[bool] | None:
    """Add to ``unlike`` the hairline digits of an image where ruled lines or margins were found.

    A piece of a ruled line that escaped :mod:`app.reading.marks` reads as a confident 1; on a
    page with lines, a digit as thin as they are is not trusted.
    """
    if not page_has_marks(lattice):
        return unlike
    flags = unlike or [False] * len(chosen)
    return [f or is_hairline(lattice.candidates[i].ink) for f, i in zip(flags, chosen, strict=True)]


def _not_digit_like(
    calibration: ReaderCalibration,
    batch: npt.NDArray[np.uint8],
    probabilities: npt.NDArray[np.floating],
    chosen: Sequence[int],
) -> list[bool] | None:
    """Per chosen candidate, whether it is too unlike any digit (None: no likeness check)."""
    if calibration.likeness is None or calibration.likeness_threshold is None or not chosen:
        return None
    picked = list(chosen)
    classes = np.argmax(probabilities[picked], axis=1)
    unlike = not_like_digits(
        calibration.likeness, batch[picked], classes, calibration.likeness_threshold
    )
    return [bool(flag) for flag in unlike]
