"""``POST /predict`` and ``POST /predict/batch``: read handwritten digits.

Small uploads (an MNIST-sized image) are decoded right in the handler: it takes microseconds
and a thread hop would cost more. Anything larger is decoded in the thread pool so that a
photo never stalls the event loop. The model runs on the inference worker, which batches
concurrent requests into one call.
"""

from __future__ import annotations

import json
from typing import Annotated, Final

import numpy as np
from fastapi import APIRouter, File, Query, Response, UploadFile
from starlette.concurrency import run_in_threadpool

from app.api.deps import ApiKeyDep, ServingDep
from app.core.errors import ApiError
from app.imaging import Normalize, prepare_digit
from app.schemas import BatchResponse, PredictResponse, error_responses

router = APIRouter(prefix="/predict", tags=["predict"], dependencies=[ApiKeyDep])

#: Uploads decoded on the event loop: both this few bytes and this few declared pixels.
INLINE_MAX_BYTES: Final = 256 * 1024
INLINE_MAX_PIXELS: Final = 64 * 64

NormalizeQuery = Annotated[
    Normalize,
    Query(
        description=(
            "`auto` (default): a 28×28 grayscale image with a white digit on black (MNIST "
            "style) goes to the model as it is, anything else is normalized. `always`: "
            "normalize every image. `never`: only convert to grayscale (the image must then "
            "be 28×28, white on black)."
        ),
    ),
]


def _digit(probabilities: np.ndarray, digit: int, normalized: bool) -> dict[str, object]:
    return {
        "digit": digit,
        "confidence": float(probabilities[digit]),
        "probabilities": probabilities.tolist(),
        "normalized": normalized,
    }


async def _prepare(data: bytes, normalize: Normalize, max_pixels: int) -> tuple[np.ndarray, bool]:
    if len(data) <= INLINE_MAX_BYTES:
        # Try on the loop with a small pixel limit: decode_image checks it from the header,
        # before any pixel is decoded, so a larger image costs only that check here.
        try:
            return prepare_digit(
                data, normalize=normalize, max_pixels=min(max_pixels, INLINE_MAX_PIXELS)
            )
        except ApiError as exc:
            if exc.code != "image_too_large" or max_pixels <= INLINE_MAX_PIXELS:
                raise
    return await run_in_threadpool(prepare_digit, data, normalize=normalize, max_pixels=max_pixels)


@router.post(
    "",
    summary="Read one handwritten digit",
    description=(
        "Upload one image of a single digit as multipart/form-data field `file` (PNG, JPEG, "
        "BMP, GIF (first frame) or WebP). A 28×28 white-on-black image is read as it is; any "
        "other image, such as a photo of a digit written on paper, is first normalized the "
        "way MNIST was built: EXIF orientation, transparency and colour handled, dark ink on "
        "light paper inverted, cropped to the ink, fitted to 20×20 and centred in 28×28."
    ),
    response_model=PredictResponse,
    responses=error_responses(400, 401, 404, 413, 415, 422, 503),
)
async def predict(
    file: Annotated[UploadFile, File(description="The image of one digit.")],
    normalize: NormalizeQuery = "auto",
    *,
    serving: ServingDep,
) -> Response:
    """Classify one uploaded digit image."""
    data = await file.read()
    image, normalized = await _prepare(data, normalize, serving.settings.max_image_pixels)
    result = await serving.worker.predict(serving.model, image[np.newaxis])
    serving.telemetry.count_images("/predict", 1)
    answer = _digit(result.probabilities[0], int(result.digits[0]), normalized)
    answer["model_version"] = result.model_version
    # Serialized here rather than validated against PredictResponse and encoded by FastAPI:
    # the answer is built from the model's output in exactly that shape, and the generic
    # path cost a noticeable share of the event loop's time per request under load. Same
    # JSON document as FastAPI would send.
    return Response(_json(answer), media_type="application/json")


def _json(content: dict[str, object]) -> bytes:
    return json.dumps(
        content, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":")
    ).encode("utf-8")


def _prepare_all(
    items: list[bytes], normalize: Normalize, max_pixels: int
) -> list[tuple[np.ndarray, bool] | ApiError]:
    prepared: list[tuple[np.ndarray, bool] | ApiError] = []
    for data in items:
        try:
            prepared.append(prepare_digit(data, normalize=normalize, max_pixels=max_pixels))
        except ApiError as exc:
            prepared.append(exc)
    return prepared


@router.post(
    "/batch",
    summary="Read many handwritten digits in one request",
    description=(
        "Upload several images, repeating the multipart/form-data field `files` once per "
        "image (at most `DIGITS_MAX_BATCH_SIZE`, 256 by default). All valid images are "
        "classified in one model call. The answer has one entry per file, in the order sent; "
        "a file that cannot be read gets an `error` entry with its `index` while the others "
        "are still answered."
    ),
    response_model=BatchResponse,
    responses=error_responses(400, 401, 404, 413, 422, 503),
)
async def predict_batch(
    files: Annotated[
        list[UploadFile], File(description="The images, one digit each, in the order wanted.")
    ],
    normalize: NormalizeQuery = "auto",
    *,
    serving: ServingDep,
) -> dict[str, object]:
    """Classify a batch of uploaded digit images with one model call."""
    model, worker, settings, telemetry = (
        serving.model,
        serving.worker,
        serving.settings,
        serving.telemetry,
    )
    if len(files) > settings.max_batch_size:
        raise too_many_files(len(files), settings.max_batch_size)
    items = [await f.read() for f in files]
    prepared = await run_in_threadpool(_prepare_all, items, normalize, settings.max_image_pixels)
    valid = [p for p in prepared if not isinstance(p, ApiError)]
    predictions = None
    if valid:
        predictions = await worker.predict(model, np.stack([image for image, _ in valid]))
        telemetry.count_images("/predict/batch", len(valid))
    results: list[dict[str, object]] = []
    row = 0
    for index, (upload, item) in enumerate(zip(files, prepared, strict=True)):
        entry: dict[str, object] = {"index": index, "filename": upload.filename}
        if isinstance(item, ApiError):
            telemetry.count_error(item.code)
            entry["prediction"] = None
            entry["error"] = {"code": item.code, "message": item.message}
        else:
            assert predictions is not None
            entry["prediction"] = _digit(
                predictions.probabilities[row], int(predictions.digits[row]), item[1]
            )
            entry["error"] = None
            row += 1
        results.append(entry)
    version = predictions.model_version if predictions is not None else model.version
    return {"model_version": version, "results": results}


def too_many_files(count: int | None, limit: int) -> ApiError:
    """The error for a batch with more files than allowed."""
    sent = f"{count} files were sent; " if count is not None else ""
    return ApiError(
        413,
        "too_many_files",
        f"Too many files in one batch: {sent}at most {limit} are accepted. "
        "Split the images over several requests.",
        details={"max_files": limit, **({"files": count} if count is not None else {})},
    )
