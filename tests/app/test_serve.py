"""The launcher (``python -m app.serve``): uvicorn options from the settings, allocator capped.

What the limits do to real connections is tested against a running server in
tests/ops/test_connections.py; here, that the launcher hands uvicorn what the settings say.
"""

from __future__ import annotations

import asyncio
import os
import pickle
import subprocess
import sys
import textwrap

import pytest
from uvicorn.importer import import_from_string
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from app.core.limits import DRAIN_FACTOR
from app.serve import (
    ARENA_MAX,
    CoalescingTransport,
    ConnectionLimits,
    LauncherConfig,
    available_cores,
    uvicorn_options,
    worker_count,
)
from app.settings import Settings
from harness.servers import REPO


def test_uvicorn_options_follow_the_settings() -> None:
    settings = Settings(
        max_connections=7,
        keep_alive_seconds=3,
        header_timeout_seconds=4.5,
        max_header_bytes=9000,
        graceful_shutdown_seconds=11,
        max_upload_bytes=1000,
    )
    options = uvicorn_options(settings, "127.0.0.1", 1234)
    assert callable(import_from_string(options.pop("app")))
    protocol = options.pop("http")
    assert issubclass(protocol, HttpToolsProtocol), "the fast parser, as uvicorn[standard] picks"
    assert protocol.limits == ConnectionLimits(
        max_connections=7,
        header_timeout_seconds=4.5,
        max_header_bytes=9000,
        max_drain_bytes=DRAIN_FACTOR * 1000,
    )
    assert options == {
        "factory": True,
        "host": "127.0.0.1",
        "port": 1234,
        "timeout_keep_alive": 3,
        "limit_concurrency": 7,
        "timeout_graceful_shutdown": 11,
    }


def test_every_connection_setting_has_a_bounded_default() -> None:
    settings = Settings.model_construct()
    assert settings.graceful_shutdown_seconds > 0
    assert settings.keep_alive_seconds < settings.header_timeout_seconds
    assert settings.max_header_bytes <= 64 * 1024
    assert settings.max_connections <= 1024 - 256, "fits the common open-files limit of 1024"


# Eight threads allocating at once: glibc gives each its own arena unless capped.
_ARENAS = textwrap.dedent(
    """
    import ctypes, sys, threading
    if sys.argv[1] == "launcher":
        from app.serve import tame_allocator
        tame_allocator()
    barrier = threading.Barrier(8)
    def work():
        barrier.wait()
        blocks = [bytearray(200) for _ in range(20000)]
        del blocks
    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    ctypes.CDLL(None).malloc_stats()
    """
)


def _arenas(mode: str) -> int:
    environment = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    result = subprocess.run(
        [sys.executable, "-c", _ARENAS, mode],
        cwd=REPO,
        env=environment,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    # glibc's malloc_stats writes one "Arena N:" block per arena to stderr.
    return sum(line.startswith("Arena ") for line in result.stderr.splitlines())


@pytest.mark.skipif(
    not os.path.exists("/lib/x86_64-linux-gnu/libc.so.6")
    and not os.path.exists("/lib/aarch64-linux-gnu/libc.so.6"),
    reason="glibc only: other C libraries have no malloc arenas to cap",
)
def test_the_launcher_caps_malloc_arenas_when_the_environment_does_not() -> None:
    assert _arenas("plain") > ARENA_MAX, "without the cap each thread gets its own arena"
    assert _arenas("launcher") <= ARENA_MAX


def test_workers_follow_web_concurrency_else_the_available_cores() -> None:
    assert worker_count({"WEB_CONCURRENCY": "3"}) == 3
    assert worker_count({"WEB_CONCURRENCY": " 1 "}) == 1
    assert worker_count({}) == available_cores()
    assert worker_count({"WEB_CONCURRENCY": ""}) == available_cores()
    for bad in ("0", "-2", "two", "1.5"):
        with pytest.raises(SystemExit, match="positive integer"):
            worker_count({"WEB_CONCURRENCY": bad})


def test_available_cores_never_exceed_the_affinity() -> None:
    assert 1 <= available_cores() <= len(os.sched_getaffinity(0))


def test_the_limits_travel_to_worker_processes() -> None:
    """uvicorn pickles its Config for each spawned worker; the bounded protocol must survive."""
    settings = Settings(max_connections=9, header_timeout_seconds=2.5, max_upload_bytes=500)
    config = LauncherConfig(**uvicorn_options(settings, "127.0.0.1", 1234), workers=2)
    copy = pickle.loads(pickle.dumps(config))
    assert issubclass(copy.http, HttpToolsProtocol)
    assert copy.http.limits == ConnectionLimits.from_settings(settings)
    assert (copy.workers, copy.limit_concurrency) == (2, 9)


class _RecordingTransport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def close(self) -> None:
        self.closed = True


def test_a_response_head_and_its_body_leave_in_one_write() -> None:
    async def scenario() -> list[list[bytes]]:
        raw = _RecordingTransport()
        transport = CoalescingTransport(raw, asyncio.get_running_loop())  # type: ignore[arg-type]
        seen = []
        transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
        seen.append(list(raw.writes))  # the head waits for what follows
        transport.write(b"{}")
        seen.append(list(raw.writes))
        transport.write(b"HTTP/1.1 204 No Content\r\n\r\n")  # a head with nothing after it
        await asyncio.sleep(0)  # sent at the end of the loop step
        seen.append(list(raw.writes))
        transport.write(b"HTTP/1.1 408 Request Timeout\r\n\r\n")
        transport.close()  # what is held goes out before the connection closes
        assert raw.closed
        seen.append(list(raw.writes))
        return seen

    head = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n"
    assert asyncio.run(scenario()) == [
        [],
        [head + b"{}"],
        [head + b"{}", b"HTTP/1.1 204 No Content\r\n\r\n"],
        [
            head + b"{}",
            b"HTTP/1.1 204 No Content\r\n\r\n",
            b"HTTP/1.1 408 Request Timeout\r\n\r\n",
        ],
    ]
