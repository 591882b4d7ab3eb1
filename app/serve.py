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
import ctypes
import ctypes.util
import logging
import math
import os
import resource
import socket
import sys
from collections.abc import Sequence
from typing import Any, Final

import uvicorn
from uvicorn.config import STARTUP_FAILURE, Config
from uvicorn.supervisors import Multiprocess

from app.core.logging import configure_logging
from app.settings import Settings, get_settings
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
_CGROUP_V2_CPU_MAX: Final = "/sys/fs/cgroup/cpu.max"
_CGROUP_V1_QUOTA: Final = "/sys/fs/cgroup/cpu/cpu.cfs_quota_us"
_CGROUP_V1_PERIOD: Final = "/sys/fs/cgroup/cpu/cpu.cfs_period_us"

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
    problem = private_protocol_problem()
    if problem is not None:
        logger.warning("%s", fallback_warning(problem))
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
