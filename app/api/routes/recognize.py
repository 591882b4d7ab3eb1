"""``POST /recognize``: read a whole handwritten digit string, such as a postal code.

The image is segmented into candidate digits (:mod:`app.reading.lattice`); every candidate is
normalized exactly as ``/predict`` normalizes one digit and all of them go to the model in ONE
call; the reading that best explains the ink is then chosen from the model's answers. Digits
the model is unsure of, or a string of the wrong length, flag the answer for review by a
person, the way mail sorting works.
"""

from __future__ import annotations

from functools import partial
from typing import Annotated, Final, Literal

import numpy as np
import numpy.typing as npt
from fastapi import APIRouter, File, Query, Request, UploadFile
from pydantic import BaseModel, ConfigDict, Field, JsonValue
from starlette.concurrency import run_in_threadpool

from app.api.deps import ApiKeyDep, ServingDep
from app.api.disconnect import stop_if_client_gone
from app.api.schemas import Probabilities, Probability, error_responses
from app.core.deadline import check_deadline, request_deadline
from app.core.tracing import child_span
from app.reading.calibration import ReaderCalibration, calibration_for
from app.reading.decode import load_image, open_image, run_in_large_image_slot
from app.reading.lattice import MAX_WORK_PIXELS, Lattice, find_candidates, normalize_candidates
from app.reading.likeness import mass_outside, unlikeness
from app.reading.marks import is_hairline
from app.reading.reader import Reading, choose_reading
from app.reading.review import (
    ReviewLimits,
    cut_by_the_edge,
    joined_too_wide,
    off_the_line,
    page_has_marks,
    spans_the_image,
)
from app.settings import DEFAULT_REVIEW_THRESHOLD, Settings

router = APIRouter(prefix="/recognize", tags=["recognize"], dependencies=[ApiKeyDep])

# Segmentation turns up to MAX_WORK_PIXELS into several float arrays at once: from this many
# pixels up it runs within the large-image limit, like the decode of a large photo.
SEGMENT_ALONE_PIXELS: Final = 250_000

_PROBS_EXAMPLE: list[JsonValue] = [
    0.0002,
    0.0011,
    0.0003,
    0.0004,
    0.0002,
    0.9931,
    0.0012,
    0.0001,
    0.0031,
    0.0003,
]


class BoxModel(BaseModel):
    """Where a digit is, in pixels of the uploaded image (after EXIF rotation)."""

    x: int = Field(ge=0, description="Left edge.", examples=[34])
    y: int = Field(ge=0, description="Top edge.", examples=[20])
    width: int = Field(ge=1, examples=[41])
    height: int = Field(ge=1, examples=[58])


class SegmentReading(BaseModel):
    """One digit of the string: what it was read as, how sure, and where it is."""

    digit: int = Field(ge=0, le=9, description="The most probable digit.", examples=[5])
    confidence: Probability = Field(
        description="Probability of that digit (the largest of the ten).", examples=[0.9931]
    )
    probabilities: Probabilities = Field(examples=[_PROBS_EXAMPLE])
    box: BoxModel


class IgnoredMark(BaseModel):
    """Something in the image that is not a handwritten digit and was left out of the reading."""

    kind: Literal["margin", "ruled_line", "speck", "stray", "punctuation"] = Field(
        description="`margin`: a dark scan margin or border along an edge; `ruled_line`: a "
        "long thin straight line (of a form or a register, also where it crosses a digit); "
        "`speck`: dust, noise or paper texture; `stray`: ink outside the line of writing (bits "
        "of other text or cells); `punctuation`: a dot, comma, dash or equals sign.",
        examples=["ruled_line"],
    )
    box: BoxModel


class ImageSize(BaseModel):
    """Size of the uploaded image in pixels (after EXIF rotation)."""

    width: int = Field(ge=1, examples=[400])
    height: int = Field(ge=1, examples=[100])


class RecognizeResponse(BaseModel):
    """Answer of ``POST /recognize``."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "digits": "75001",
                    "confidence": 0.8123,
                    "needs_review": True,
                    "review_reasons": [
                        "digit 4 was read as 0 with confidence 0.86, below the threshold 0.90"
                    ],
                    "model_version": 1,
                    "image": {"width": 400, "height": 100},
                    "segments": [
                        {
                            "digit": 5,
                            "confidence": 0.9931,
                            "probabilities": _PROBS_EXAMPLE,
                            "box": {"x": 34, "y": 20, "width": 41, "height": 58},
                        }
                    ],
                    "ignored": [
                        {
                            "kind": "ruled_line",
                            "box": {"x": 0, "y": 81, "width": 400, "height": 3},
                        }
                    ],
                }
            ]
        }
    )

    digits: str = Field(
        pattern=r"^[0-9]+$", description="The digits read, left to right.", examples=["75001"]
    )
    confidence: Probability = Field(
        description="Confidence in the whole string: the product of the digits' confidences.",
        examples=[0.8123],
    )
    needs_review: bool = Field(
        description="True when a person should check the reading: a digit's confidence is "
        "below the threshold, the cut into digits (or their number) is uncertain, or the "
        "string's length is not the expected one."
    )
    review_reasons: list[str] = Field(
        description="Why the reading needs review, one sentence per reason (empty when not)."
    )
    model_version: int = Field(description="Version of the model that answered.", examples=[1])
    image: ImageSize
    segments: list[SegmentReading] = Field(
        description="One entry per digit, left to right, in the same order as `digits`."
    )
    ignored: list[IgnoredMark] = Field(
        default_factory=list,
        description="What was found in the image and not read as digits, with boxes, so a "
        "page can show it: margins, ruled lines, specks, strays and punctuation.",
    )


def _prepare(
    data: bytes, settings: Settings
) -> tuple[Lattice, npt.NDArray[np.uint8], tuple[int, int]]:
    """Decode, segment and normalize (CPU work, run in the thread pool).

    All of it runs within the large-image limit, so the float arrays of segmentation are
    bounded by the same concurrency limit as the decode.
    """
    max_pixels = min(settings.max_image_pixels, settings.max_request_pixels)
    img = open_image(data, max_pixels=max_pixels, max_jpeg_scans=settings.max_jpeg_scans)

    def segment() -> tuple[Lattice, npt.NDArray[np.uint8], tuple[int, int]]:
        with child_span("decode"):
            loaded, size = load_image(img, max_pixels=max_pixels, work_pixels=MAX_WORK_PIXELS)
        with child_span("segmentation"):
            lattice = find_candidates(loaded, max_digits=settings.max_digits, size=size)
        with child_span("normalize", {"digits.candidates": len(lattice.candidates)}):
            batch = normalize_candidates(lattice)
        return lattice, batch, size

    if img.width * img.height < SEGMENT_ALONE_PIXELS:
        return segment()
    return run_in_large_image_slot(segment)


def review_threshold(
    requested: float | None, settings: Settings, calibration: ReaderCalibration
) -> float:
    """The threshold for this request: the query's, else the operator's setting, else the
    served version's calibrated one, else the default."""
    if requested is not None:
        return requested
    if settings.review_threshold is not None:
        return settings.review_threshold
    if calibration.review_threshold is not None:
        return calibration.review_threshold
    return DEFAULT_REVIEW_THRESHOLD


def review_reasons(
    confidences: list[float],
    threshold: float,
    expected_length: int | None,
    reading: Reading,
    unlike: list[bool] | None = None,
) -> list[str]:
    """Human-readable reasons to send a reading to review (empty when it can be trusted).

    ``unlike`` says, per digit, whether it is not digit-like (see :mod:`app.reading.likeness`).
    """
    reasons = []
    for i, flag in enumerate(unlike or []):
        if flag:
            reasons.append(
                f"digit {i + 1} of {len(confidences)} does not look like a handwritten digit "
                "(it may be a line, a mark or part of one)"
            )
    if expected_length is not None and len(confidences) != expected_length:
        reasons.append(f"expected {expected_length} digits but read {len(confidences)}")
    if reading.count_is_uncertain and reading.runner_up is not None:
        reasons.append(
            f"the number of digits is uncertain: reading {reading.runner_up} digits instead of "
            f"{len(confidences)} is almost as likely"
        )
    elif reading.cut_is_uncertain:
        reasons.append(
            "where one digit ends and the next begins is uncertain: another way of cutting the "
            "ink into digits is almost as likely"
        )
    for i, confidence in enumerate(confidences):
        if confidence < threshold:
            shown, limit = _distinct(confidence, threshold)
            reasons.append(
                f"digit {i + 1} of {len(confidences)} was read with confidence "
                f"{shown}, below the threshold {limit}"
            )
    return reasons


def _distinct(value: float, threshold: float) -> tuple[str, str]:
    """Both numbers with two decimals, or as many more as it takes to tell them apart."""
    for decimals in range(2, 9):
        shown, limit = f"{value:.{decimals}f}", f"{threshold:.{decimals}f}"
        if shown != limit:
            return shown, limit
    return f"{value:.9f}", f"{threshold:.9f}"


@router.post(
    "",
    summary="Read a handwritten digit string (postal code)",
    description=(
        "Upload one image of a line of handwritten digits, such as a postal code, as "
        "multipart/form-data field `file` (PNG, JPEG, BMP, GIF (first frame) or WebP): dark "
        "ink on light paper or the reverse, grayscale or colour, any reasonable size. The "
        "digits are found by segmentation (connected components; broken digits joined, "
        "touching digits cut), each is normalized exactly as `/predict` normalizes one digit, "
        "and all are classified in one model call.\n\n"
        "The answer gives the string, each digit with its confidence, probabilities and box in "
        "image pixels, and the string's confidence (product of the digits'). `needs_review` is "
        "true, with reasons, when a digit's confidence is below `threshold`, when the "
        "segmentation itself is uncertain (another way of cutting the ink into digits, with "
        "the same or another number of digits, is almost as likely), or when the number of "
        "digits differs from `expected_length`: such readings should go to a person.\n\n"
        "An image with no ink answers 422 `no_digits_found`; more digits than "
        "`DIGITS_MAX_DIGITS` (12 by default) answers 422 `too_many_digits`."
    ),
    response_model=RecognizeResponse,
    responses=error_responses(400, 401, 404, 413, 415, 422, 503),
)
async def recognize(
    request: Request,
    file: Annotated[UploadFile, File(description="The image of the digit string.")],
    expected_length: Annotated[
        int | None,
        Query(
            ge=1,
            description="How many digits the string should have (5 for a US ZIP code). A "
            "different count flags the answer for review.",
            examples=[5],
        ),
    ] = None,
    threshold: Annotated[
        float | None,
        Query(
            ge=0.0,
            le=1.0,
            description="A digit read with lower confidence than this flags the answer for "
            "review. Default: `DIGITS_REVIEW_THRESHOLD` when set, else the served version's "
            "calibrated threshold (its `reader.json`), else 0.98.",
            examples=[0.98],
        ),
    ] = None,
    *,
    serving: ServingDep,
) -> dict[str, object]:
    """Read the digit string in one uploaded image."""
    settings = serving.settings
    data = await file.read()
    with request_deadline(settings.request_deadline_seconds):
        lattice, batch, (width, height) = await run_in_threadpool(_prepare, data, settings)
        await stop_if_client_gone(request)
        check_deadline()
        prediction = await serving.worker.predict(serving.model, batch)
        serving.telemetry.count_images("/recognize", len(batch))
        probabilities = prediction.probabilities
        # The served version's own reader weights (its reader.json, else the defaults).
        calibration = calibration_for(serving.model)
        # choose_reading refuses scores that are not probabilities (503 model_output_invalid)
        # before anything below relies on them.
        with child_span("reading"):
            reading = await run_in_threadpool(
                partial(
                    choose_reading,
                    max_digits=settings.max_digits,
                    weights=calibration.reading_weights,
                    count_margin=calibration.count_margin,
                    reading_margin=calibration.reading_margin,
                ),
                lattice,
                probabilities,
            )
    segments: list[dict[str, object]] = []
    confidences: list[float] = []
    digits = ""
    for index in reading.candidates:
        probs = probabilities[index]
        digit = int(np.argmax(probs))
        box = lattice.candidates[index].box
        confidences.append(float(probs[digit]))
        digits += str(digit)
        segments.append(
            {
                "digit": digit,
                "confidence": confidences[-1],
                "probabilities": probs.tolist(),
                "box": {"x": box.x, "y": box.y, "width": box.width, "height": box.height},
            }
        )
    unlike = _not_digit_like(calibration, batch, probabilities, list(reading.candidates))
    unlike = _hairlines_on_a_form(lattice, list(reading.candidates), unlike)
    limit = review_threshold(threshold, settings, calibration)
    marked = calibration.review.marked_threshold
    if threshold is None and marked is not None and page_has_marks(lattice):
        # A form or register: what was removed may have taken or left ink of the digits.
        limit = max(limit, marked)
    reasons = review_reasons(confidences, limit, expected_length, reading, unlike)
    reasons += geometry_reasons(
        lattice, list(reading.candidates), (width, height), calibration.review
    )
    telemetry = serving.telemetry
    for digit_char, confidence in zip(digits, confidences, strict=True):
        telemetry.observe_answer("/recognize", int(digit_char), confidence)
    telemetry.observe_review(reasons)
    return {
        "digits": digits,
        "confidence": float(np.prod(confidences)),
        "needs_review": bool(reasons),
        "review_reasons": reasons,
        "model_version": prediction.model_version,
        "image": {"width": width, "height": height},
        "segments": segments,
        "ignored": [
            {
                "kind": mark.kind,
                "box": {"x": m.x, "y": m.y, "width": m.width, "height": m.height},
            }
            for mark in lattice.ignored
            for m in (mark.box,)
        ],
    }


def geometry_reasons(
    lattice: Lattice, chosen: list[int], size: tuple[int, int], limits: ReviewLimits
) -> list[str]:
    """Reasons from the geometry of the chosen digits (see :mod:`app.reading.review`)."""
    reasons = []
    total = len(chosen)
    for i, flag in enumerate(joined_too_wide(lattice, chosen, limits.max_joined_width)):
        if flag:
            reasons.append(
                f"digit {i + 1} of {total} was joined from several pieces and is wider than a "
                "digit (it may be two digits, or a digit and a mark)"
            )
    for i, flag in enumerate(off_the_line(lattice, chosen, limits.max_line_offset)):
        if flag:
            reasons.append(
                f"digit {i + 1} of {total} is above or below the line of the other digits (it "
                "may be a mark or part of another line)"
            )
    for i, flag in enumerate(spans_the_image(lattice, chosen, size)):
        if flag:
            reasons.append(
                f"digit {i + 1} of {total} is drawn in hairlines across the whole image (it "
                "may be ruled lines crossing the writing)"
            )
    for i, flag in enumerate(cut_by_the_edge(lattice, chosen, size, limits.edge_room)):
        if flag:
            reasons.append(
                f"digit {i + 1} of {total} runs into the edge of the image (it may be part of a "
                "neighbouring cell or a line)"
            )
    return reasons


def _hairlines_on_a_form(
    lattice: Lattice, chosen: list[int], unlike: list[bool] | None
) -> list[bool] | None:
    """Add to ``unlike`` the hairline digits of an image where ruled lines or margins were found.

    A piece of a ruled line that escaped :mod:`app.reading.marks` reads as a confident 1; on a page
    with lines, a digit as thin as they are is not trusted.
    """
    if not any(m.kind in ("ruled_line", "margin") for m in lattice.ignored):
        return unlike
    flags = unlike or [False] * len(chosen)
    return [f or is_hairline(lattice.candidates[i].ink) for f, i in zip(flags, chosen, strict=True)]


def _not_digit_like(
    calibration: ReaderCalibration,
    batch: npt.NDArray[np.uint8],
    probabilities: npt.NDArray[np.floating],
    chosen: list[int],
) -> list[bool] | None:
    """Per chosen candidate, whether it is too unlike any digit (None: no likeness check)."""
    if calibration.likeness is None or calibration.likeness_threshold is None or not chosen:
        return None
    classes = np.argmax(probabilities[chosen], axis=1)
    scores = unlikeness(calibration.likeness, batch[chosen], classes)
    unlike = (scores > calibration.likeness_threshold) | mass_outside(
        calibration.likeness, batch[chosen], classes
    )
    return [bool(flag) for flag in unlike]
