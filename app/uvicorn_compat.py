"""uvicorn's private httptools protocol, in one place: the launcher's connection limits.

**What it buys.** uvicorn bounds idle keep-alive connections, requests at once and the graceful
shutdown, but not the rest. :class:`BoundedHttpToolsProtocol` subclasses uvicorn's private
``uvicorn.protocols.http.httptools_impl.HttpToolsProtocol`` (the fast parser, the one
``uvicorn[standard]`` picks) and writes its refusals with that module's ``STATUS_LINE``, adding:

* **Connections.** One connection more than ``DIGITS_MAX_CONNECTIONS`` is answered 503 and
  closed as soon as it is accepted, so open sockets, and descriptors, stay bounded however many
  clients connect and sit idle.
* **Header timeout.** A client must complete its request head within
  ``DIGITS_HEADER_TIMEOUT_SECONDS`` of connecting (or of the first byte of its next request):
  otherwise 408 and closed. uvicorn has no such timer: a client sending one byte a second kept
  its connection forever.
* **Header size.** A request head larger than ``DIGITS_MAX_HEADER_BYTES`` is answered 431 and
  closed. httptools has no limit of its own; a head still arriving is checked on every read, so
  at most one socket read more than the limit is ever buffered.
* **Draining.** A request body still arriving after its answer was sent (a 413, a 401) is read
  and discarded so the client can read the answer, but only up to ``DRAIN_FACTOR`` times
  ``DIGITS_MAX_UPLOAD_BYTES`` and for ``DIGITS_HEADER_TIMEOUT_SECONDS``; then the connection is
  closed. uvicorn alone read an endless chunked body for as long as it came.
* **One write per answer** (:class:`CoalescingTransport`): uvicorn writes a response's head and
  body in two ``send()`` calls; the protocol's transport joins them.

Refusals use the service's error shape (``{"error": {"code", "message"}}``) and the security
headers of :mod:`app.core.security_headers`.

**Measured** (docs/benchmarks.md "Connections", commits d4ea8cb and c7297df: the launcher against
plain ``uvicorn --http httptools``, default settings, on the project's shared 2-core AMD EPYC,
24 GiB, load average about 7 from other jobs): a 1 MiB header line was read whole and answered
200, now 431 after 128 KiB, within 1 ms; an endless chunked ``/predict`` body was read on after
the 413 (37 GB in 20 s), now cut after 26 MB; 1,000 idle connections held 1,001 more
descriptors after 30 s, now 256 more and none left after 30 s; a head sent a byte every half
second stayed open after 30 s, now 408 after 10.0 s. Cost: none measurable (interleaved
sequential medians, ``GET /health/live`` 0.804 → 0.794 ms, ``POST /predict`` 2.366 → 2.349 ms).
uvicorn's public alternative with a head cap, h11 with ``h11_max_incomplete_event_size`` (400
after 128 KiB of a 1 MiB header), was slower: ``GET /health/live`` median 1.069 ms against
0.984 ms with httptools. The one-write transport was measured only together with two other
changes (commit 4848f91, CHANGELOG.md "Serving": c1 854 → 1,002 req/s, CPU per request
1,125 → 977 µs); its own share was not measured.

**Public-API fallback.** :func:`http_options` answers uvicorn's public h11 protocol,
``{"http": "h11", "h11_max_incomplete_event_size": max_header_bytes}``, which keeps the head
size cap (as a 400) but has no connection cap at accept, no header timeout, no bounded drain
and no joined write, and is slower (above); the launcher logs a warning naming what is lost
(:func:`fallback_warning`). uvicorn's own ``limit_concurrency`` and ``timeout_keep_alive`` still
apply. It is taken when :func:`private_protocol_problem` finds one: httptools or the module
cannot be imported, ``HttpToolsProtocol`` or ``STATUS_LINE`` is missing, the class lacks a
method the subclass extends or takes other constructor arguments, or ``STATUS_LINE`` lacks the
status lines of the refusals.

``tests/app/test_serve.py`` asserts that the installed uvicorn takes the private path and drives
the bounded protocol in process (so an upgrade that would silently fall back, or break it, fails
there), and serves the app through the fallback.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import json
import logging
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Final, cast

from uvicorn.config import Config
from uvicorn.server import ServerState

from app.core.limits import DRAIN_FACTOR
from app.core.security_headers import DEFAULT_HEADERS
from app.settings import Settings

#: The private module, and what the bounded protocol takes from it.
PRIVATE_MODULE: Final = "uvicorn.protocols.http.httptools_impl"
#: HttpToolsProtocol's methods that BoundedHttpToolsProtocol extends or calls.
_EXTENDED: Final = (
    "connection_made",
    "connection_lost",
    "data_received",
    "on_message_begin",
    "on_headers_complete",
    "on_body",
    "on_message_complete",
    "on_response_complete",
    "timeout_keep_alive_handler",
)
_INIT_PARAMETERS: Final = ("config", "server_state", "app_state", "_loop")
_REFUSAL_STATUSES: Final = (408, 431, 503)
#: Refusals are logged as a summary at most this often, so a flood cannot flood the log.
REPORT_EVERY_SECONDS: Final = 10.0

logger = logging.getLogger("uvicorn.error")


def _import_private() -> tuple[type[Any], Mapping[int, bytes]]:
    """uvicorn's httptools protocol and status lines; placeholders when they cannot be imported.

    With placeholders the bounded class below still exists (so this module imports) but is
    never served: :func:`private_protocol_problem` says why and :func:`http_options` falls back.
    """
    try:
        from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
    except ImportError:
        return asyncio.Protocol, {}
    return HttpToolsProtocol, STATUS_LINE


if TYPE_CHECKING:
    from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
else:
    HttpToolsProtocol, STATUS_LINE = _import_private()


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """What :class:`BoundedHttpToolsProtocol` enforces on each connection."""

    max_connections: int
    header_timeout_seconds: float
    max_header_bytes: int
    max_drain_bytes: int

    @classmethod
    def from_settings(cls, settings: Settings) -> ConnectionLimits:
        """The limits the settings ask for."""
        return cls(
            max_connections=settings.max_connections,
            header_timeout_seconds=settings.header_timeout_seconds,
            max_header_bytes=settings.max_header_bytes,
            max_drain_bytes=DRAIN_FACTOR * settings.max_upload_bytes,
        )


class _RefusalReport:
    """Counts connections refused or cut, and logs the counts at most every few seconds."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.last = 0.0

    def add(self, reason: str) -> None:
        self.counts[reason] += 1
        now = time.monotonic()
        if now - self.last >= REPORT_EVERY_SECONDS:
            summary = ", ".join(f"{count} {name}" for name, count in sorted(self.counts.items()))
            logger.warning("Connections refused or closed by the connection limits: %s", summary)
            self.counts.clear()
            self.last = now


_report = _RefusalReport()

_REFUSALS: Final = {
    408: (
        "request_timeout",
        "The request head (request line and headers) did not arrive within {timeout:g} s. "
        "Send the whole head at once.",
    ),
    431: (
        "request_header_too_large",
        "The request head (request line and headers) is larger than the limit of "
        "{max_bytes:,} bytes. Send fewer or shorter headers.",
    ),
    503: (
        "too_many_connections",
        "The service has too many open connections. Try again shortly, and reuse one "
        "connection for several requests.",
    ),
}


class CoalescingTransport:
    """The connection's transport, sending a response head together with the body after it.

    uvicorn writes a response's head and its body in two calls, so each answer costs two
    ``send`` system calls and two TCP segments, each waking the client. Here the head is held
    until the next write (the body, normally in the same event-loop step) and both go out in
    one; a head with no body following in that step is sent at the end of it. Order is kept:
    anything held is always written before what comes after it.
    """

    __slots__ = ("_held", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None

    def write(self, data: bytes) -> None:
        """Write ``data``; a response head waits for what follows it."""
        held = self._held
        if held is not None:
            self._held = None
            self._transport.write(held + data)
        elif data.startswith(b"HTTP/1.1 "):
            self._held = data
            self._loop.call_soon(self.flush)
        else:
            self._transport.write(data)

    def flush(self) -> None:
        """Send a held head now."""
        held = self._held
        if held is not None:
            self._held = None
            self._transport.write(held)

    def close(self) -> None:
        """Send what is held, then close."""
        self.flush()
        self._transport.close()

    def is_closing(self) -> bool:
        """Whether the transport is closing or closed."""
        return self._transport.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """The transport's extra information (peer and socket addresses, SSL)."""
        return self._transport.get_extra_info(name, default)

    def pause_reading(self) -> None:
        """Stop reading from the socket (flow control)."""
        self._transport.pause_reading()

    def resume_reading(self) -> None:
        """Read from the socket again."""
        self._transport.resume_reading()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        """Hand the connection to another protocol (an upgrade)."""
        self.flush()
        self._transport.set_protocol(protocol)

    def get_write_buffer_size(self) -> int:
        """Bytes waiting to be sent, including a held head."""
        held = len(self._held) if self._held is not None else 0
        return self._transport.get_write_buffer_size() + held


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a connection cap, header timeout and size, bounded drain.

    ``limits`` is set on a subclass made by :func:`protocol_class`; uvicorn creates one
    instance per connection.
    """

    limits: ClassVar[ConnectionLimits]

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._head_timer: asyncio.TimerHandle | None = None
        self._drain_timer: asyncio.TimerHandle | None = None
        self._in_head = False
        self._head_bytes = 0
        self._message_complete = True
        self._drained = 0

    # --- connection ---------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Accept the connection, or answer 503 and close it when too many are open."""
        super().connection_made(cast(asyncio.Transport, CoalescingTransport(transport, self.loop)))
        if len(self.connections) > self.limits.max_connections:
            self._refuse(503)
            return
        # Also bounds a connection that never sends a byte.
        self._head_timer = self.loop.call_later(
            self.limits.header_timeout_seconds, self._head_timed_out
        )

    def connection_lost(self, exc: Exception | None) -> None:
        """Stop this connection's timers, then let uvicorn clean up."""
        self._cancel_head_timer()
        self._cancel_drain_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        """Parse the data; refuse a head that keeps growing past the limit."""
        # Bytes count towards the head only when the whole read arrived while it was incomplete:
        # the read in which a request begins may end the previous body, so it is checked once
        # the head is complete (on_headers_complete).
        counted = self._in_head
        super().data_received(data)
        if not self._in_head or self.transport.is_closing():
            return
        if counted:
            self._head_bytes += len(data)
            if self._head_bytes > self.limits.max_header_bytes:
                self._refuse(431)
                return
        # Armed only for a head that spans reads: most arrive whole, and cost no timer.
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(
                self.limits.header_timeout_seconds, self._head_timed_out
            )

    # --- parser callbacks ---------------------------------------------------------------------

    def on_message_begin(self) -> None:
        """A request starts: its head must be complete within the header timeout."""
        if self.transport.is_closing():
            return
        super().on_message_begin()
        self._in_head = True
        self._head_bytes = 0
        self._message_complete = False
        self._drained = 0

    def on_headers_complete(self) -> None:
        """Check the head's exact size, then hand the request to uvicorn."""
        if self.transport.is_closing():
            return
        self._in_head = False
        self._cancel_head_timer()
        size = len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)
        if size > self.limits.max_header_bytes:
            self._refuse(431)
            return
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        """Pass the body on; once the answer is sent, discard it up to the drain limit."""
        if self.transport.is_closing():
            return
        cycle = self.cycle
        if cycle is not None and cycle.response_complete:
            self._drained += len(body)
            if self._drained > self.limits.max_drain_bytes:
                self._cut("body drained too long")
            return
        super().on_body(body)

    def on_message_complete(self) -> None:
        """The request is read; if it was answered already, the connection is idle again."""
        if self.transport.is_closing():
            return
        self._message_complete = True
        self._cancel_drain_timer()
        answered = self.cycle is not None and self.cycle.response_complete
        super().on_message_complete()
        # uvicorn armed its keep-alive timer when the answer was sent and cancelled it when the
        # rest of the body arrived; without this the now idle connection would have no timer.
        if answered and not self.pipeline and self.timeout_keep_alive_task is None:
            self.timeout_keep_alive_task = self.loop.call_later(
                self.timeout_keep_alive, self.timeout_keep_alive_handler
            )

    def on_response_complete(self) -> None:
        """After an answer sent before its request was read to the end, bound the draining."""
        super().on_response_complete()
        if not self._message_complete and not self.transport.is_closing():
            self._cancel_drain_timer()
            self._drain_timer = self.loop.call_later(
                self.limits.header_timeout_seconds, self._cut, "body drained too long"
            )

    # --- timers and refusals ------------------------------------------------------------------

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        if self._in_head:
            self._refuse(408)
        else:
            self._cut("idle before a request")

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _cancel_drain_timer(self) -> None:
        if self._drain_timer is not None:
            self._drain_timer.cancel()
            self._drain_timer = None

    def _cut(self, reason: str) -> None:
        _report.add(reason)
        self.transport.close()

    def _refuse(self, status: int) -> None:
        """Answer ``status`` in the service's error shape and close the connection."""
        code, template = _REFUSALS[status]
        message = template.format(
            timeout=self.limits.header_timeout_seconds, max_bytes=self.limits.max_header_bytes
        )
        body = json.dumps({"error": {"code": code, "message": message}}).encode()
        head = [STATUS_LINE[status]]
        headers = [
            *self.server_state.default_headers,
            *DEFAULT_HEADERS,
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        if status == 503:
            headers.append((b"retry-after", b"1"))
        head.extend(name + b": " + value + b"\r\n" for name, value in headers)
        self.transport.write(b"".join([*head, b"\r\n", body]))
        self._cut(code)


def protocol_class(limits: ConnectionLimits) -> type[BoundedHttpToolsProtocol]:
    """A :class:`BoundedHttpToolsProtocol` that enforces ``limits`` (uvicorn's ``http``)."""
    return type("BoundedHttpToolsProtocol", (BoundedHttpToolsProtocol,), {"limits": limits})


def private_protocol_problem() -> str | None:
    """Why uvicorn's private httptools protocol cannot carry the limits here; None if it can."""
    try:
        module = importlib.import_module(PRIVATE_MODULE)
    except ImportError as exc:
        return f"{PRIVATE_MODULE} cannot be imported ({exc})"
    base = getattr(module, "HttpToolsProtocol", None)
    if not isinstance(base, type):
        return f"{PRIVATE_MODULE} has no HttpToolsProtocol class"
    if not issubclass(BoundedHttpToolsProtocol, base):
        return f"{PRIVATE_MODULE}.HttpToolsProtocol is not the class the limits extend"
    missing = [name for name in _EXTENDED if not callable(getattr(base, name, None))]
    if missing:
        return f"HttpToolsProtocol has no {', '.join(missing)}"
    parameters = tuple(inspect.signature(base).parameters)
    if parameters != _INIT_PARAMETERS:
        return f"HttpToolsProtocol is made with {parameters}, not {_INIT_PARAMETERS}"
    lines = getattr(module, "STATUS_LINE", None)
    if not isinstance(lines, Mapping) or not all(
        isinstance(lines.get(status), bytes)
        and lines[status].startswith(b"HTTP/1.1 %d " % status)
        and lines[status].endswith(b"\r\n")
        for status in _REFUSAL_STATUSES
    ):
        return f"{PRIVATE_MODULE}.STATUS_LINE has no status lines for {_REFUSAL_STATUSES}"
    return None


def http_options(limits: ConnectionLimits) -> dict[str, Any]:
    """uvicorn's options for the HTTP protocol: the bounded one, else the public fallback."""
    if private_protocol_problem() is None:
        return {"http": protocol_class(limits)}
    return {"http": "h11", "h11_max_incomplete_event_size": limits.max_header_bytes}


def fallback_warning(problem: str) -> str:
    """The launcher's warning when :func:`http_options` falls back, naming what is lost."""
    return (
        f"uvicorn's private httptools protocol cannot carry the connection limits ({problem}): "
        "serving with uvicorn's public h11 protocol instead. The request head is still capped "
        "(DIGITS_MAX_HEADER_BYTES, answered 400), but there is no connection cap at accept, no "
        "header timeout and no bounded drain, and h11 is slower. Adapt app/uvicorn_compat.py "
        "to this uvicorn."
    )
