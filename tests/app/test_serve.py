"""The launcher (``python -m app.serve``): uvicorn options from the settings, allocator capped,
one worker by default, a warning before listening beyond loopback without a key, the workers'
shared metrics directory, and the ``ready:`` line.

What the limits do to real connections is tested against a running server in
tests/ops/test_connections.py; here, that the launcher hands uvicorn what the settings say.
"""

from __future__ import annotations

import asyncio
import http.server
import json
import logging
import os
import pickle
import socket
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest
import uvicorn
from pydantic import SecretStr
from uvicorn.config import STARTUP_FAILURE, Config
from uvicorn.importer import import_from_string
from uvicorn.protocols.http import httptools_impl
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from app.core.limits import DRAIN_FACTOR
from app.serve import (
    ARENA_MAX,
    DEFAULT_WORKERS,
    LauncherConfig,
    ReadyAnnouncer,
    WorkerSupervisor,
    bind_listener,
    exposure_warning,
    is_loopback,
    private_metrics_dir,
    uvicorn_options,
    worker_count,
)
from app.settings import Settings
from app.uvicorn_compat import (
    PRIVATE_MODULE,
    CoalescingTransport,
    ConnectionLimits,
    private_protocol_problem,
    protocol_class,
)
from harness.servers import (
    HOST,
    READY_TIMEOUT_SECONDS,
    REPO,
    RunningServer,
    free_port,
    server_environment,
    wait_until_ready,
)
from tests.app.api.test_predict import digit_png
from tests.app.conftest import FIXTURE_MODEL_ENV, ModelsDir

UPGRADE = (
    f"uvicorn {uvicorn.__version__} no longer fits the launcher's bounded httptools protocol "
    "(app/uvicorn_compat.py): the launcher would fall back to h11 without the connection cap, "
    "header timeout and bounded drain. Adapt the adapter to this uvicorn."
)


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


def test_workers_follow_web_concurrency_else_one() -> None:
    assert worker_count({"WEB_CONCURRENCY": "3"}) == 3
    assert worker_count({"WEB_CONCURRENCY": " 1 "}) == 1
    # Each worker holds a whole TensorFlow and model: the default does not grow with the host.
    assert worker_count({}) == DEFAULT_WORKERS == 1
    assert worker_count({"WEB_CONCURRENCY": ""}) == 1
    for bad in ("0", "-2", "two", "1.5"):
        with pytest.raises(SystemExit, match="positive integer"):
            worker_count({"WEB_CONCURRENCY": bad})


# --- listening beyond loopback without a key -----------------------------------------------


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.53", "::1", "localhost"])
def test_loopback_needs_no_key(host: str) -> None:
    assert is_loopback(host)
    assert exposure_warning(Settings(), host) is None


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.10", "2001:db8::1", ""])
def test_any_other_address_without_a_key_is_announced_as_open(host: str) -> None:
    warning = exposure_warning(Settings(), host)
    assert warning is not None
    assert "OPEN TO THE NETWORK" in warning
    assert f"HTTP on {host}" in warning
    assert "DIGITS_API_KEY" in warning
    assert "X-API-Key" in warning
    assert "--host 127.0.0.1" in warning
    assert exposure_warning(Settings(api_key=SecretStr("k" * 32)), host) is None


def test_a_grpc_port_beyond_loopback_is_announced_too() -> None:
    settings = Settings(grpc_port=8001, grpc_host="0.0.0.0")
    warning = exposure_warning(settings, "127.0.0.1")
    assert warning is not None
    assert "gRPC on 0.0.0.0" in warning
    assert "HTTP on" not in warning
    assert exposure_warning(Settings(grpc_port=0, grpc_host="0.0.0.0"), "127.0.0.1") is None


def test_the_launcher_warns_before_listening_on_every_interface(tmp_path: Path) -> None:
    """The real launcher, on 0.0.0.0 without a key: the warning comes before any socket is
    bound (a taken gRPC port stops this start right after it, so nothing is exposed)."""
    with socket.socket() as holder:
        holder.bind((HOST, 0))
        holder.listen()
        busy = str(holder.getsockname()[1])
        settings = {"WEB_CONCURRENCY": "2", "DIGITS_GRPC_PORT": busy, "DIGITS_GRPC_HOST": HOST}
        results = {}
        for name, extra in {"open": {}, "keyed": {"DIGITS_API_KEY": "s3cret-" * 6}}.items():
            results[name] = subprocess.run(
                [sys.executable, "-m", "app.serve", "--host", "0.0.0.0", "--port", "0"],
                cwd=REPO,
                env=server_environment(tmp_path, {**settings, **extra}),
                capture_output=True,
                text=True,
                timeout=120,
            )
    for result in results.values():
        assert result.returncode != 0
        assert f"cannot listen on {HOST}:{busy}" in result.stderr, result.stderr
    warning = [
        line for line in results["open"].stderr.splitlines() if "OPEN TO THE NETWORK" in line
    ]
    assert len(warning) == 1, results["open"].stderr
    assert "WARNING" in warning[0]
    assert "HTTP on 0.0.0.0" in warning[0]
    assert "OPEN TO THE NETWORK" not in results["keyed"].stderr


# --- the workers' shared metrics and the start-up lines ------------------------------------


def test_the_metrics_directory_is_fresh_and_private(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", "/somewhere/stale")
    monkeypatch.setenv("prometheus_multiproc_dir", "/somewhere/stale")
    path = Path(private_metrics_dir())
    try:
        assert os.environ["PROMETHEUS_MULTIPROC_DIR"] == str(path)
        assert "prometheus_multiproc_dir" not in os.environ
        assert list(path.iterdir()) == []
        assert path.stat().st_mode & 0o777 == 0o700
    finally:
        path.rmdir()


@dataclass
class _Worker:
    pid: int | None
    exitcode: int | None = None


def test_an_ended_worker_stops_counting_as_in_progress_but_keeps_its_counts(
    tmp_path: Path,
) -> None:
    supervisor = WorkerSupervisor.__new__(WorkerSupervisor)  # no signal handlers in a test
    supervisor._metrics_dir = str(tmp_path)
    supervisor._running = set()
    workers = [_Worker(101), _Worker(102)]
    supervisor.processes = workers  # type: ignore[assignment]
    for pid in (101, 102):
        for kind in ("counter", "histogram", "gauge_livesum", "gauge_max"):
            (tmp_path / f"{kind}_{pid}.db").write_bytes(b"")
    supervisor.forget_ended_workers()
    assert len(list(tmp_path.iterdir())) == 8
    workers[1].exitcode = -9
    supervisor.forget_ended_workers()
    assert sorted(p.name for p in tmp_path.iterdir() if "102" in p.name) == [
        "counter_102.db",
        "gauge_max_102.db",
        "histogram_102.db",
    ]
    # Replaced by a new worker: nothing more is removed.
    workers[1] = _Worker(103)
    supervisor.forget_ended_workers()
    assert len(list(tmp_path.iterdir())) == 7


def test_a_taken_address_fails_the_start_with_its_name(caplog: pytest.LogCaptureFixture) -> None:
    logging.getLogger("uvicorn.error").addHandler(caplog.handler)
    try:
        with socket.socket() as holder:
            holder.bind((HOST, 0))
            holder.listen()
            port = holder.getsockname()[1]
            with pytest.raises(SystemExit) as stopped:
                bind_listener(HOST, port)
    finally:
        logging.getLogger("uvicorn.error").removeHandler(caplog.handler)
    assert stopped.value.code == STARTUP_FAILURE
    assert f"cannot listen on http://{HOST}:{port}" in caplog.text


class _ReadinessStub(http.server.BaseHTTPRequestHandler):
    """/health/ready: 503 for the first answers, then 200 with a version."""

    not_ready_answers = 2
    answered: ClassVar[list[int]] = []

    def do_GET(self) -> None:
        ready = len(self.answered) >= self.not_ready_answers
        status = 200 if ready else 503
        self.answered.append(status)
        body = json.dumps({"status": "ready", "model_version": 7} if ready else {}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Lines(logging.Handler):
    """The messages a logger writes, once each whatever else listens to it."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def test_ready_is_announced_once_the_address_answers_ready(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _ReadinessStub.answered = []
    server = http.server.ThreadingHTTPServer((HOST, 0), _ReadinessStub)
    port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    launcher_log = logging.getLogger("uvicorn.error")
    monkeypatch.setattr(launcher_log, "level", logging.INFO)
    written = _Lines()
    launcher_log.addHandler(written)
    try:
        # Bound to every interface: asked on loopback, announced as bound.
        announcer = ReadyAnnouncer("0.0.0.0", port, workers=2)
        announcer.start()
        announcer.join(timeout=30)
        assert not announcer.is_alive()
    finally:
        launcher_log.removeHandler(written)
        server.shutdown()
        server.server_close()
    assert _ReadinessStub.answered == [503, 503, 200]
    assert announcer.version == 7
    ready = [line for line in written.lines if line.startswith("ready:")]
    assert ready == [
        f"ready: serving model version 7 on http://0.0.0.0:{port} (2 worker processes)"
    ]
    # One warning while it answered "not ready", not one per ask, and before the ready line.
    warned = [i for i, line in enumerate(written.lines) if line.startswith("not ready:")]
    assert len(warned) == 1, written.lines
    assert warned[0] < written.lines.index(ready[0])


def test_nothing_is_announced_while_nothing_listens() -> None:
    announcer = ReadyAnnouncer(HOST, free_port(), workers=1)
    announcer.start()
    time.sleep(1)
    announcer.stop()
    announcer.join(timeout=15)
    assert not announcer.is_alive()
    assert announcer.version is None


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


# --- uvicorn's private httptools protocol (app/uvicorn_compat.py) ------------------------------


def test_the_installed_uvicorn_takes_the_bounded_httptools_protocol() -> None:
    problem = private_protocol_problem()
    assert problem is None, f"{UPGRADE} ({problem})"
    protocol = uvicorn_options(Settings(), "127.0.0.1", 1234)["http"]
    assert isinstance(protocol, type), UPGRADE
    assert issubclass(protocol, HttpToolsProtocol), UPGRADE


class _Transport:
    """Enough of an asyncio transport for uvicorn's protocol, recording what it is sent."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    @property
    def written(self) -> bytes:
        return b"".join(self.writes)

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 50000)}.get(
            name, default
        )

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0


async def _hello(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"5")]}
    )
    await send({"type": "http.response.body", "body": b"hello"})


def _refusal(transport: _Transport, status: int, code: str) -> None:
    assert transport.closed
    head, body = transport.written.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 %d " % status), head
    assert json.loads(body)["error"]["code"] == code


def test_the_bounded_protocol_still_drives_uvicorns_class() -> None:
    """In process, the four paths through uvicorn's internals: served, 503, 431, 408."""

    async def scenario() -> None:
        limits = ConnectionLimits(
            max_connections=2,
            header_timeout_seconds=0.05,
            max_header_bytes=1000,
            max_drain_bytes=10_000,
        )
        protocol = protocol_class(limits)
        config = Config(app=_hello, lifespan="off", log_config=None, access_log=False)
        state = ServerState()
        opened = []
        for _ in range(3):
            connection = protocol(config, state, {})
            transport = _Transport()
            connection.connection_made(transport)  # type: ignore[arg-type]
            opened.append((connection, transport))
        (served, ok), (big, too_big), (_, third) = opened
        _refusal(third, 503, "too_many_connections")
        served.data_received(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        for _ in range(100):
            if ok.written.endswith(b"hello"):
                break
            await asyncio.sleep(0)
        assert ok.written.startswith(b"HTTP/1.1 200 "), ok.written
        assert ok.written.endswith(b"hello")
        assert len(ok.writes) == 1, "the head and the body in one write"
        big.data_received(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: ")
        big.data_received(b"a" * 2000)
        _refusal(too_big, 431, "request_header_too_large")
        for connection, _ in opened[1:]:
            connection.connection_lost(None)
        # A head left half-sent is answered 408 when the header timeout fires.
        slow = protocol(config, state, {})
        late = _Transport()
        slow.connection_made(late)  # type: ignore[arg-type]
        slow.data_received(b"GET / HTTP/1.1\r\nHost: x\r\n")
        await asyncio.sleep(0.2)
        _refusal(late, 408, "request_timeout")
        for connection in (served, slow):
            connection.connection_lost(None)

    asyncio.run(scenario())


def _break_module(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, PRIVATE_MODULE, None)


def _break_class(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(httptools_impl, "HttpToolsProtocol")


def _break_method(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(HttpToolsProtocol, "on_response_complete")


def _break_status_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(httptools_impl, "STATUS_LINE", {})


@pytest.mark.parametrize(
    "break_uvicorn", [_break_module, _break_class, _break_method, _break_status_lines]
)
def test_without_the_private_protocol_the_launcher_falls_back_to_h11_with_a_head_cap(
    monkeypatch: pytest.MonkeyPatch, break_uvicorn: Any
) -> None:
    break_uvicorn(monkeypatch)
    assert private_protocol_problem() is not None
    settings = Settings(max_connections=7, keep_alive_seconds=3, max_header_bytes=9000)
    options = uvicorn_options(settings, "127.0.0.1", 1234)
    assert options["http"] == "h11"
    assert options["h11_max_incomplete_event_size"] == 9000
    assert (options["timeout_keep_alive"], options["limit_concurrency"]) == (3, 7)
    config = LauncherConfig(**options, workers=2)
    assert pickle.loads(pickle.dumps(config)).http == "h11"


#: The launcher in a Python where uvicorn's httptools module cannot be imported (as without
#: httptools installed): the fallback from the first import on.
_WITHOUT_HTTPTOOLS = (
    f"import sys; sys.modules[{PRIVATE_MODULE!r}] = None; "
    "from app.serve import main; main(sys.argv[1:])"
)


@pytest.mark.slow
def test_the_service_answers_through_the_fallback(models: ModelsDir, tmp_path: Path) -> None:
    models.add(1, digit=1)
    port = free_port()
    log_path = tmp_path / "server.log"
    environment = server_environment(
        models.path, {**FIXTURE_MODEL_ENV, "DIGITS_MAX_HEADER_BYTES": "8192"}
    )
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-c", _WITHOUT_HTTPTOOLS, "--host", HOST, "--port", str(port)],
            cwd=REPO,
            env=environment,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    server = RunningServer(process, process.pid, port, log_path)
    try:
        wait_until_ready(f"{server.url}/health/ready", process, READY_TIMEOUT_SECONDS, log_path)
        answer = httpx.post(
            f"{server.url}/predict",
            files={"file": ("d.png", digit_png(), "image/png")},
            timeout=30,
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["digit"] == 1
        # h11 still caps a head that keeps growing.
        with socket.create_connection((HOST, port), timeout=30) as sock:
            sock.sendall(b"GET /health/live HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000)
            reply = b""
            while chunk := sock.recv(65536):
                reply += chunk
        assert reply.startswith(b"HTTP/1.1 400 "), reply[:100]
        assert "public h11 protocol" in server.log()
    finally:
        server.stop()
