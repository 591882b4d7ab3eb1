"""Start the service under uvicorn with its connection limits: ``python -m app.serve``.

Every way the service is started (``make serve``, the image's CMD, compose) runs this module,
so the limits below hold wherever uvicorn faces clients, not only behind nginx. The values come
from the settings (``DIGITS_*``, :class:`app.settings.Settings`); only the address is given
on the command line (``--host``, ``--port``).

uvicorn bounds some things itself: idle keep-alive connections (``timeout_keep_alive``), requests
served at once (``limit_concurrency``: 503 above it) and how long SIGTERM waits for requests in
flight (``timeout_graceful_shutdown``). What it leaves open (a connection cap at accept, a header
timeout, a header size limit, a bounded drain) is closed by a subclass of uvicorn's private
httptools protocol, kept with its measured reason and its public fallback (uvicorn's h11 with a
head cap, taken when this uvicorn's private class does not fit) in :mod:`app.uvicorn_compat`.

**Workers.** ``WEB_CONCURRENCY`` (uvicorn's convention) sets how many worker processes serve;
without it, one. Each worker is a process of its own with its own TensorFlow, model and event
loop, started from the app's import string, so memory grows by a whole model per worker
(docs/deployment.md gives the measured figure): a default of one per core would make a large
host start tens of copies. More workers, or more replicas, are a choice made with the memory in
view. The limits above apply in each worker to that worker's connections
(``DIGITS_MAX_CONNECTIONS`` is per worker). The gRPC port (``DIGITS_GRPC_PORT``) can be bound by
one process only: with several workers the first to bind it serves gRPC and the others serve
HTTP alone (:mod:`app.protocols.v2_grpc`); the launcher checks the port is free before starting
them, so a port taken by another program still fails the start.

**Metrics of several workers.** A scrape is answered by whichever worker accepts it, so the
launcher gives the workers a fresh private directory (``PROMETHEUS_MULTIPROC_DIR``, removed at
exit) before they start, where each keeps its counts for the others to add up
(:mod:`app.telemetry`), and tells prometheus_client when a worker has ended.

**Start-up lines.** The model loads in each worker's lifespan, tens of seconds after the address
is bound, so the launcher first logs ``starting: ...`` and, once ``/health/ready`` answers 200
on its own address, one ``ready: serving model version N on http://host:port`` line. Listening
on an address other than loopback without ``DIGITS_API_KEY`` logs a warning that the API is open
to the network (containers bind ``0.0.0.0`` by design, so it is not refused).
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import http.client
import ipaddress
import json
import logging
import os
import resource
import shutil
import socket
import sys
import tempfile
import threading
from collections.abc import Sequence
from typing import Any, Final

import uvicorn
from prometheus_client.multiprocess import mark_process_dead
from uvicorn.config import STARTUP_FAILURE, Config
from uvicorn.supervisors import Multiprocess

from app.core.logging import configure_logging
from app.settings import Settings, get_settings
from app.telemetry import MULTIPROCESS_DIR_ENV
from app.uvicorn_compat import (
    BoundedHttpToolsProtocol,
    ConnectionLimits,
    fallback_warning,
    http_options,
    private_protocol_problem,
    protocol_class,
)

APP: Final = "app.main:create_app"
#: Descriptors the process needs besides client sockets: TensorFlow, the model's files, logs.
RESERVED_DESCRIPTORS: Final = 256
#: glibc's mallopt parameter number for the arena limit (M_ARENA_MAX in malloc.h).
_M_ARENA_MAX: Final = -8
ARENA_MAX: Final = 2
#: uvicorn's (and gunicorn's) name for the number of worker processes.
WORKERS_ENV: Final = "WEB_CONCURRENCY"
#: Worker processes without ``WEB_CONCURRENCY``: each holds a whole TensorFlow and model.
DEFAULT_WORKERS: Final = 1
#: prometheus_client's former, lower-case name for its multiprocess directory.
_LEGACY_MULTIPROCESS_DIR_ENV: Final = "prometheus_multiproc_dir"
READY_PATH: Final = "/health/ready"
#: How often the launcher asks its own address whether the service is ready, while it loads.
_READY_POLL_SECONDS: Final = 0.2
#: The longest pause between asks once the service answers "not ready" (no model yet): each
#: ask is an access-log line.
_READY_BACKOFF_MAX_SECONDS: Final = 10.0

logger = logging.getLogger("uvicorn.error")


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
        **http_options(ConnectionLimits.from_settings(settings)),
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


def worker_count(environ: dict[str, str] | os._Environ[str] | None = None) -> int:
    """``WEB_CONCURRENCY`` when set, else :data:`DEFAULT_WORKERS` (one).

    Raises:
        SystemExit: when ``WEB_CONCURRENCY`` is not a positive integer.
    """
    env = os.environ if environ is None else environ
    text = env.get(WORKERS_ENV, "").strip()
    if not text:
        return DEFAULT_WORKERS
    try:
        workers = int(text)
    except ValueError:
        workers = 0
    if workers < 1:
        raise SystemExit(
            f"{WORKERS_ENV}={text!r}: the number of worker processes must be a positive "
            f"integer (or unset for {DEFAULT_WORKERS})."
        )
    return workers


def is_loopback(host: str) -> bool:
    """Whether only this machine can reach ``host``: a loopback address or a name that
    resolves to loopback addresses only."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except OSError:
        return False
    return bool(addresses) and all(
        ipaddress.ip_address(str(address).partition("%")[0]).is_loopback for address in addresses
    )


def exposure_warning(settings: Settings, host: str) -> str | None:
    """What to tell an operator whose service listens beyond loopback without an API key.

    Not refused: a container binds ``0.0.0.0`` by design and is reached through its network.
    """
    if settings.api_key is not None:
        return None
    exposed = [f"HTTP on {host}"] if not is_loopback(host) else []
    if settings.grpc_port and not is_loopback(settings.grpc_host):
        exposed.append(f"gRPC on {settings.grpc_host}")
    if not exposed:
        return None
    return (
        f"THE API IS OPEN TO THE NETWORK: listening for {' and '.join(exposed)} without "
        "DIGITS_API_KEY, so anyone who can reach this address can use it. Set DIGITS_API_KEY "
        "to a long random secret (clients send it as the X-API-Key header; e.g. "
        "DIGITS_API_KEY=$(openssl rand -hex 32)), or listen on loopback only (--host 127.0.0.1; "
        "make serve without HOST) behind a proxy that checks clients."
    )


def address_url(host: str, port: int) -> str:
    """``http://host:port``, an IPv6 address in brackets."""
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def private_metrics_dir() -> str:
    """A fresh directory, readable by this user only, for the workers' shared metrics.

    Set in the environment before any worker starts; one inherited from the environment is
    replaced (its files, from another run, would be added to this one's counts).
    """
    path = tempfile.mkdtemp(prefix="mnist-digits-metrics-")
    os.environ.pop(_LEGACY_MULTIPROCESS_DIR_ENV, None)
    os.environ[MULTIPROCESS_DIR_ENV] = path
    return path


def bind_listener(host: str, port: int) -> socket.socket:
    """The socket the worker processes share, bound (they listen once they are ready).

    What uvicorn's ``Config.bind_socket`` does for a TCP address, without its "Uvicorn running
    on" line, which would claim readiness tens of seconds before any worker has its model.

    Raises:
        SystemExit: naming the address when it cannot be bound.
    """
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        logger.error(
            "cannot listen on %s (%s): is another process using the port?",
            address_url(host, port),
            exc.strerror,
        )
        sys.exit(STARTUP_FAILURE)
    sock.set_inheritable(True)
    return sock


class WorkerSupervisor(Multiprocess):
    """uvicorn's supervisor of worker processes, which also tells the shared metrics when a
    worker has ended (died and replaced, or retired by a restart), so that its in-progress
    requests stop counting; its counts stay, so totals never go down."""

    def __init__(self, config: Config, sockets: list[socket.socket], metrics_dir: str) -> None:
        super().__init__(config, sockets)
        self._metrics_dir = metrics_dir
        self._running: set[int] = set()

    def terminate_all(self) -> None:
        """Signal every worker to stop, then close this process's copy of the listening socket.

        uvicorn's supervisor keeps the shared socket open until its workers have exited, so
        connections arriving while they drain wait in the kernel's queue, are never accepted,
        and are reset after a balancer has sent its request on them (502s during a scale-in).
        Closed here, once the workers have closed theirs, new connections are refused at once
        and the balancer tries another replica.
        """
        super().terminate_all()
        for sock in self.sockets:
            sock.close()

    def keep_subprocess_alive(self) -> None:
        """uvicorn's check of every worker (a dead one is replaced), then the bookkeeping."""
        super().keep_subprocess_alive()
        self.forget_ended_workers()

    def forget_ended_workers(self) -> None:
        """Mark the workers that are no longer running as dead in the shared metrics."""
        running = {p.pid for p in self.processes if p.pid is not None and p.exitcode is None}
        for pid in self._running - running:
            mark_process_dead(pid, self._metrics_dir)  # type: ignore[no-untyped-call]
        self._running = running


class ReadyAnnouncer(threading.Thread):
    """Logs one ``ready:`` line once the service's own address answers ``/health/ready``
    with 200, the one test of readiness every orchestrator uses.

    The model loads in each worker's lifespan, after uvicorn has bound the address; asking
    the service itself is what makes the line true for one worker or several.
    """

    def __init__(self, host: str, port: int, workers: int) -> None:
        super().__init__(name="ready-announcer", daemon=True)
        self.url = address_url(host, port)
        # A wildcard address is reached on loopback; any other is asked as given.
        self._host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(host, host)
        self._port = port
        self._workers = workers
        self._stopping = threading.Event()
        #: The version announced, once ready.
        self.version: int | None = None

    def stop(self) -> None:
        """Stop asking (the server is stopping)."""
        self._stopping.set()

    def ask(self) -> tuple[int, Any] | None:
        """``/health/ready``'s status and JSON answer, or None while nothing answers."""
        connection = http.client.HTTPConnection(self._host, self._port, timeout=10)
        try:
            connection.request("GET", READY_PATH, headers={"Accept": "application/json"})
            response = connection.getresponse()
            body = response.read()
        except OSError:
            return None
        finally:
            connection.close()
        try:
            return response.status, json.loads(body)
        except ValueError:
            return response.status, None

    def run(self) -> None:
        """Ask until ready (then log the line) or stopped."""
        pause = _READY_POLL_SECONDS
        warned = False
        while not self._stopping.wait(pause):
            answer = self.ask()
            if answer is None:  # not listening yet: every worker is still loading
                continue
            status, body = answer
            if status == 200:
                version = body.get("model_version") if isinstance(body, dict) else None
                self.version = version if isinstance(version, int) else None
                logger.info(
                    "ready: serving model version %s on %s (%d worker process%s)",
                    "?" if self.version is None else self.version,
                    self.url,
                    self._workers,
                    "" if self._workers == 1 else "es",
                )
                return
            if status == 404:  # an app without the readiness route: nothing to announce
                return
            if not warned:
                logger.warning(
                    "not ready: %s%s answers %d (no model version served yet, see above); a "
                    "'ready:' line follows when it answers 200",
                    self.url,
                    READY_PATH,
                    status,
                )
                warned = True
            pause = min(2 * pause, _READY_BACKOFF_MAX_SECONDS)


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
        f"worker processes: {WORKERS_ENV}, default {DEFAULT_WORKERS}).",
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
    problem = private_protocol_problem()
    if problem is not None:
        logger.warning("%s", fallback_warning(problem))
    # The gRPC port's connections need descriptors too (DIGITS_GRPC_MAX_CONNECTIONS).
    grpc = settings.grpc_max_connections if settings.grpc_port else 0
    ensure_descriptors(settings.max_connections + grpc)
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
    warning = exposure_warning(settings, args.host)
    if warning is not None:
        logger.warning("%s", warning)
    if workers > 1 and settings.grpc_port:
        ensure_grpc_port_free(settings.grpc_host, settings.grpc_port)
    inherited = os.environ.get(MULTIPROCESS_DIR_ENV) or os.environ.get(_LEGACY_MULTIPROCESS_DIR_ENV)
    # One worker keeps its metrics in its own memory, unless prometheus_client was told
    # otherwise by the environment (it chose file-backed values when imported): then the
    # directory is replaced by a fresh one too.
    metrics_dir = private_metrics_dir() if workers > 1 or inherited else None
    announcer = ReadyAnnouncer(args.host, args.port, workers)
    try:
        if workers == 1:
            logger.info(
                "starting: loading the model, then listening on %s (a 'ready:' line says when "
                "it answers)",
                announcer.url,
            )
            announcer.start()
            server = uvicorn.Server(config)
            server.run()
            if not server.started:
                # What uvicorn.run does: a server that never started (port taken, app import
                # failed).
                sys.exit(STARTUP_FAILURE)
            return
        assert metrics_dir is not None
        listener = bind_listener(args.host, args.port)
        logger.info(
            "starting: %d worker processes loading the model for %s (a 'ready:' line says "
            "when it answers)",
            workers,
            announcer.url,
        )
        announcer.start()
        supervisor = WorkerSupervisor(config, [listener], metrics_dir)
        supervisor.run()
        if any(p.process.exitcode == STARTUP_FAILURE for p in supervisor.processes):
            sys.exit(STARTUP_FAILURE)
    finally:
        announcer.stop()
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
