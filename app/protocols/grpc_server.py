"""The gRPC server the Open Inference Protocol runs on: its limits, its port, a span per call.

**Limits.** grpc's core bounds what uvicorn's launcher bounds on the HTTP port, through channel
arguments (:func:`server_options`, from the ``DIGITS_GRPC_*`` settings):

- ``grpc.max_allowed_incoming_connections``: a connection over the cap is closed as it is
  accepted (grpc.aio has no ``max_connections`` argument; this core argument is the one cap on
  accepted sockets, counted per listener);
- ``grpc.server_handshake_timeout_ms``: a connection that does not open its HTTP/2 session
  (preface and settings) in time is closed, as the HTTP port's header timeout closes a silent
  one;
- ``grpc.max_connection_idle_ms``: a connection with no call in progress is sent GOAWAY and
  closed, as an idle keep-alive connection is;
- ``grpc.max_connection_age_ms`` and ``..._grace_ms``: however busy, a connection is asked to go
  away after a while, and closed once its calls had their grace, so long-lived channels spread
  over workers and replicas again;
- ``grpc.max_concurrent_streams``: calls in progress on one connection (the client queues more);
  ``maximum_concurrent_rpcs`` of :func:`grpc.aio.server`: calls in progress on the server, over
  which a call is answered RESOURCE_EXHAUSTED at once;
- ``grpc.keepalive_time_ms`` / ``..._timeout_ms``: a connection whose call is in progress is
  pinged when quiet, and closed when the peer does not answer (it vanished);
- ``grpc.max_receive_message_length``: the HTTP body limit, checked before a message is parsed.

**The port.** One process binds the port (``grpc.so_reuseport`` off: a second one sharing it
would silently take half the calls). With several worker processes (``WEB_CONCURRENCY``) the
first to claim the port serves gRPC; the others leave it without trying to bind it, so grpc's
core never prints its "Address already in use" error (a line of its own on stderr, outside the
service's log format): a worker claims the port through an abstract Unix socket named after it
(Linux; scoped like the port itself, to the network namespace, and released when the process
dies) while it checks that the port is free and binds it (:func:`claim`).

**Spans.** With tracing on (:mod:`app.core.tracing`), :class:`TracingInterceptor` opens a server
span per call, child of the caller's ``traceparent`` metadata when sent, named and described as
OpenTelemetry's RPC conventions say (``rpc.system``, ``rpc.service``, ``rpc.method``,
``rpc.grpc.status_code``); the stage and model spans of the call are its children, and the log
lines written meanwhile carry its ids.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import inspect
import logging
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any, Final

import grpc
from grpc.aio import AbortError
from opentelemetry.trace import StatusCode

from app.core.request_id import accepted_request_id
from app.core.tracing import INSTRUMENTATION, server_span
from app.settings import Settings

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span

logger = logging.getLogger(__name__)

#: How long a ping may go unanswered before the connection is closed.
KEEPALIVE_TIMEOUT_MS: Final = 20_000
#: The prefix of the abstract Unix socket through which a process claims a gRPC port.
_CLAIM_PREFIX: Final = "\0mnist-digits-grpc-port-"
#: Status codes that mean the server failed (OpenTelemetry's RPC conventions, server side).
_SERVER_ERRORS: Final = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)
_REQUEST_ID_METADATA: Final = "x-request-id"


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


def server_options(settings: Settings) -> list[tuple[str, int]]:
    """The channel arguments of the service's gRPC server: its limits (module docstring)."""
    return [
        # The same body limit as HTTP: a message is refused before it is parsed.
        ("grpc.max_receive_message_length", settings.max_upload_bytes),
        # gRPC shares a port with any other process by default (SO_REUSEPORT): a second
        # instance would silently take half the calls. A port in use must fail the start.
        ("grpc.so_reuseport", 0),
        ("grpc.max_allowed_incoming_connections", settings.grpc_max_connections),
        ("grpc.server_handshake_timeout_ms", _ms(settings.grpc_handshake_timeout_seconds)),
        ("grpc.max_connection_idle_ms", _ms(settings.grpc_max_connection_idle_seconds)),
        ("grpc.max_connection_age_ms", _ms(settings.grpc_max_connection_age_seconds)),
        (
            "grpc.max_connection_age_grace_ms",
            round(settings.grpc_max_connection_age_grace_seconds * 1000),
        ),
        ("grpc.max_concurrent_streams", settings.grpc_max_concurrent_streams),
        ("grpc.keepalive_time_ms", _ms(settings.grpc_keepalive_seconds)),
        ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
    ]


def new_server(
    settings: Settings, tracer_provider: TracerProvider | None = None
) -> grpc.aio.Server:
    """A gRPC server with the service's limits, tracing its calls when a provider is given."""
    interceptors = [] if tracer_provider is None else [TracingInterceptor(tracer_provider)]
    return grpc.aio.server(
        interceptors=interceptors,
        options=server_options(settings),
        maximum_concurrent_rpcs=settings.grpc_max_concurrent_rpcs,
    )


# --- the port ----------------------------------------------------------------------------------


def address(host: str, port: int) -> str:
    """``host:port`` as grpc reads it (an IPv6 address in brackets)."""
    if ":" in host and not host.startswith("["):
        return f"[{host}]:{port}"
    return f"{host}:{port}"


@contextlib.contextmanager
def claim(port: int) -> Iterator[bool]:
    """Hold the claim on ``port`` among this machine's processes while the block runs.

    Yields False when another process holds it (it is binding the port right now), True
    otherwise, also where claims are not supported (then :func:`port_free` alone decides). A
    process that binds the port inside the block keeps it: afterwards the port itself is the
    claim, and :func:`port_free` says so to the next worker.
    """
    if not sys.platform.startswith("linux"):
        yield True
        return
    held = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        held.bind(f"{_CLAIM_PREFIX}{port}")
    except OSError as exc:
        held.close()
        if exc.errno != errno.EADDRINUSE:
            raise
        yield False
        return
    try:
        yield True
    finally:
        held.close()


def port_free(host: str, port: int) -> bool:
    """Whether a listening socket could be bound on ``host``'s addresses at ``port`` now.

    Binds and closes a socket per address, with ``SO_REUSEADDR`` as grpc does (a port whose old
    connections linger in TIME_WAIT is free; one with a listener is not). A host that does not
    resolve is left to grpc's own bind, which says what is wrong.
    """
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError:
        return True
    for family, kind, proto, _, where in found:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(where)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    return False
    return True


# --- a span per call ---------------------------------------------------------------------------

Behavior = Callable[..., Any]


class TracingInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """One server span per gRPC call (see the module docstring)."""

    def __init__(self, tracer_provider: TracerProvider) -> None:
        self._tracer = tracer_provider.get_tracer(INSTRUMENTATION)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        """The method's handler, its behaviour run inside the call's span."""
        handler = await continuation(handler_call_details)
        if handler is None:  # no such method: grpc answers UNIMPLEMENTED itself
            return None
        method: str = handler_call_details.method
        kinds = {
            "unary_unary": grpc.unary_unary_rpc_method_handler,
            "unary_stream": grpc.unary_stream_rpc_method_handler,
            "stream_unary": grpc.stream_unary_rpc_method_handler,
            "stream_stream": grpc.stream_stream_rpc_method_handler,
        }
        for kind, make in kinds.items():
            behavior = getattr(handler, kind)
            if behavior is not None:
                return make(
                    self._traced(behavior, method),
                    request_deserializer=handler.request_deserializer,
                    response_serializer=handler.response_serializer,
                )
        return handler

    def _traced(self, behavior: Behavior, method: str) -> Behavior:
        """``behavior`` (a coroutine function or an async generator function) in a span.

        A plain function (grpc.aio runs it on a thread of its own) is left as it is: the
        service's methods are all coroutines.
        """
        if not (inspect.iscoroutinefunction(behavior) or inspect.isasyncgenfunction(behavior)):
            return behavior
        service, _, name = method.lstrip("/").rpartition("/")
        attributes = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": name}
        span_name = f"{service}/{name}"
        tracer = self._tracer

        def opened(context: grpc.aio.ServicerContext) -> contextlib.AbstractContextManager[Span]:
            metadata = {
                key: value
                for key, value in (context.invocation_metadata() or ())
                if isinstance(value, str)
            }
            call_attributes: dict[str, Any] = dict(attributes)
            if _REQUEST_ID_METADATA in metadata:
                sent = metadata[_REQUEST_ID_METADATA].encode("latin-1", "replace")
                rid = accepted_request_id(sent)
                call_attributes[f"rpc.grpc.request.metadata.{_REQUEST_ID_METADATA}"] = (rid,)
            return server_span(tracer, span_name, metadata, call_attributes)

        if inspect.isasyncgenfunction(behavior):

            async def streamed(
                request: Any, context: grpc.aio.ServicerContext
            ) -> AsyncIterator[Any]:
                with opened(context) as span, _status_recorded(span, context):
                    async for response in behavior(request, context):
                        yield response

            return streamed

        async def called(request: Any, context: grpc.aio.ServicerContext) -> Any:
            with opened(context) as span, _status_recorded(span, context):
                return await behavior(request, context)

        return called


@contextlib.contextmanager
def _status_recorded(span: Span, context: grpc.aio.ServicerContext) -> Iterator[None]:
    """Record the call's status code on its span: OK, the code it aborted with, CANCELLED when
    the client left, UNKNOWN (an error of the server, with its exception) for anything else."""
    code = grpc.StatusCode.OK
    try:
        yield
        code = context.code() or grpc.StatusCode.OK
    except AbortError:
        code = context.code() or grpc.StatusCode.UNKNOWN
        raise
    except BaseException as exc:
        if isinstance(exc, asyncio.CancelledError):
            code = grpc.StatusCode.CANCELLED
        else:
            code = context.code() or grpc.StatusCode.UNKNOWN
            if code == grpc.StatusCode.OK:
                code = grpc.StatusCode.UNKNOWN
            span.record_exception(exc)
        raise
    finally:
        span.set_attribute("rpc.grpc.status_code", code.value[0])
        if code in _SERVER_ERRORS:
            span.set_status(StatusCode.ERROR, code.name)
