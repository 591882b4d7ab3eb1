"""The FastAPI application: ``create_app()`` builds it, its lifespan loads the model.

Run it with ``python -m app.serve`` (:mod:`app.serve`: uvicorn with the connection limits).
Settings come from the environment (``DIGITS_*``, see :mod:`app.settings`) unless passed in,
as tests do.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from importlib import metadata
from typing import TYPE_CHECKING, Any, Final

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.api.review_intake import ReviewIntake
from app.api.routes import (
    docs,
    health,
    metrics,
    model,
    predict,
    recognize,
    reviews,
    web,
)
from app.api.uploads import too_many_files
from app.core.errors import ApiError, DomainError, api_error
from app.core.limits import BodySizeLimitMiddleware
from app.core.logging import configure_logging
from app.core.request_id import RequestIdMiddleware
from app.core.security_headers import SecurityHeadersMiddleware
from app.core.tracing import TracingMiddleware, tracer_provider_from_environment
from app.protocols import tfserving, v2_grpc, v2_rest
from app.serving.loaded import LoadedModel
from app.serving.runtime import configure_tensorflow, import_tensorflow
from app.serving.store import ModelStore
from app.serving.worker import InferenceWorker
from app.settings import Settings, get_settings
from app.telemetry import RequestTelemetryMiddleware, Telemetry

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

logger = logging.getLogger(__name__)

DESCRIPTION: Final = """
Reads handwritten digits with a TensorFlow SavedModel trained on MNIST.

* `POST /predict`: one digit image; `POST /predict/batch`: many in one call.
* `POST /recognize`: a digit string (a postal code), with a box per digit, a review flag with
  its reasons, and the marks left out (ruled lines, margins, specks, punctuation).
* Any reasonable image works: a 28×28 MNIST-style image is read as it is, anything else (a
  photo of a digit written on paper, a canvas drawing) is normalized the way MNIST was built.
* `?version=` or `?label=` chooses a served model version; every answer names its version.
* `/v1/...` (TensorFlow Serving REST) and `/v2/...` (Open Inference Protocol) take raw 28×28
  uint8 tensors, for model-serving clients.
* `GET /model`, `GET /metrics`, `GET /health/live`, `GET /health/ready` for operators.
* `/reviews/...`: readings flagged for review (and a sample of the others, to audit them) are
  stored for people to key; every reading's answer carries its `review_id` and `queue`.

Every error has the same shape: `{"error": {"code": ..., "message": ..., "details": ...}}`,
where `code` is for programs and `message` tells a person what to do.
"""

TAGS: Final = [
    {"name": "predict", "description": "Read single handwritten digits, one image or many."},
    {
        "name": "recognize",
        "description": "Read a whole digit string (a postal code): the digits with their boxes, "
        "and a review flag with coded reasons when a person should check the reading.",
    },
    {"name": "model", "description": "The served model version."},
    {"name": "metrics", "description": "Model evaluation and live figures (JSON or Prometheus)."},
    {"name": "health", "description": "Liveness and readiness probes."},
    {
        "name": "reviews",
        "description": "The review queue: readings flagged for review, and a sample of the "
        "others (audit), stored for people to key. Reviewers claim an item under a lease, see "
        "its image and key what it shows (the reviewers' key, DIGITS_REVIEWER_API_KEY); the "
        "keyed audit samples measure the error among accepted answers (`GET /model`, "
        "`/metrics`). A client reads a reading's result with its `review_id`.",
    },
    {
        "name": "tensorflow-serving",
        "description": "TensorFlow Serving's REST API: raw 28×28 uint8 tensors, for its clients.",
    },
    {
        "name": "open-inference-protocol",
        "description": "The Open Inference Protocol (KServe v2) over REST; the same over gRPC on "
        "DIGITS_GRPC_PORT.",
    },
]
#: The multipart bodies' schemas, named for a reader (FastAPI names them after operation ids).
BODY_SCHEMAS: Final = {
    "Body_predict_predict_post": "PredictUpload",
    "Body_predict_batch_predict_batch_post": "BatchUpload",
    "Body_recognize_recognize_post": "RecognizeUpload",
    "Body_recognize_batch_recognize_batch_post": "RecognizeBatchUpload",
}


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Load and warm the newest model version before serving; stop the workers at shutdown."""
    settings: Settings = app.state.settings
    store: ModelStore = app.state.store
    worker: InferenceWorker = app.state.worker
    await run_in_threadpool(import_tensorflow)
    await run_in_threadpool(
        configure_tensorflow, settings.intra_op_threads, settings.inter_op_threads
    )
    store.start_polling(settings.model_poll_seconds)
    # In a thread: loading a SavedModel takes a while and must not freeze the event loop.
    await run_in_threadpool(store.refresh)
    settle_heap()
    app.state.started = True
    worker.start()
    # The review queue: opened (and migrated) in a thread; a database that is down is retried
    # in the background while readings are answered without it.
    intake: ReviewIntake = app.state.reviews
    intake.start()
    await intake.wait_started()
    grpc_server = await v2_grpc.start(app)
    try:
        yield
    finally:
        await v2_grpc.stop(grpc_server)
        await intake.stop()
        store.stop_polling()
        worker.stop()
        if app.state.own_tracer_provider is not None:
            app.state.own_tracer_provider.shutdown()  # exports the spans still buffered


def settle_heap() -> None:
    """Move everything alive now (TensorFlow, the model) out of the garbage collector's sight.

    TensorFlow leaves several hundred thousand long-lived Python objects; every collection of
    the oldest generation walks them all and stalls requests for tens of milliseconds.
    Frozen, they are never walked again. After a model swap the heap is unfrozen and collected
    once, so the previous version's reference cycles are freed rather than kept forever.
    """
    gc.unfreeze()
    gc.collect()
    gc.freeze()


def create_app(
    settings: Settings | None = None, *, tracer_provider: TracerProvider | None = None
) -> FastAPI:
    """Build the service. Nothing heavy happens here; the lifespan loads the model.

    Traces go to ``tracer_provider`` when given (tests), else where the ``OTEL_*`` environment
    variables say (see :mod:`app.core.tracing`); with neither, tracing is off.
    """
    settings = settings or get_settings()
    configure_logging(settings.log_level, settings.log_format)
    telemetry = Telemetry()

    app = FastAPI(
        title="MNIST digit reader",
        version=package_version(),
        summary="Read handwritten digits and postal codes over HTTP.",
        description=DESCRIPTION,
        openapi_tags=TAGS,
        lifespan=lifespan,
        # Served by app.api.routes.docs from local assets: the defaults need a CDN.
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.telemetry = telemetry

    def on_model_change(model: LoadedModel) -> None:
        telemetry.set_model(model)
        if app.state.started:
            settle_heap()

    app.state.started = False
    app.state.store = ModelStore(
        settings.models_dir,
        on_change=on_model_change,
        policy=settings.policy(),
        probe_min_accuracy=settings.probe_min_accuracy,
        observer=telemetry,
        policy_file=settings.version_config,
    )
    app.state.reviews = intake = ReviewIntake(settings, telemetry)
    if intake.enabled:
        telemetry.watch_reviews(intake.figures)
    app.state.worker = InferenceWorker(
        max_batch_delay_ms=settings.max_batch_delay_ms,
        on_batch=telemetry.observe_batch,
        in_flight=lambda: telemetry.in_flight,
    )
    _install_error_handlers(app, telemetry)
    _tidy_openapi(app, settings)

    routers = [
        predict.router,
        recognize.router,
        model.router,
        reviews.router,
        metrics.router,
        health.router,
        tfserving.router,
        v2_rest.router,
        web.router,
        docs.router,
    ]
    for router in routers:
        app.include_router(router)
    web.mount_static(app)
    docs.mount_docs_assets(app)
    templates = [
        (route.path_regex, route.path)
        for router in routers
        for route in router.routes
        if isinstance(route, APIRoute)
    ]

    # Outermost last: telemetry sees every answer, including the limit's 413.
    app.add_middleware(
        BodySizeLimitMiddleware,
        max_bytes=settings.max_upload_bytes,
        on_reject=telemetry.count_error,
    )
    app.add_middleware(RequestTelemetryMiddleware, telemetry=telemetry, routes=templates)
    app.add_middleware(SecurityHeadersMiddleware)
    provider = tracer_provider or tracer_provider_from_environment()
    app.state.own_tracer_provider = provider if tracer_provider is None else None
    if provider is not None:
        app.add_middleware(TracingMiddleware, tracer_provider=provider)
    # Outermost: every log line of the request, the access line included, carries its id.
    app.add_middleware(RequestIdMiddleware)
    return app


def package_version() -> str:
    """The installed package's version, the one number the API reports; a checkout that was
    never installed says so rather than failing to start."""
    try:
        return metadata.version("mnist-digits")
    except metadata.PackageNotFoundError:
        return "0+unknown (not installed)"


def _tidy_openapi(app: FastAPI, settings: Settings) -> None:
    """Name the upload schemas, and keep the API-key scheme off what needs no key.

    The document must say what this instance does: without DIGITS_API_KEY the client's
    endpoints are open, and without any key the reviewers' too; advertising a required header
    would be false.
    """

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = FastAPI.openapi(app)
            _rename_schemas(document, BODY_SCHEMAS)
            # The reviewers' routes take a key when any key is configured (without the
            # reviewers' own they are closed); the others only with the client key.
            reviews_open = settings.api_key is None and settings.reviewer_api_key is None
            guarded = False
            for path, operations in document.get("paths", {}).items():
                for operation in operations.values():
                    reviewers = path.startswith("/reviews") and not path.endswith("/result")
                    if reviews_open if reviewers else settings.api_key is None:
                        operation.pop("security", None)
                    guarded = guarded or "security" in operation
            if not guarded:
                document.get("components", {}).pop("securitySchemes", None)
        return app.openapi_schema  # type: ignore[return-value]

    app.openapi = openapi  # type: ignore[method-assign]


def _rename_schemas(document: dict[str, Any], names: Mapping[str, str]) -> None:
    """Rename component schemas, and every reference to them, in an OpenAPI document."""
    schemas = document.get("components", {}).get("schemas", {})
    refs = {}
    for old, new in names.items():
        if old in schemas:
            schema = schemas.pop(old)
            schema["title"] = new
            schemas[new] = schema
            refs[f"#/components/schemas/{old}"] = f"#/components/schemas/{new}"

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref in refs:
                node["$ref"] = refs[ref]
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(document.get("paths", {}))


# --- errors: one shape for everything ------------------------------------------------------

_HTTP_CODES: Final = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    429: "too_many_requests",
}


def _error_response(error: ApiError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status_code, headers=error.headers)


def _install_error_handlers(app: FastAPI, telemetry: Telemetry) -> None:
    async def on_api_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ApiError)
        telemetry.count_error(exc.code)
        return _error_response(exc)

    async def on_http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        error = _from_http_exception(request, exc)
        telemetry.count_error(error.code)
        return _error_response(error)

    async def on_validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        error = _from_validation_error(exc)
        telemetry.count_error(error.code)
        return _error_response(error)

    async def on_domain_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, DomainError)
        error = api_error(exc)
        telemetry.count_error(error.code)
        return _error_response(error)

    app.add_exception_handler(ApiError, on_api_error)
    app.add_exception_handler(DomainError, on_domain_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)


def _from_http_exception(request: Request, exc: StarletteHTTPException) -> ApiError:
    status = exc.status_code
    detail = exc.detail if isinstance(exc.detail, str) else None
    if status == 404:
        message = f"There is no endpoint at {request.url.path}. See /docs for the API."
    elif status == 405:
        allowed = (exc.headers or {}).get("Allow", "")
        message = f"{request.method} is not allowed on {request.url.path}" + (
            f"; use {allowed}." if allowed else "."
        )
    elif status == 400 and detail and detail.startswith("Too many files"):
        # The multipart parser's own cap, far above the batch limit: same answer as the limit.
        limit = request.app.state.settings.max_batch_size
        return too_many_files(None, limit)
    elif status == 400 and detail:
        message = f"The request could not be read: {detail} Send multipart/form-data."
    else:
        message = detail or "The request could not be processed."
    headers = dict(exc.headers) if exc.headers else None
    return ApiError(status, _HTTP_CODES.get(status, f"http_{status}"), message, headers=headers)


_FIELD_HINTS: Final = {
    "file": "send the image as multipart/form-data in a field named 'file'",
    "files": "send the images as multipart/form-data, repeating a field named 'files' "
    "once per image",
}


def _json_body_problem(path: list[str], kind: str, message: str) -> str:
    """A sentence about one problem of a JSON body (the /reviews endpoints take JSON)."""
    if kind == "json_invalid":
        return "The body is not valid JSON: send a JSON object with Content-Type: application/json."
    if not path:
        if kind == "missing":
            return "The request body is missing: send a JSON object (see /docs for its fields)."
        return f"The body must be a JSON object: {message}."
    name = ".".join(path)
    if kind == "extra_forbidden":
        return f"Field '{name}' is not one this endpoint takes (see /docs for its fields)."
    if kind == "missing":
        return f"Field '{name}' is required."
    return f"Field '{name}': {message}."


def _from_validation_error(exc: RequestValidationError) -> ApiError:
    # A multipart form (the readings) or JSON (the reviews), by what the body was parsed as.
    form = isinstance(exc.body, FormData)
    problems: list[dict[str, Any]] = []
    sentences: list[str] = []
    for error in exc.errors():
        loc = [str(part) for part in error.get("loc", ())]
        where = loc[0] if loc else "request"
        name = loc[1] if len(loc) > 1 else ""
        kind = str(error.get("type", ""))
        problems.append({"loc": loc, "type": kind, "msg": str(error.get("msg", ""))})
        if where == "body" and name in _FIELD_HINTS:
            if kind == "missing":
                sentences.append(f"The form field '{name}' is missing: {_FIELD_HINTS[name]}.")
            else:
                sentences.append(f"The form field '{name}' must be a file: {_FIELD_HINTS[name]}.")
        elif where == "query" and name == "normalize":
            sentences.append("Query parameter 'normalize' must be one of: auto, always, never.")
        elif where == "body" and not form:
            sentences.append(_json_body_problem(loc[1:], kind, str(error.get("msg", "invalid"))))
        else:
            label = {"query": "Query parameter", "body": "Form field", "header": "Header"}.get(
                where, "Parameter"
            )
            sentences.append(f"{label} '{name}': {error.get('msg', 'invalid')}.")
    return ApiError(
        422,
        "invalid_request",
        " ".join(dict.fromkeys(sentences)) or "The request is invalid.",
        details={"errors": problems},
    )
