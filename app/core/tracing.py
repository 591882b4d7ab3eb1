"""OpenTelemetry tracing, off unless the standard ``OTEL_*`` environment variables turn it on.

Tracing is on when ``OTEL_TRACES_EXPORTER`` names an exporter (``otlp``, ``console``, or any
installed ``opentelemetry_traces_exporter`` entry point) or an OTLP endpoint is set
(``OTEL_EXPORTER_OTLP_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``), and
``OTEL_SDK_DISABLED`` is not ``true``. The exporters, sampler and resource read their own
``OTEL_*`` variables as the SDK documents them.

Every request gets a server span (its parent taken from a W3C ``traceparent`` header, or the
same key in gRPC metadata), with child spans for the stages of the work (:func:`child_span`) and
for the model call, which runs on the inference worker's thread: the request's context is
captured when the job is submitted (:func:`capture`) and the span recorded from there
(:func:`record_model_call`). :class:`TracingMiddleware` opens the span of an HTTP request; a
door of another transport opens its calls' spans with :func:`server_span` (the gRPC door's
interceptor, :mod:`app.protocols.grpc_server`), with the tracer provider the app was built
with (:func:`tracer_provider_of`). While a span is current every log line carries its
``trace_id`` and ``span_id`` (:mod:`app.core.logging`).

When tracing is off no span object is created anywhere: the middleware and the interceptor are
not installed and :func:`child_span` / :func:`capture` cost one context-variable lookup.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterable, Iterator, Mapping
from contextlib import AbstractContextManager
from contextvars import ContextVar
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, Final, cast

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, StatusCode
from opentelemetry.util.types import Attributes
from starlette.applications import Starlette
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core.request_id import current_request_id

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter

logger = logging.getLogger(__name__)

SERVICE_NAME: Final = "mnist-digits"
INSTRUMENTATION: Final = "app"
_NO_SPAN: Final = contextlib.nullcontext()

#: The tracer of the request being answered in this context; None when tracing is off.
_tracer: ContextVar[trace.Tracer | None] = ContextVar("tracer", default=None)

Captured = tuple[trace.Tracer, otel_context.Context]


def tracer_provider_from_environment(
    environ: os._Environ[str] | dict[str, str] | None = None,
) -> TracerProvider | None:
    """A tracer provider as the ``OTEL_*`` variables configure it, or None when tracing is off."""
    env = os.environ if environ is None else environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    names = [n.strip().lower() for n in env.get("OTEL_TRACES_EXPORTER", "").split(",")]
    names = [n for n in names if n]
    if not names and (
        env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    ):
        names = ["otlp"]
    if not names or "none" in names:
        return None
    exporters = [e for e in (_exporter(name, env) for name in names) if e is not None]
    if not exporters:
        return None

    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    named = "OTEL_SERVICE_NAME" in env or "service.name=" in env.get("OTEL_RESOURCE_ATTRIBUTES", "")
    resource = Resource.create({} if named else {"service.name": SERVICE_NAME})
    # The sampler comes from OTEL_TRACES_SAMPLER / OTEL_TRACES_SAMPLER_ARG.
    provider = TracerProvider(resource=resource)
    for exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    logger.info("tracing on: exporting spans with %s", ", ".join(names))
    return provider


def _exporter(name: str, env: Any) -> SpanExporter | None:
    """The exporter ``OTEL_TRACES_EXPORTER`` names, built with no arguments (it reads its env)."""
    entry_name = name
    if name == "otlp":
        protocol = (
            env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
            or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
            or "http/protobuf"
        )
        entry_name = "otlp_proto_grpc" if protocol.strip() == "grpc" else "otlp_proto_http"
    found = entry_points(group="opentelemetry_traces_exporter", name=entry_name)
    if not found:
        hint = (
            " (install the 'otlp' extra: pip install 'mnist-digits[otlp]')"
            if name == "otlp"
            else ""
        )
        logger.warning(
            "OTEL_TRACES_EXPORTER=%s: no exporter %r is installed%s; its spans are dropped",
            name,
            entry_name,
            hint,
        )
        return None
    exporter: SpanExporter = next(iter(found)).load()()
    return exporter


class TracingMiddleware:
    """One server span per HTTP request, child of the caller's ``traceparent`` when sent."""

    def __init__(self, app: ASGIApp, tracer_provider: TracerProvider) -> None:
        self.app = app
        self.tracer = tracer_provider.get_tracer(INSTRUMENTATION)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the application inside the request's span."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        carrier = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        method = scope.get("method", "")
        attributes: dict[str, Any] = {
            "http.request.method": method,
            "url.path": scope.get("path", ""),
            "url.scheme": scope.get("scheme", "http"),
        }
        rid = current_request_id()
        if rid is not None:
            attributes["http.request.header.x-request-id"] = (rid,)
        status = 500

        async def observed_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        with server_span(self.tracer, method, carrier, attributes, errors=True) as span:
            try:
                await self.app(scope, receive, observed_send)
            finally:
                route = getattr(scope.get("route"), "path", None)
                if isinstance(route, str):
                    span.update_name(f"{method} {route}")
                    span.set_attribute("http.route", route)
                span.set_attribute("http.response.status_code", status)
                if status >= 500:
                    span.set_status(StatusCode.ERROR)


@contextlib.contextmanager
def server_span(
    tracer: trace.Tracer,
    name: str,
    carrier: Mapping[str, str],
    attributes: Attributes = None,
    *,
    errors: bool = False,
) -> Iterator[trace.Span]:
    """The server span of one request or call, current while it runs, child of the caller's
    W3C ``traceparent`` in ``carrier`` (headers or metadata) when it sent one.

    :func:`child_span` and :func:`capture` work inside it. With ``errors``, an exception that
    leaves the block is recorded on the span and marks it as failed; without, the caller sets
    the span's status (a gRPC abort is an answer, not a failure of the server).
    """
    parent = propagate.extract(carrier)
    with tracer.start_as_current_span(
        name,
        context=parent,
        kind=SpanKind.SERVER,
        attributes=attributes,
        record_exception=errors,
        set_status_on_exception=errors,
    ) as span:
        token = _tracer.set(tracer)
        try:
            yield span
        finally:
            _tracer.reset(token)


def tracer_provider_of(app: Starlette) -> TracerProvider | None:
    """The tracer provider the app's :class:`TracingMiddleware` was added with; None when the
    app does not trace. Other doors of the app trace their calls with the same provider."""
    for middleware in app.user_middleware:
        if middleware.cls is TracingMiddleware:  # type: ignore[comparison-overlap]
            return cast("TracerProvider | None", middleware.kwargs.get("tracer_provider"))
    return None


def child_span(name: str, attributes: Attributes = None) -> AbstractContextManager[Any]:
    """A span for one stage of the current request's work; nothing at all when tracing is off."""
    tracer = _tracer.get()
    if tracer is None:
        return _NO_SPAN
    return tracer.start_as_current_span(name, attributes=attributes)


def capture() -> Captured | None:
    """The current request's tracer and context, to record work done on another thread."""
    tracer = _tracer.get()
    if tracer is None:
        return None
    return tracer, otel_context.get_current()


def record_model_call(
    captured: Iterable[Captured],
    start_ns: int,
    end_ns: int,
    attributes: dict[str, Any],
    error: BaseException | None = None,
) -> None:
    """Record one model call as a ``model.predict`` span in each request it served."""
    for tracer, parent in captured:
        span = tracer.start_span(
            "model.predict", context=parent, attributes=attributes, start_time=start_ns
        )
        if error is not None:
            span.record_exception(error)
            span.set_status(StatusCode.ERROR, type(error).__name__)
        span.end(end_time=end_ns)
