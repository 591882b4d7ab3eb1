"""``POST /recognize``: read a whole handwritten digit string, such as a postal code.

The route parses the request, runs the reading pipeline (:mod:`app.reading.pipeline`) around one
call of the batching worker, and shapes the answer.
"""

from __future__ import annotations

from functools import partial
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, File, Query, Request, UploadFile
from PIL import Image
from starlette.concurrency import run_in_threadpool

from app.api.deps import ApiKeyDep, Serving, ServingDep
from app.api.disconnect import stop_if_client_gone
from app.api.review_intake import CLIENT_REF_PARAMETER, client_ref
from app.api.schemas import RecognizeBatchResponse, RecognizeResponse, error_responses
from app.api.uploads import raw_body_openapi, too_many_files, too_many_pixels, upload_bytes
from app.core.deadline import check_deadline, request_deadline
from app.core.errors import DomainError
from app.core.tracing import child_span
from app.reading.calibration import calibration_for
from app.reading.components import Box
from app.reading.pipeline import (
    PreparedString,
    ReadingLimits,
    StringReading,
    open_strings,
    prepare_opened_string,
    prepare_string,
    read_string,
    read_strings,
)
from app.reviews.queue import NewItem
from app.settings import Settings

router = APIRouter(prefix="/recognize", tags=["recognize"], dependencies=[ApiKeyDep])

ExpectedLengthQuery = Annotated[
    int | None,
    Query(
        ge=1,
        description="How many digits the string should have (5 for a US ZIP code). A "
        "different count flags the answer for review.",
        examples=[5],
    ),
]
ThresholdQuery = Annotated[
    float | None,
    Query(
        ge=0.0,
        le=1.0,
        description="A digit read with lower confidence than this flags the answer for "
        "review. Default: `DIGITS_REVIEW_THRESHOLD` when set, else the served version's "
        "calibrated threshold (its `reader.json`), else 0.98.",
        examples=[0.98],
    ),
]


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
        "`DIGITS_MAX_DIGITS` (12 by default) answers 422 `too_many_digits`.\n\n"
        "The image may also be sent as the request body itself, with its image Content-Type "
        "(`curl --data-binary @code.png -H 'Content-Type: image/png'`)."
    ),
    openapi_extra={
        **raw_body_openapi("The image of the digit string."),
        "parameters": [CLIENT_REF_PARAMETER],
    },
    response_model=RecognizeResponse,
    responses=error_responses(400, 401, 404, 413, 415, 422, 503),
)
async def recognize(
    request: Request,
    file: Annotated[
        UploadFile | None,
        File(description="The image of the digit string (or send the image itself as the body)."),
    ] = None,
    expected_length: ExpectedLengthQuery = None,
    threshold: ThresholdQuery = None,
    *,
    serving: ServingDep,
) -> dict[str, object]:
    """Read the digit string in one uploaded image."""
    settings = serving.settings
    ref = client_ref(request)
    data = await upload_bytes(request, file, "file")
    limits = reading_limits(settings)
    with request_deadline(settings.request_deadline_seconds):
        prepared = await run_in_threadpool(prepare_string, data, limits)
        await stop_if_client_gone(request)
        check_deadline()
        prediction = await serving.worker.predict(serving.model, prepared.batch)
        serving.telemetry.count_images("/recognize", len(prepared.batch))
        with child_span("reading"):
            result = await run_in_threadpool(
                partial(
                    read_string, **_reading_options(serving, limits, threshold, expected_length)
                ),
                prepared,
                prediction.probabilities,
            )
    _observe(serving, result)
    body = answer(result, prediction.model_version)
    reviews = serving.reviews
    kind = reviews.kind_for(result.needs_review, settings.review_queue_recognize)
    if kind is None:
        body["review_id"] = body["queue"] = None
    else:
        stored = reviews.item(
            kind,
            "/recognize",
            data,
            dict(body),
            result.digits,
            prediction.model_version,
            ref,
            expected_length,
        )
        body["review_id"], body["queue"] = await reviews.store_one(stored)
    return body


@router.post(
    "/batch",
    summary="Read many handwritten digit strings in one request",
    description=(
        "Upload several images of digit strings, repeating the multipart/form-data field "
        "`files` once per image, with the same limits as `/predict/batch` (at most "
        "`DIGITS_MAX_BATCH_SIZE` files holding at most `DIGITS_MAX_REQUEST_PIXELS` pixels in "
        "all, checked from the headers before any pixel is decoded). Every image is read as "
        "`/recognize` reads it; the candidate digits of all of them go to the model in one "
        "call. The answer has one entry per file, in the order sent: a `reading` (the answer "
        "`/recognize` gives) or an `error`, while the others are still read."
    ),
    response_model=RecognizeBatchResponse,
    responses=error_responses(400, 401, 404, 413, 422, 503),
    openapi_extra={"parameters": [CLIENT_REF_PARAMETER]},
)
async def recognize_batch(
    request: Request,
    files: Annotated[list[UploadFile], File(description="The images, one string each.")],
    expected_length: ExpectedLengthQuery = None,
    threshold: ThresholdQuery = None,
    *,
    serving: ServingDep,
) -> dict[str, object]:
    """Read the digit string in each of several uploaded images, with one model call."""
    settings = serving.settings
    ref = client_ref(request)
    if len(files) > settings.max_batch_size:
        raise too_many_files(len(files), settings.max_batch_size)
    items = [await f.read() for f in files]
    limits = reading_limits(settings)
    prepared: list[PreparedString | DomainError] = []
    with request_deadline(settings.request_deadline_seconds):
        opened = await run_in_threadpool(open_strings, items, limits)
        declared = sum(i.width * i.height for i in opened if not isinstance(i, DomainError))
        if declared > settings.max_request_pixels:
            raise too_many_pixels(declared, settings.max_request_pixels, len(items))
        for header in opened:
            prepared.append(
                header if isinstance(header, DomainError) else await _prepare_one(header, limits)
            )
            await stop_if_client_gone(request)
            check_deadline()
        valid = [p for p in prepared if not isinstance(p, DomainError)]
        readings: list[StringReading | DomainError] = []
        version = serving.model.version
        if valid:
            prediction = await serving.worker.predict(
                serving.model, np.concatenate([p.batch for p in valid])
            )
            serving.telemetry.count_images("/recognize/batch", sum(len(p.batch) for p in valid))
            version = prediction.model_version
            with child_span("reading", {"digits.images": len(valid)}):
                options = _reading_options(serving, limits, threshold, expected_length)
                readings = await run_in_threadpool(
                    partial(read_strings, **options), valid, prediction.probabilities
                )
    results: list[dict[str, object]] = []
    answers: list[dict[str, object]] = []
    stored: list[NewItem | None] = []
    reviews = serving.reviews
    read = iter(readings)
    for index, (upload, done) in enumerate(zip(files, prepared, strict=True)):
        outcome = done if isinstance(done, DomainError) else next(read)
        entry: dict[str, object] = {"index": index, "filename": upload.filename}
        if isinstance(outcome, DomainError):
            serving.telemetry.count_error(outcome.code)
            entry.update(reading=None, error={"code": outcome.code, "message": outcome.message})
        else:
            _observe(serving, outcome)
            body = answer(outcome, version)
            entry.update(reading=body, error=None)
            kind = reviews.kind_for(outcome.needs_review, settings.review_queue_recognize)
            answers.append(body)
            stored.append(
                None
                if kind is None
                else reviews.item(
                    kind,
                    "/recognize",
                    items[index],
                    dict(body),
                    outcome.digits,
                    version,
                    ref,
                    expected_length,
                )
            )
        results.append(entry)
    await reviews.file_many(answers, stored)
    return {"model_version": version, "results": results}


async def _prepare_one(img: Image.Image, limits: ReadingLimits) -> PreparedString | DomainError:
    try:
        return await run_in_threadpool(prepare_opened_string, img, limits)
    except DomainError as exc:
        if exc.code == "deadline_exceeded":
            raise
        return exc


def _reading_options(
    serving: Serving, limits: ReadingLimits, threshold: float | None, expected_length: int | None
) -> dict[str, Any]:
    """The reading's options for :func:`read_string` and :func:`read_strings`: the served
    version's own calibration (its reader.json, else the defaults) and the request's."""
    return {
        "calibration": calibration_for(serving.model),
        "max_digits": limits.max_digits,
        "threshold": threshold,
        "operator_threshold": serving.settings.review_threshold,
        "expected_length": expected_length,
    }


def _observe(serving: Serving, result: StringReading) -> None:
    """Count a string as read: its digits and confidences, and its review outcome."""
    for segment in result.segments:
        serving.telemetry.observe_answer("/recognize", segment.digit, segment.confidence)
    serving.telemetry.observe_review(reason.code for reason in result.reasons)


def reading_limits(settings: Settings) -> ReadingLimits:
    """The reading pipeline's limits from the service's settings."""
    return ReadingLimits(
        max_pixels=min(settings.max_image_pixels, settings.max_request_pixels),
        max_jpeg_scans=settings.max_jpeg_scans,
        max_digits=settings.max_digits,
    )


def answer(result: StringReading, model_version: int) -> dict[str, object]:
    """The JSON answer (:class:`RecognizeResponse`) for a string as read."""
    return {
        "digits": result.digits,
        "confidence": result.confidence,
        "needs_review": result.needs_review,
        "review_reasons": [
            {"code": reason.code.value, "message": reason.message, "position": reason.position}
            for reason in result.reasons
        ],
        "model_version": model_version,
        "image": {"width": result.size[0], "height": result.size[1]},
        "segments": [
            {
                "digit": s.digit,
                "confidence": s.confidence,
                "probabilities": s.probabilities.tolist(),
                "box": _box(s.box),
            }
            for s in result.segments
        ],
        "ignored": [{"kind": mark.kind, "box": _box(mark.box)} for mark in result.ignored],
    }


def _box(box: Box) -> dict[str, int]:
    return {"x": box.x, "y": box.y, "width": box.width, "height": box.height}
