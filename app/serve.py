"""Start the service under uvicorn with its connection limits: ``python -m app.serve``.

Every way the service is started (``make serve``, the image's CMD, compose) runs this module,
so the limits below hold wherever uvicorn faces clients, not only behind nginx. The values come
from the settings (``DIGITS_*``, :class:`app.settings.Settings`); only the address is given
on the command line (``--host``, ``--port``).

uvicorn bounds some things itself: idle keep-alive connections (``timeout_keep_alive``), requests
served at once (``limit_concurrency``: 503 above it) and how long SIGTERM waits for requests in
flight (``timeout_graceful_shutdown``). What it leaves open is closed by
:class:`BoundedHttpToolsProtocol`, its httptools protocol (the fast parser, the one
``uvicorn[standard]`` picks) with four additions:

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

Refusals use the service's error shape (``{"error": {"code", "message"}}``) and the security
headers of :mod:`app.core.security_headers`.

**Workers.** ``WEB_CONCURRENCY`` (uvicorn's convention) sets how many worker processes serve;
without it, one per core the process may use (its CPU affinity, capped by a cgroup CPU quota
such as ``docker run --cpus`` or a Kubernetes CPU limit). Each worker is a process of its own
with its own model and event loop, started from the app's import string; the limits above apply
in each worker to that worker's connections (``DIGITS_MAX_CONNECTIONS`` is per worker). The
gRPC port (``DIGITS_GRPC_PORT``) can be bound by one process only: with several workers the
first to bind it serves gRPC and the others serve HTTP alone (:mod:`app.protocols.v2_grpc`); the
launcher checks the port is free before starting them, so a port taken by another program
still fails the start.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import ctypes.util
import json
import logging
import math
import os
import resource
import socket
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Final, cast

import uvicorn
from uvicorn.config import STARTUP_FAILURE, Config
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState
from uvicorn.supervisors import Multiprocess

from app.core.limits import DRAIN_FACTOR
from app.core.logging import configure_logging
from app.core.security_headers import DEFAULT_HEADERS
from app.settings import Settings, get_settings

APP: Final = "app.main:create_app"
#: Descriptors the process needs besides client sockets: TensorFlow, the model's files, logs.
RESERVED_DESCRIPTORS: Final = 256
#: glibc's mallopt parameter number for the arena limit (M_ARENA_MAX in malloc.h).
_M_ARENA_MAX: Final = -8
ARENA_MAX: Final = 2
#: Refusals are logged as a summary at most this often, so a flood cannot flood the log.
REPORT_EVERY_SECONDS: Final = 10.0
#: uvicorn's (and gunicorn's) name for the number of worker processes.
WORKERS_ENV: Final = "WEB_CONCURRENCY"
_CGROUP_V2_CPU_MAX: Final = "/sys/fs/cgroup/cpu.max"
_CGROUP_V1_QUOTA: Final = "/sys/fs/cgroup/cpu/cpu.cfs_quota_us"
_CGROUP_V1_PERIOD: Final = "/sys/fs/cgroup/cpu/cpu.cfs_period_us"

logger = logging.getLogger("uvicorn.error")


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


class LauncherConfig(Config):
    """uvicorn's Config that can travel to a worker process with its bounded protocol.

    uvicorn starts workers with multiprocessing's *spawn* and pickles the Config for each; the
    protocol class made by :func:`protocol_class` exists only in this process, so the limits
    travel instead and each worker makes its own class from them.
    """

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        http = state.get("http")
        if isinstance(http, type) and issubclass(http, BoundedHttpToolsProtocol):
            state["http"] = http.limits
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        if isinstance(state.get("http"), ConnectionLimits):
            state["http"] = protocol_class(state["http"])
        self.__dict__.update(state)


def uvicorn_options(settings: Settings, host: str, port: int, app: str = APP) -> dict[str, Any]:
    """Keyword arguments of :func:`uvicorn.run` for the service with these settings."""
    return {
        "app": app,
        "factory": True,
        "host": host,
        "port": port,
        "http": protocol_class(ConnectionLimits.from_settings(settings)),
        "timeout_keep_alive": settings.keep_alive_seconds,
        "limit_concurrency": settings.max_connections,
        "timeout_graceful_shutdown": settings.graceful_shutdown_seconds,
    }


def tame_allocator() -> None:
    """Cap glibc's malloc arenas when ``MALLOC_ARENA_MAX`` was not set in the environment.

    Every thread that allocates under contention gets its own arena, and freed memory stays in
    it: decoding uploads on the thread pool grew the heap by gigabytes that were never given
    back. The start commands set ``MALLOC_ARENA_MAX``; this covers any other way of starting
    (glibc only, and effective only before threads start, which is why it runs first).
    """
    if "MALLOC_ARENA_MAX" in os.environ:
        return
    # Worker processes are new interpreters: glibc reads the variable when they start.
    os.environ["MALLOC_ARENA_MAX"] = str(ARENA_MAX)
    path = ctypes.util.find_library("c")
    if path is None:
        return
    try:
        mallopt = ctypes.CDLL(path).mallopt
    except (OSError, AttributeError):  # not glibc
        return
    mallopt(_M_ARENA_MAX, ARENA_MAX)


def available_cores() -> int:
    """Cores this process may use: its CPU affinity, capped by a cgroup CPU quota if any."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    quota = _cgroup_cpu_quota()
    if quota is not None:
        cores = min(cores or 1, max(1, math.ceil(quota)))
    return max(1, cores or 1)


def _cgroup_cpu_quota() -> float | None:
    """The cgroup's CPU quota in cores (``docker --cpus``, a Kubernetes CPU limit), or None."""
    try:
        with open(_CGROUP_V2_CPU_MAX) as file:
            quota, period = file.read().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        with open(_CGROUP_V1_QUOTA) as quota_file, open(_CGROUP_V1_PERIOD) as period_file:
            quota_us, period_us = int(quota_file.read()), int(period_file.read())
        return None if quota_us <= 0 or period_us <= 0 else quota_us / period_us
    except (OSError, ValueError):
        return None


def worker_count(environ: dict[str, str] | os._Environ[str] | None = None) -> int:
    """``WEB_CONCURRENCY`` when set, else :func:`available_cores`.

    Raises:
        SystemExit: when ``WEB_CONCURRENCY`` is not a positive integer.
    """
    env = os.environ if environ is None else environ
    text = env.get(WORKERS_ENV, "").strip()
    if not text:
        return available_cores()
    try:
        workers = int(text)
    except ValueError:
        workers = 0
    if workers < 1:
        raise SystemExit(
            f"{WORKERS_ENV}={text!r}: the number of worker processes must be a positive "
            "integer (or unset for one per available core)."
        )
    return workers


def ensure_grpc_port_free(host: str, port: int) -> None:
    """Fail the start when the gRPC port is taken, before workers share the binding out.

    With one worker the gRPC server's own bind fails the start; with several, a worker that
    cannot bind leaves gRPC to the sibling that did, so a port held by another program must be
    caught here.

    Raises:
        SystemExit: naming the address when it cannot be bound.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise SystemExit(
                f"the gRPC service cannot listen on {host}:{port} ({exc.strerror}): is another "
                "process using the port? Set DIGITS_GRPC_PORT (and DIGITS_GRPC_HOST) to a free "
                "address."
            ) from None


def ensure_descriptors(max_connections: int) -> None:
    """Raise the open-files limit to fit ``max_connections`` sockets, or warn that it cannot."""
    needed = max_connections + RESERVED_DESCRIPTORS
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        raised = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
        soft = raised
    if soft != resource.RLIM_INFINITY and soft < needed:
        logger.warning(
            "DIGITS_MAX_CONNECTIONS=%d needs about %d open files but the limit is %d: "
            "lower DIGITS_MAX_CONNECTIONS or raise the limit (ulimit -n).",
            max_connections,
            needed,
            soft,
        )


def main(argv: Sequence[str] | None = None, app: str = APP) -> None:
    """Parse ``--host``/``--port``, apply the process-wide limits and run uvicorn's workers.

    ``app`` is the factory's import string (the benchmarks serve a variant of the app).
    """
    parser = argparse.ArgumentParser(
        prog="python -m app.serve",
        description="Serve the digit reader with its connection limits (settings: DIGITS_*; "
        f"worker processes: {WORKERS_ENV}, default one per available core).",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on")
    args = parser.parse_args(argv)
    tame_allocator()
    settings = get_settings()
    workers = worker_count()
    # The workers' gRPC service reads it to know it may share the work (app.protocols.v2_grpc).
    os.environ[WORKERS_ENV] = str(workers)
    config = LauncherConfig(
        **uvicorn_options(settings, args.host, args.port, app), workers=workers
    )  # sets up logging
    # The service's format from the first line on (the app factory sets it again, harmlessly).
    configure_logging(settings.log_level, settings.log_format)
    ensure_descriptors(settings.max_connections)
    logger.info(
        "Connection limits: %d connections, keep-alive %d s, request head within %g s and "
        "%d bytes, graceful shutdown %d s; %d worker process%s",
        settings.max_connections,
        settings.keep_alive_seconds,
        settings.header_timeout_seconds,
        settings.max_header_bytes,
        settings.graceful_shutdown_seconds,
        workers,
        "" if workers == 1 else "es (limits per worker)",
    )
    if workers == 1:
        server = uvicorn.Server(config)
        server.run()
        if not server.started:
            # What uvicorn.run does: a server that never started (port taken, app import failed).
            sys.exit(STARTUP_FAILURE)
        return
    if settings.grpc_port:
        ensure_grpc_port_free(settings.grpc_host, settings.grpc_port)
    supervisor = Multiprocess(config, sockets=[config.bind_socket()])
    supervisor.run()
    if any(p.process.exitcode == STARTUP_FAILURE for p in supervisor.processes):
        sys.exit(STARTUP_FAILURE)


if __name__ == "__main__":
    main()
