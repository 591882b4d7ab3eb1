"""``POST /predict`` and ``POST /predict/batch``: read handwritten digits.

Small uploads (an MNIST-sized image) are decoded right in the handler: it takes microseconds
and a thread hop would cost more. Anything larger is decoded in the thread pool so that a
photo never stalls the event loop. The model runs on the inference worker, which batches
concurrent requests into one call.

Work is bounded per request: the pixels of all of a batch's images are summed from their
headers and checked against ``DIGITS_MAX_REQUEST_PIXELS`` before any is decoded; the work stops
at ``DIGITS_REQUEST_DEADLINE_SECONDS``; and a batch is decoded in slices, between which the
deadline is checked and the work is dropped if the client has gone away.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Coroutine
from typing import Annotated, Any, Final

import numpy as np
from fastapi import APIRouter, File, Query, Request, Response, UploadFile
from fastapi.routing import APIRoute
from PIL import Image
from starlette.concurrency import run_in_threadpool

from app.api.deps import (
    ApiKeyDep,
    Serving,
    ServingDep,
    current_serving,
    get_serving,
    passes_default_checks,
    require_api_key,
)
from app.api.disconnect import stop_if_client_gone
from app.api.fastapi_compat import route_as_included
from app.api.review_intake import CLIENT_REF_PARAMETER, client_ref
from app.api.schemas import BatchResponse, PredictResponse, error_responses
from app.api.uploads import raw_body_openapi, too_many_files, too_many_pixels, upload_bytes
from app.core.deadline import check_deadline, request_deadline
from app.core.errors import DomainError
from app.core.tracing import child_span
from app.reading.calibration import calibration_for
from app.reading.decode import open_image
from app.reading.normalize import Normalize, prepare_digit, prepare_opened
from app.reading.pipeline import judge_digit, judge_digits
from app.reading.review import ReviewReason
from app.reviews.queue import NewItem
from app.settings import Settings

router = APIRouter(prefix="/predict", tags=["predict"], dependencies=[ApiKeyDep])

#: Uploads decoded on the event loop: both this few bytes and this few declared pixels.
INLINE_MAX_BYTES: Final = 256 * 1024
INLINE_MAX_PIXELS: Final = 64 * 64
#: A batch is decoded in slices of about this long, between which the event loop checks the
#: deadline and whether the client is still there.
BATCH_SLICE_SECONDS: Final = 0.1

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


QueueQuery = Annotated[
    bool,
    Query(
        description="Store a reading flagged for review in the review queue for people to key "
        "(`DIGITS_REVIEW_QUEUE_PREDICT` does it for every request); the answer's `review_id` "
        "then names it.",
    ),
]


ThresholdQuery = Annotated[
    float | None,
    Query(
        ge=0.0,
        le=1.0,
        description="A digit read with lower confidence than this is flagged for review. "
        "Default: `DIGITS_REVIEW_THRESHOLD` when set, else the served version's calibrated "
        "threshold, else 0.98 (as `/recognize`).",
        examples=[0.98],
    ),
]


def _digit(
    probabilities: np.ndarray,
    digit: int,
    normalized: bool,
    reasons: tuple[ReviewReason, ...],
) -> dict[str, object]:
    """One digit's answer with its review reasons (the worker's answer is already checked:
    app.serving.output_check)."""
    return {
        "digit": digit,
        "confidence": float(probabilities[digit]),
        "probabilities": probabilities.tolist(),
        "normalized": normalized,
        "needs_review": bool(reasons),
        "review_reasons": [
            {"code": r.code.value, "message": r.message, "position": r.position} for r in reasons
        ],
    }


def _max_pixels(settings: Settings) -> int:
    """The most pixels one image may have: its own limit, within the request's."""
    return min(settings.max_image_pixels, settings.max_request_pixels)


async def _prepare(
    data: bytes, normalize: Normalize, settings: Settings
) -> tuple[np.ndarray, bool]:
    max_pixels = _max_pixels(settings)
    scans = settings.max_jpeg_scans
    if len(data) <= INLINE_MAX_BYTES:
        # Try on the loop with a small pixel limit: decode_image checks it from the header,
        # before any pixel is decoded, so a larger image costs only that check here.
        try:
            return prepare_digit(
                data,
                normalize=normalize,
                max_pixels=min(max_pixels, INLINE_MAX_PIXELS),
                max_jpeg_scans=scans,
            )
        except DomainError as exc:
            if exc.code != "image_too_large" or max_pixels <= INLINE_MAX_PIXELS:
                raise
    with request_deadline(settings.request_deadline_seconds):
        return await run_in_threadpool(
            prepare_digit, data, normalize=normalize, max_pixels=max_pixels, max_jpeg_scans=scans
        )


class _PredictRoute(APIRoute):
    """``POST /predict``'s route: a plain request skips the per-request dependency machinery.

    FastAPI resolves the route's dependencies (API key, then model version and label) and its
    query parameter on every request, a noticeable share of the event loop's time per upload.
    A request with no query string, the right API key (or none needed) and a model loaded
    (:func:`~app.api.deps.passes_default_checks`, which reads nothing of the body) gets exactly
    what they would give it: the current version and ``normalize=auto``. It is answered by a
    twin route that has only the ``file`` field to resolve, parsed and validated by FastAPI as
    before. Every other request goes through the full route, which answers its errors, so no
    check is skipped and no error changes; the OpenAPI document is built from this route.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        """The full handler, and before it the twin's for requests that pass as they are."""
        full = super().get_route_handler()
        # The dependencies of the route as included (a router or app may add its own): the
        # short cut stands in for these two only. When FastAPI does not say what they are
        # (app.api.fastapi_compat), every request takes the full route.
        route = route_as_included(self)
        if route is None:
            return full
        dependant = route.dependant
        calls = {sub.call for sub in dependant.dependencies}
        if not calls <= {require_api_key, get_serving} or dependant.header_params:
            return full
        twin = APIRoute(
            self.path,
            _predict_plain,
            methods=self.methods,
            dependency_overrides_provider=route.dependency_overrides_provider,
            form_limits=self.form_limits or None,
            max_body_size=self.max_body_size,
        ).get_route_handler()

        provider = route.dependency_overrides_provider

        async def handler(request: Request) -> Response:
            # Overridden dependencies (tests do it) are FastAPI's to call: the full route.
            overridden = provider is not None and getattr(provider, "dependency_overrides", None)
            if not overridden and passes_default_checks(request):
                return await twin(request)
            return await full(request)

        return handler


#: The multipart field; optional, since the image may be the request's body instead.
FileField = Annotated[
    UploadFile | None,
    File(description="The image of one digit (or send the image itself as the body)."),
]


async def _predict_plain(request: Request, file: FileField = None) -> Response:
    """``predict`` for a request that passed :func:`~app.api.deps.passes_default_checks`."""
    ref = client_ref(request)
    data = await upload_bytes(request, file, "file")
    return await _predict_one(data, "auto", current_serving(request), None, False, ref)


async def predict(
    request: Request,
    file: FileField = None,
    normalize: NormalizeQuery = "auto",
    threshold: ThresholdQuery = None,
    queue: QueueQuery = False,
    *,
    serving: ServingDep,
) -> Response:
    """Classify one uploaded digit image."""
    ref = client_ref(request)
    data = await upload_bytes(request, file, "file")
    return await _predict_one(data, normalize, serving, threshold, queue, ref)


router.add_api_route(
    "",
    predict,
    methods=["POST"],
    route_class_override=_PredictRoute,
    summary="Read one handwritten digit",
    description=(
        "Upload one image of a single digit as multipart/form-data field `file` (PNG, JPEG, "
        "BMP, GIF (first frame) or WebP). A 28×28 white-on-black image is read as it is; any "
        "other image, such as a photo of a digit written on paper, is first normalized the "
        "way MNIST was built: EXIF orientation, transparency and colour handled, dark ink on "
        "light paper inverted, cropped to the ink, fitted to 20×20 and centred in 28×28.\n\n"
        "The image may also be sent as the request body itself, with its image Content-Type "
        "(`curl --data-binary @digit.png -H 'Content-Type: image/png'`): no multipart "
        "parsing, the same limits and answers."
    ),
    openapi_extra={
        **raw_body_openapi("The image of one digit."),
        "parameters": [CLIENT_REF_PARAMETER],
    },
    response_model=PredictResponse,
    responses=error_responses(400, 401, 404, 413, 415, 422, 503),
)


async def _predict_one(
    data: bytes,
    normalize: Normalize,
    serving: Serving,
    threshold: float | None,
    queue: bool,
    ref: str | None,
) -> Response:
    # One span: app.reading decodes and normalizes in one call (decoding JPEGs at reduced size).
    with child_span("decode_normalize", {"digits.images": 1}):
        image, normalized = await _prepare(data, normalize, serving.settings)
    result = await serving.worker.predict(serving.model, image[np.newaxis])
    serving.telemetry.count_images("/predict", 1)
    digit = int(result.digits[0])
    reasons = judge_digit(
        image,
        result.probabilities[0],
        calibration_for(serving.model),
        threshold=threshold,
        operator_threshold=serving.settings.review_threshold,
    )
    answer = _digit(result.probabilities[0], digit, normalized, reasons)
    serving.telemetry.observe_answer("/predict", digit, float(result.probabilities[0][digit]))
    answer["model_version"] = result.model_version
    # A random() and nothing more unless the reading is stored for review.
    reviews = serving.reviews
    kind = reviews.kind_for(bool(reasons), queue or serving.settings.review_queue_predict)
    if kind is None:
        answer["review_id"] = answer["queue"] = None
    else:
        stored = reviews.item(
            kind, "/predict", data, stored_reading(answer), str(digit), result.model_version, ref
        )
        answer["review_id"], answer["queue"] = await reviews.store_one(stored)
    # Serialized here rather than validated against PredictResponse and encoded by FastAPI:
    # the answer is built from the model's output in exactly that shape, and the generic
    # path cost a noticeable share of the event loop's time per request under load. Same
    # JSON document as FastAPI would send.
    return Response(_json(answer), media_type="application/json")


def stored_reading(answer: dict[str, object]) -> dict[str, object]:
    """A digit's answer as the review queue keeps it: as given, plus the string form every
    item has (``digits`` and one entry in ``segments``, with no box)."""
    segment = {key: answer[key] for key in ("digit", "confidence", "probabilities")}
    return {**answer, "digits": str(answer["digit"]), "segments": [{**segment, "box": None}]}


def _json(content: dict[str, object]) -> bytes:
    return json.dumps(
        content, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":")
    ).encode("utf-8")


Prepared = tuple[np.ndarray, bool] | DomainError


class _BatchWork:
    """A batch's decoding, done in slices so the event loop can stop it between slices.

    The first slice opens every image's header and checks the pixels of them all against the
    request's budget before any pixel is decoded.
    """

    def __init__(self, items: list[bytes], normalize: Normalize, settings: Settings) -> None:
        self._items = items
        self._normalize = normalize
        self._settings = settings
        self._opened: list[Image.Image | DomainError] | None = None
        self.prepared: list[Prepared] = []

    @property
    def done(self) -> bool:
        """Whether every image has been prepared."""
        return len(self.prepared) == len(self._items)

    def run_slice(self) -> None:
        """Prepare images until they are all done or the slice's time is up (in a thread)."""
        started = time.monotonic()
        opened = self._opened if self._opened is not None else self._open_all()
        max_pixels = _max_pixels(self._settings)
        while not self.done:
            check_deadline()
            item = opened[len(self.prepared)]
            if isinstance(item, DomainError):
                self.prepared.append(item)
                continue
            try:
                self.prepared.append(
                    prepare_opened(item, normalize=self._normalize, max_pixels=max_pixels)
                )
            except DomainError as exc:
                if exc.code == "deadline_exceeded":
                    raise
                self.prepared.append(exc)
            if time.monotonic() - started > BATCH_SLICE_SECONDS:
                return

    def _open_all(self) -> list[Image.Image | DomainError]:
        settings = self._settings
        opened: list[Image.Image | DomainError] = []
        for data in self._items:
            try:
                opened.append(
                    open_image(
                        data,
                        max_pixels=_max_pixels(settings),
                        max_jpeg_scans=settings.max_jpeg_scans,
                    )
                )
            except DomainError as exc:
                opened.append(exc)
        declared = sum(img.width * img.height for img in opened if not isinstance(img, DomainError))
        if declared > settings.max_request_pixels:
            raise too_many_pixels(declared, settings.max_request_pixels, len(self._items))
        self._opened = opened
        return opened


async def _prepare_batch(
    request: Request, items: list[bytes], normalize: Normalize, settings: Settings
) -> list[Prepared]:
    work = _BatchWork(items, normalize, settings)
    with request_deadline(settings.request_deadline_seconds):
        while True:
            await run_in_threadpool(work.run_slice)
            await stop_if_client_gone(request)
            if work.done:
                return work.prepared


@router.post(
    "/batch",
    summary="Read many handwritten digits in one request",
    description=(
        "Upload several images, repeating the multipart/form-data field `files` once per "
        "image (at most `DIGITS_MAX_BATCH_SIZE`, 256 by default, holding at most "
        "`DIGITS_MAX_REQUEST_PIXELS` pixels in all, 50,000,000 by default). All valid images "
        "are classified in one model call. The answer has one entry per file, in the order sent; "
        "a file that cannot be read gets an `error` entry with its `index` while the others "
        "are still answered."
    ),
    response_model=BatchResponse,
    responses=error_responses(400, 401, 404, 413, 422, 503),
    openapi_extra={"parameters": [CLIENT_REF_PARAMETER]},
)
async def predict_batch(
    request: Request,
    files: Annotated[
        list[UploadFile], File(description="The images, one digit each, in the order wanted.")
    ],
    normalize: NormalizeQuery = "auto",
    threshold: ThresholdQuery = None,
    queue: QueueQuery = False,
    *,
    serving: ServingDep,
) -> dict[str, object]:
    """Classify a batch of uploaded digit images with one model call."""
    model, worker, settings, telemetry, reviews = (
        serving.model,
        serving.worker,
        serving.settings,
        serving.telemetry,
        serving.reviews,
    )
    ref = client_ref(request)
    if len(files) > settings.max_batch_size:
        raise too_many_files(len(files), settings.max_batch_size)
    items = [await f.read() for f in files]
    with child_span("decode_normalize", {"digits.images": len(items)}):
        prepared = await _prepare_batch(request, items, normalize, settings)
    valid = [p for p in prepared if not isinstance(p, DomainError)]
    predictions = None
    judged: list[tuple[ReviewReason, ...]] = []
    if valid:
        images = np.stack([image for image, _ in valid])
        predictions = await worker.predict(model, images)
        telemetry.count_images("/predict/batch", len(valid))
        judged = judge_digits(
            images,
            predictions.probabilities,
            calibration_for(model),
            threshold=threshold,
            operator_threshold=settings.review_threshold,
        )
    results: list[dict[str, object]] = []
    answers: list[dict[str, object]] = []
    stored: list[NewItem | None] = []
    wanted = queue or settings.review_queue_predict
    version = predictions.model_version if predictions is not None else model.version
    row = 0
    for index, (upload, item) in enumerate(zip(files, prepared, strict=True)):
        entry: dict[str, object] = {"index": index, "filename": upload.filename}
        if isinstance(item, DomainError):
            telemetry.count_error(item.code)
            entry["prediction"] = None
            entry["error"] = {"code": item.code, "message": item.message}
        else:
            assert predictions is not None
            digit = int(predictions.digits[row])
            answer = _digit(predictions.probabilities[row], digit, item[1], judged[row])
            entry["prediction"] = answer
            telemetry.observe_answer(
                "/predict/batch", digit, float(predictions.probabilities[row][digit])
            )
            entry["error"] = None
            kind = reviews.kind_for(bool(judged[row]), wanted)
            answers.append(answer)
            stored.append(
                None
                if kind is None
                else reviews.item(
                    kind,
                    "/predict",
                    items[index],
                    stored_reading({**answer, "model_version": version}),
                    str(digit),
                    version,
                    ref,
                )
            )
            row += 1
        results.append(entry)
    await reviews.file_many(answers, stored)
    return {"model_version": version, "results": results}
