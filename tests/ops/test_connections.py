"""Connection limits of the real server, started as production starts it (``python -m app.serve``).

The limits are scaled down through the same ``DIGITS_*`` settings an operator would use (a
keep-alive of 1 s, a header timeout of 2 s, 20 connections, a 10 kB upload limit) so that every
case ends in seconds. Each client is a raw socket: what is measured is what the server does with
idle, half-sent, oversized and endless traffic, which an HTTP library would not send. Time bounds
are generous ceilings (a busy 2-core machine), never speed claims; byte and descriptor bounds are
what the limits promise.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import yaml

from harness.servers import HOST, REPO, RunningServer
from tests.ops.conftest import ServedModel, assert_error_shape, install_version
from tests.ops.test_shutdown import HalfSentRequest, _in_progress, _multipart

pytestmark = pytest.mark.slow

KEY = "connections-test-key"
KEEP_ALIVE = 1
HEADER_TIMEOUT = 2.0
MAX_CONNECTIONS = 20
MAX_UPLOAD = 10_000
MAX_HEADER = 32 * 1024
# Whom the compose stack trusts with X-Forwarded-For (the api service's setting).
COMPOSE_TRUST = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]["api"][
    "environment"
]["FORWARDED_ALLOW_IPS"]
LIMITS = {
    "FORWARDED_ALLOW_IPS": COMPOSE_TRUST,
    "DIGITS_KEEP_ALIVE_SECONDS": str(KEEP_ALIVE),
    "DIGITS_HEADER_TIMEOUT_SECONDS": str(HEADER_TIMEOUT),
    "DIGITS_MAX_CONNECTIONS": str(MAX_CONNECTIONS),
    "DIGITS_MAX_UPLOAD_BYTES": str(MAX_UPLOAD),
    "DIGITS_MAX_HEADER_BYTES": str(MAX_HEADER),
    "DIGITS_API_KEY": KEY,
}
SLACK = 8.0  # added to every timeout: a bound on waiting, generous for a busy machine
SECURITY_HEADERS = (
    "x-content-type-options",
    "referrer-policy",
    "x-frame-options",
    "content-security-policy",
)


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, served_model: ServedModel
) -> Iterator[RunningServer]:
    """One server with scaled-down limits, shared by the tests that do not stop it."""
    root = tmp_path_factory.mktemp("connections")
    models = root / "models"
    install_version(models, served_model.version_dir, 1)
    running = RunningServer.start(models, root / "server.log", env=LIMITS)
    try:
        yield running
    finally:
        running.stop()


# --- a raw client that reads while it writes -------------------------------------------------


@dataclass
class Exchange:
    """What a raw client sent, what it read back, and how the connection ended."""

    sent: int = 0
    received: bytes = b""
    closed_after: float | None = None
    send_error: str | None = None
    started: float = field(default_factory=time.monotonic)

    @property
    def status(self) -> int | None:
        """The status code of the first response, if one arrived."""
        if not self.received.startswith(b"HTTP/1.1 "):
            return None
        return int(self.received[9:12])

    def headers(self) -> dict[str, str]:
        """The first response's headers, lower-case names."""
        head = self.received.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")[1:]
        return {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in head)}

    def body(self) -> bytes:
        """The first response's body (the answers here are small and not chunked)."""
        return self.received.split(b"\r\n\r\n", 1)[1]


def exchange(port: int, parts: Iterable[bytes], *, pause: float = 0.0) -> Exchange:
    """Send ``parts`` (``pause`` seconds apart) while reading; return once the server closes.

    Reading in its own thread matters: a server that answers early and closes may reset the
    connection, and an answer already read cannot be lost to that reset.
    """
    result = Exchange()
    sock = socket.create_connection((HOST, port), timeout=HEADER_TIMEOUT + SLACK)

    def read() -> None:
        try:
            while chunk := sock.recv(65536):
                result.received += chunk
        except OSError:
            pass
        result.closed_after = time.monotonic() - result.started

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        for part in parts:
            if result.closed_after is not None:
                break
            sock.sendall(part)
            result.sent += len(part)
            if pause:
                time.sleep(pause)
    except OSError as error:  # the server closed while we were sending: what is tested
        result.send_error = type(error).__name__
    reader.join(timeout=HEADER_TIMEOUT + SLACK)
    sock.close()
    assert not reader.is_alive(), f"the server never closed the connection ({result.sent} sent)"
    return result


def request_head(path: str = "/health/live", extra: str = "") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\n{extra}\r\n".encode()


# --- idle and half-sent connections ----------------------------------------------------------


def test_idle_keep_alive_connection_is_closed_after_the_keep_alive_timeout(
    server: RunningServer,
) -> None:
    result = exchange(server.port, [request_head()])
    assert result.status == 200
    assert result.closed_after is not None
    assert result.closed_after < KEEP_ALIVE + SLACK


def test_a_connection_that_sends_nothing_is_closed_after_the_header_timeout(
    server: RunningServer,
) -> None:
    result = exchange(server.port, [])
    assert result.received == b"", "nothing asked, nothing answered"
    assert result.closed_after is not None
    assert HEADER_TIMEOUT / 2 < result.closed_after < HEADER_TIMEOUT + SLACK


def test_a_half_sent_head_is_answered_408_and_closed_even_while_bytes_trickle_in(
    server: RunningServer,
) -> None:
    # Slowloris: the request line, then one header byte at a time, each well within any
    # idle timeout; only a deadline on the whole head ends it.
    trickle = [b"GET /health/live HTTP/1.1\r\nHost: x\r\n"] + [b"X"] * 200
    result = exchange(server.port, trickle, pause=0.1)
    assert result.status == 408
    assert_error_shape(json.loads(result.body()), "request_timeout")
    assert result.closed_after is not None
    assert result.closed_after < HEADER_TIMEOUT + SLACK
    assert result.sent < len(b"".join(trickle)), "the client was cut off before it finished"


def test_a_half_sent_next_request_on_a_kept_alive_connection_is_answered_408(
    server: RunningServer,
) -> None:
    # Its first byte stops the keep-alive timer; the header timeout must take over.
    parts = [request_head(), b"GET /health/live HTTP/1.1\r\nHost: x\r\n"]
    result = exchange(server.port, parts, pause=0.3)
    assert result.status == 200
    answers = result.received.split(b"HTTP/1.1 ")[1:]
    assert [answer[:3] for answer in answers] == [b"200", b"408"]
    assert result.closed_after is not None
    assert result.closed_after < HEADER_TIMEOUT + SLACK


# --- header size ------------------------------------------------------------------------------


def test_a_1_mib_header_is_refused_431_without_reading_it_all(server: RunningServer) -> None:
    block = b"a" * 65536
    parts = [b"GET /health/live HTTP/1.1\r\nHost: x\r\nX-Big: ", *[block] * 16, b"\r\n\r\n"]
    result = exchange(server.port, parts)
    assert result.status == 431
    assert_error_shape(json.loads(result.body()), "request_header_too_large")
    assert result.closed_after is not None
    assert result.closed_after < SLACK
    for name in SECURITY_HEADERS:
        assert name in result.headers(), name
    assert httpx.get(f"{server.url}/health/live", timeout=10).status_code == 200


def test_a_complete_head_over_the_limit_is_refused_and_one_under_it_is_served(
    server: RunningServer,
) -> None:
    # Both arrive in a single read, so only the size check on the complete head can tell them
    # apart.
    over = exchange(server.port, [request_head(extra=f"X-Big: {'a' * (MAX_HEADER + 100)}\r\n")])
    assert over.status == 431
    under = exchange(server.port, [request_head(extra=f"X-Big: {'a' * (MAX_HEADER // 2)}\r\n")])
    assert under.status == 200


# --- bodies after the answer -----------------------------------------------------------------


def _chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


def test_an_endless_chunked_body_is_cut_off_after_the_413(server: RunningServer) -> None:
    head = (
        f"POST /predict HTTP/1.1\r\nHost: {HOST}\r\nX-API-Key: {KEY}\r\n"
        "Content-Type: multipart/form-data; boundary=b\r\nTransfer-Encoding: chunked\r\n\r\n"
    ).encode()
    block = _chunk(b"a" * 65536)
    budget = 64 * 1024 * 1024  # far more than the server may accept; the client stops here

    blocks = budget // len(block)

    def endless() -> Iterator[bytes]:
        yield head
        for _ in range(blocks):
            yield block

    result = exchange(server.port, endless())
    assert result.status == 413
    assert_error_shape(json.loads(result.body()), "payload_too_large")
    # The server closed while we were sending: either a send failed, or the reader saw the close
    # first and the sender stopped (which one wins is a race between two threads).
    everything = len(head) + blocks * len(block)
    assert result.send_error is not None or result.sent < everything, "the server read everything"
    # What was sent is what the server read (at most 4 × the upload limit after the 413) plus
    # what the kernel buffers on both sides of a loopback connection: well under the budget.
    assert result.sent < budget / 2, result.sent
    assert result.closed_after is not None
    assert result.closed_after < HEADER_TIMEOUT + SLACK


# --- descriptors ------------------------------------------------------------------------------


def _open_descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_idle_connections_cannot_exhaust_descriptors(server: RunningServer) -> None:
    before = _open_descriptors(server.pid)
    extra = MAX_CONNECTIONS * 2
    sockets = [
        socket.create_connection((HOST, server.port), timeout=HEADER_TIMEOUT + SLACK)
        for _ in range(MAX_CONNECTIONS + extra)
    ]
    try:
        # Every connection over the limit is answered 503 at once and closed; the ones
        # admitted sit idle until the header timeout closes them without an answer.
        answers = [sock.recv(4096) for sock in sockets[MAX_CONNECTIONS:]]
        held = _open_descriptors(server.pid) - before
        answers += [sock.recv(4096) for sock in sockets[:MAX_CONNECTIONS]]
    finally:
        for sock in sockets:
            sock.close()
    refused = [a for a in answers if a.startswith(b"HTTP/1.1 503")]
    assert all(b'"too_many_connections"' in answer for answer in refused)
    silent = [a for a in answers if a == b""]
    assert len(refused) + len(silent) == len(sockets), [a[:40] for a in answers]
    # Connections left by earlier tests may still count for a moment: a little slack.
    assert len(refused) >= extra - 2
    assert len(silent) <= MAX_CONNECTIONS
    assert held <= MAX_CONNECTIONS + 2, f"{held} descriptors held for {len(sockets)} idle clients"
    assert httpx.get(f"{server.url}/health/live", timeout=10).status_code == 200
    deadline = time.monotonic() + SLACK
    while _open_descriptors(server.pid) > before + 2:
        assert time.monotonic() < deadline, "descriptors of closed connections not released"
        time.sleep(0.1)


# --- security headers and the API key --------------------------------------------------------


def test_security_headers_on_docs_json_answers_and_errors(
    server: RunningServer, served_model: ServedModel
) -> None:
    key = {"X-API-Key": KEY}
    body, content_type = _multipart("file", [served_model.pngs[0]])
    too_large, _ = _multipart("file", [b"\x00" * (MAX_UPLOAD * 2)])
    with httpx.Client(base_url=server.url, timeout=30) as client:
        answers = {
            "docs": client.get("/docs"),
            "redoc": client.get("/redoc"),
            "openapi": client.get("/openapi.json"),
            "predict": client.post(
                "/predict", content=body, headers={**key, "Content-Type": content_type}
            ),
            "model": client.get("/model", headers=key),
            "prometheus": client.get("/metrics", headers={"Accept": "text/plain"}),
            "404": client.get("/no-such-page"),
            "401": client.get("/model"),
            "413": client.post(
                "/predict", content=too_large, headers={**key, "Content-Type": content_type}
            ),
            "asset": client.get("/docs-assets/swagger-ui.css"),
        }
        page = client.get("/")
    statuses = {name: answer.status_code for name, answer in answers.items()}
    assert statuses == {
        "docs": 200,
        "redoc": 200,
        "openapi": 200,
        "predict": 200,
        "model": 200,
        "prometheus": 200,
        "404": 404,
        "401": 401,
        "413": 413,
        "asset": 200,
    }
    for name, answer in answers.items():
        missing = [header for header in SECURITY_HEADERS if header not in answer.headers]
        assert missing == [], f"{name}: {missing}"
        assert answer.headers["x-content-type-options"] == "nosniff"
        assert answer.headers["x-frame-options"] == "DENY"
    assert "frame-ancestors 'none'" in answers["predict"].headers["content-security-policy"]
    # The documentation pages run script: only their own files and their inline start-up
    # script, by hash, never any inline script.
    for name in ("docs", "redoc"):
        policy = answers[name].headers["content-security-policy"]
        script = next(p for p in policy.split(";") if p.strip().startswith("script-src"))
        assert "'self'" in script
        assert "unsafe-inline" not in script
        assert "unsafe-eval" not in script
    assert "'sha256-" in answers["docs"].headers["content-security-policy"]
    # The page keeps its own, stricter policy, sent once.
    assert page.headers.get_list("content-security-policy") == [
        page.headers["content-security-policy"]
    ]
    assert "script-src 'self'" in page.headers["content-security-policy"]


def test_model_needs_the_key_health_and_metrics_do_not(server: RunningServer) -> None:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        missing = client.get("/model")
        wrong = client.get("/model", headers={"X-API-Key": "not-the-key"})
        right = client.get("/model", headers={"X-API-Key": KEY})
        open_routes = {
            path: client.get(path).status_code
            for path in ("/health/live", "/health/ready", "/metrics")
        }
    assert missing.status_code == 401
    assert_error_shape(missing.json(), "missing_api_key")
    assert wrong.status_code == 401
    assert_error_shape(wrong.json(), "invalid_api_key")
    assert right.status_code == 200
    assert right.json()["version"] == 1
    assert open_routes == {"/health/live": 200, "/health/ready": 200, "/metrics": 200}


def test_a_forged_forwarded_for_from_outside_the_trusted_networks_is_ignored(
    server: RunningServer,
) -> None:
    # This client (loopback) is not the compose network's proxy: what it claims is not logged.
    marker = f"/forwarded-for-probe-{uuid.uuid4().hex}"  # a path of its own, in the log
    forged = httpx.get(f"{server.url}{marker}", headers={"X-Forwarded-For": "6.6.6.6"})
    assert forged.status_code == 404
    deadline = time.monotonic() + SLACK
    while not (lines := [line for line in server.log().splitlines() if marker in line]):
        assert time.monotonic() < deadline, f"no access log line:\n{server.tail()}"
        time.sleep(0.05)
    assert "6.6.6.6" not in lines[0]
    assert f"{HOST}:" in lines[0]


# --- graceful shutdown -------------------------------------------------------------------------


def test_sigterm_with_a_stalled_upload_exits_within_the_graceful_timeout(
    tmp_path: Path, served_model: ServedModel
) -> None:
    grace = 2
    without_key = {k: v for k, v in LIMITS.items() if k != "DIGITS_API_KEY"}
    models = tmp_path / "models"
    install_version(models, served_model.version_dir, 1)
    server = RunningServer.start(
        models,
        tmp_path / "server.log",
        env={**without_key, "DIGITS_GRACEFUL_SHUTDOWN_SECONDS": str(grace)},
    )
    try:
        # Half the body is sent, the rest never comes: a client stalled mid-upload.
        body, content_type = _multipart("file", [served_model.pngs[0]])
        stalled = HalfSentRequest(server.port, "/predict", body, content_type)
        deadline = time.monotonic() + SLACK
        while _in_progress(server) != 2:  # the stalled upload and the probe itself
            assert time.monotonic() < deadline, f"upload never in flight:\n{server.tail()}"
            time.sleep(0.05)
        signalled = time.monotonic()
        os.kill(server.pid, signal.SIGTERM)
        server.process.wait(timeout=grace + SLACK)
        waited = time.monotonic() - signalled
        stalled.sock.close()
    finally:
        server.stop()
    assert waited >= grace * 0.9, "the upload was given its grace period"
    assert "timeout graceful shutdown exceeded" in server.log(), server.tail()
