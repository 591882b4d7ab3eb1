"""The gRPC server under the Open Inference Protocol: its connection limits on a real grpc.aio
server, its port among worker processes, and the methods it does not implement.

The limits are set small here (fractions of a second, a handful of connections) so each is seen
at work within a test; docs/limits.md has what the defaults keep under attack.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import grpc
import pytest
from tritonclient.grpc import service_pb2, service_pb2_grpc

from app.core.logging import configure_logging
from app.protocols import grpc_server, v2_grpc
from app.settings import Settings
from harness.attacks_protocols import idle_connections, open_count
from harness.servers import HOST, free_port
from tests.app.protocols.conftest import Doors

#: A bound on waiting for the server to act, far above the limits set here (not a speed check).
PATIENCE_SECONDS = 10.0
#: The protocol's methods this server answers.
SERVED = {
    "ServerLive",
    "ServerReady",
    "ServerMetadata",
    "ModelReady",
    "ModelMetadata",
    "ModelInfer",
}


def limits(tmp_path: Path, **values: Any) -> Settings:
    """Settings with these gRPC limits, on a free port."""
    return Settings(models_dir=tmp_path, grpc_host=HOST, grpc_port=free_port(), **values)


@asynccontextmanager
async def serving(
    settings: Settings, *handlers: grpc.GenericRpcHandler
) -> AsyncIterator[grpc.aio.Server]:
    """A grpc.aio server with the service's limits and the protocol's servicer (ServerLive needs
    no model), plus ``handlers``, listening on ``settings.grpc_port``."""
    server = grpc_server.new_server(settings)
    service = v2_grpc.InferenceService(None, None, settings, None, "test")  # type: ignore[arg-type]
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(service, server)
    if handlers:
        server.add_generic_rpc_handlers(handlers)
    server.add_insecure_port(grpc_server.address(HOST, settings.grpc_port))
    await server.start()
    try:
        yield server
    finally:
        await server.stop(0)


async def seconds_until(condition: Callable[[], bool]) -> float:
    """Seconds until ``condition()`` holds, checked off the event loop that serves the calls."""
    start = time.monotonic()
    while not await asyncio.to_thread(condition):
        assert time.monotonic() - start < PATIENCE_SECONDS, "the server never did it"
        await asyncio.sleep(0.05)
    return time.monotonic() - start


async def server_live(port: int) -> bool:
    async with grpc.aio.insecure_channel(f"{HOST}:{port}") as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        response = await stub.ServerLive(service_pb2.ServerLiveRequest(), timeout=PATIENCE_SECONDS)
        return bool(response.live)


async def served_soon(port: int) -> bool:
    """Whether a call is answered within the patience (a connection may need a retry)."""
    start = time.monotonic()
    while True:
        try:
            return await server_live(port)
        except grpc.aio.AioRpcError:
            assert time.monotonic() - start < PATIENCE_SECONDS, "never served again"
            await asyncio.sleep(0.05)


# --- the limits --------------------------------------------------------------------------------


def test_the_limits_are_grpc_core_options_from_the_settings(tmp_path: Path) -> None:
    settings = limits(
        tmp_path,
        grpc_max_connections=7,
        grpc_handshake_timeout_seconds=3,
        grpc_max_connection_idle_seconds=1.5,
        grpc_max_connection_age_seconds=60,
        grpc_max_connection_age_grace_seconds=0,
        grpc_max_concurrent_streams=5,
        grpc_keepalive_seconds=30,
    )
    options = dict(grpc_server.server_options(settings))
    assert options["grpc.max_allowed_incoming_connections"] == 7
    assert options["grpc.server_handshake_timeout_ms"] == 3000
    assert options["grpc.max_connection_idle_ms"] == 1500
    assert options["grpc.max_connection_age_ms"] == 60_000
    assert options["grpc.max_connection_age_grace_ms"] == 0
    assert options["grpc.max_concurrent_streams"] == 5
    assert options["grpc.keepalive_time_ms"] == 30_000
    assert options["grpc.so_reuseport"] == 0
    assert options["grpc.max_receive_message_length"] == settings.max_upload_bytes


def test_idle_connections_are_closed_after_the_idle_time(tmp_path: Path) -> None:
    """HTTP/2 sessions opened and left without a call are closed (they were kept forever)."""
    idle = 0.5
    settings = limits(tmp_path, grpc_max_connection_idle_seconds=idle)

    async def scenario() -> float:
        async with serving(settings):
            with idle_connections(HOST, settings.grpc_port, 3, http2=True) as held:
                await asyncio.sleep(idle / 5)
                assert await asyncio.to_thread(open_count, held) == 3, "closed before their time"
                closed_after = await seconds_until(lambda: open_count(held) == 0)
            assert await server_live(settings.grpc_port)  # a new connection is served
            return closed_after

    assert asyncio.run(scenario()) < PATIENCE_SECONDS


def test_a_connection_that_never_opens_a_session_is_closed(tmp_path: Path) -> None:
    """Raw TCP that sends nothing is closed after the handshake timeout (grpc's was 120 s)."""
    settings = limits(tmp_path, grpc_handshake_timeout_seconds=0.5)

    async def scenario() -> None:
        async with serving(settings):
            with idle_connections(HOST, settings.grpc_port, 3) as held:
                await seconds_until(lambda: open_count(held) == 0)

    asyncio.run(scenario())


def test_connections_over_the_cap_are_closed_as_they_are_accepted(tmp_path: Path) -> None:
    cap = 3
    settings = limits(tmp_path, grpc_max_connections=cap, grpc_handshake_timeout_seconds=30)

    async def scenario() -> None:
        async with serving(settings):
            with idle_connections(HOST, settings.grpc_port, 2 * cap, http2=True) as held:
                await seconds_until(lambda: open_count(held) == cap)
                await asyncio.sleep(0.3)
                assert await asyncio.to_thread(open_count, held) == cap  # the cap's are kept
                assert await asyncio.to_thread(open_count, held[:cap]) == cap  # the first ones
            # Their places are free again once they close.
            assert await served_soon(settings.grpc_port)

    asyncio.run(scenario())


def test_calls_over_the_server_wide_limit_are_resource_exhausted(tmp_path: Path) -> None:
    settings = limits(tmp_path, grpc_max_concurrent_rpcs=1)

    async def scenario() -> None:
        entered, release = asyncio.Event(), asyncio.Event()

        async def wait(request: bytes, context: Any) -> bytes:
            entered.set()
            await release.wait()
            return b"done"

        slow = grpc.method_handlers_generic_handler(
            "test.Slow", {"Wait": grpc.unary_unary_rpc_method_handler(wait)}
        )
        async with (
            serving(settings, slow),
            grpc.aio.insecure_channel(f"{HOST}:{settings.grpc_port}") as channel,
        ):
            call = channel.unary_unary("/test.Slow/Wait")
            first = asyncio.ensure_future(call(b"", timeout=PATIENCE_SECONDS))
            await asyncio.wait_for(entered.wait(), PATIENCE_SECONDS)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await call(b"", timeout=PATIENCE_SECONDS)
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            release.set()
            assert await first == b"done"

    asyncio.run(scenario())


# --- the port among worker processes -----------------------------------------------------------


def test_a_port_is_claimed_by_one_process_at_a_time() -> None:
    port = free_port()
    with grpc_server.claim(port) as first:
        with grpc_server.claim(port) as second:
            assert (first, second) == (True, False)
        with grpc_server.claim(port + 1) as other:
            assert other
    with grpc_server.claim(port) as again:
        assert again


def fake_app(settings: Settings) -> Any:
    """What :func:`v2_grpc.start` reads of an app (it binds the port before any call)."""
    state = SimpleNamespace(settings=settings, store=None, worker=None, telemetry=None)
    return SimpleNamespace(state=state, version="test", user_middleware=[])


@contextmanager
def listening(port: int) -> Iterator[socket.socket]:
    """Another process's server on ``port``, as far as the gRPC service can tell."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((HOST, port))
        sock.listen()
        yield sock


@pytest.fixture
def json_logs() -> Iterator[None]:
    configure_logging("INFO", "json")
    yield
    configure_logging("INFO", "text")


def test_a_second_worker_leaves_the_port_with_one_json_line(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
    json_logs: None,
) -> None:
    """The bug: grpc's core printed its own non-JSON "Address already in use" error."""
    monkeypatch.setenv("WEB_CONCURRENCY", "2")
    settings = limits(tmp_path)
    capfd.readouterr()
    with listening(settings.grpc_port):
        assert asyncio.run(v2_grpc.start(fake_app(settings))) is None
    err = capfd.readouterr().err
    lines = [json.loads(line) for line in err.splitlines()]  # every line is the service's JSON
    [line] = lines
    assert line["level"] == "INFO"
    address = f"{HOST}:{settings.grpc_port}"
    assert line["message"] == f"gRPC on {address} is served by another worker process"


def test_a_worker_leaves_a_port_another_worker_is_claiming(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("WEB_CONCURRENCY", "2")
    settings = limits(tmp_path)
    with grpc_server.claim(settings.grpc_port):
        assert asyncio.run(v2_grpc.start(fake_app(settings))) is None
    assert grpc_server.port_free(HOST, settings.grpc_port)  # it never bound it


def test_a_single_worker_fails_on_a_taken_port_without_grpcs_own_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("WEB_CONCURRENCY", "1")
    settings = limits(tmp_path)
    capfd.readouterr()
    with listening(settings.grpc_port), pytest.raises(RuntimeError, match="cannot listen on"):
        asyncio.run(v2_grpc.start(fake_app(settings)))
    assert "Address already in use" not in capfd.readouterr().err


def test_the_port_is_served_when_free(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WEB_CONCURRENCY", "2")
    settings = limits(tmp_path)

    async def scenario() -> None:
        server = await v2_grpc.start(fake_app(settings))
        assert server is not None
        try:
            assert not grpc_server.port_free(HOST, settings.grpc_port)
            assert await server_live(settings.grpc_port)
        finally:
            await v2_grpc.stop(server)

    asyncio.run(scenario())


# --- the methods this server does not implement ------------------------------------------------


def test_every_method_of_the_protocol_is_served_or_unimplemented() -> None:
    methods = {m.name for m in v2_grpc.SERVICE.methods}
    assert set(v2_grpc.IMPLEMENTED) == SERVED
    assert set(v2_grpc.UNIMPLEMENTED) == methods - SERVED
    assert "ModelStreamInfer" in v2_grpc.UNIMPLEMENTED


def call(doors: Doors, name: str) -> grpc.RpcError:
    """Call method ``name`` with an empty request of its type, without an API key."""
    method = v2_grpc.SERVICE.methods_by_name[name]
    request = getattr(service_pb2, method.input_type.name)()
    stub_method = getattr(doors.grpc, name)
    try:
        if method.client_streaming:
            for _ in stub_method(iter([request]), timeout=PATIENCE_SECONDS):
                pass
        else:
            stub_method(request, timeout=PATIENCE_SECONDS)
    except grpc.RpcError as error:
        return error
    raise AssertionError(f"{name} answered")


def test_unimplemented_methods_answer_unimplemented_quietly(
    doors: Doors, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """The bug: an ERROR with a 12-line traceback per call (and INTERNAL from ModelStreamInfer)."""
    capfd.readouterr()
    with caplog.at_level(logging.DEBUG):
        for name in v2_grpc.UNIMPLEMENTED:
            for _ in range(3):
                error = call(doors, name)
                assert error.code() == grpc.StatusCode.UNIMPLEMENTED, (name, error)
                assert f"{name} is not implemented" in (error.details() or "")
                assert "ModelInfer" in (error.details() or "")  # what is served instead
    err = capfd.readouterr().err
    assert "Traceback" not in err, err
    assert "NotImplementedError" not in err, err
    loud = [r for r in caplog.records if r.levelno > logging.DEBUG]
    assert not loud, [r.getMessage() for r in loud]
