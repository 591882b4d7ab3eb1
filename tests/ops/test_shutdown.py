"""Graceful shutdown of the real server: SIGTERM with requests in flight.

The requests are made in flight deterministically: each one's headers and the first half of its
body (chunked transfer encoding) are sent, the test waits until the server counts all of them as
in progress, then sends SIGTERM, checks that new connections are refused, and only then sends the
rest of each body. Every one of them must be answered 200 with the right digits, and the process
must exit 0 within the grace period (DIGITS_GRACEFUL_SHUTDOWN_SECONDS).

The server runs as PID 1 of its own PID namespace, as in the container: after a graceful
shutdown uvicorn re-raises SIGTERM on itself, which a PID 1 ignores, so the exit code is 0.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from harness.servers import HOST, RunningServer
from tests.ops.conftest import ServedModel, ServerFactory

pytestmark = pytest.mark.slow

GRACE_SECONDS = 20
SINGLE_REQUESTS = 8
BATCH_REQUESTS = 4
BATCH_IMAGES = 256
WAIT_SECONDS = 30.0  # bound on waiting for the server to reach a state, not a speed check


def _multipart(field: str, files: list[bytes]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = [
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; '
            f'filename="{i}.png"\r\nContent-Type: image/png\r\n\r\n'
        ).encode()
        + data
        + b"\r\n"
        for i, data in enumerate(files)
    ]
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), (
        f"multipart/form-data; boundary={boundary}"
    )


def _chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


class HalfSentRequest:
    """A POST whose body (chunked) is sent in two halves, the second one later."""

    def __init__(self, port: int, path: str, body: bytes, content_type: str) -> None:
        self.body = body
        self.half = len(body) // 2
        self.sock = socket.create_connection((HOST, port), timeout=WAIT_SECONDS)
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
            f"Content-Type: {content_type}\r\nTransfer-Encoding: chunked\r\n\r\n"
        ).encode()
        self.sock.sendall(head + _chunk(body[: self.half]))

    def finish(self) -> tuple[int, dict[str, str], Any]:
        """Send the rest of the body; return status, headers and JSON answer."""
        self.sock.sendall(_chunk(self.body[self.half :]) + b"0\r\n\r\n")
        response = http.client.HTTPResponse(self.sock)
        try:
            response.begin()
            payload = json.loads(response.read())
            return response.status, {k.lower(): v for k, v in response.getheaders()}, payload
        finally:
            response.close()
            self.sock.close()


def _in_progress(server: RunningServer) -> int:
    service = httpx.get(f"{server.url}/metrics", timeout=10).json()["service"]
    return int(service["requests_in_progress"])


def _refuses_connections(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=2):
            return False
    except ConnectionRefusedError:
        return True


def test_sigterm_lets_requests_in_flight_finish_then_exits_0(
    start_server: ServerFactory, models_dir: Path, served_model: ServedModel
) -> None:
    server = start_server(models_dir, as_pid_1=True, graceful_seconds=GRACE_SECONDS)
    singles = [(i, _multipart("file", [served_model.pngs[i]])) for i in range(SINGLE_REQUESTS)]
    batch_pngs = [served_model.pngs[i % len(served_model.pngs)] for i in range(BATCH_IMAGES)]
    batch_body = _multipart("files", batch_pngs)
    in_flight = [
        (("predict", i), HalfSentRequest(server.port, "/predict", *body)) for i, body in singles
    ] + [
        (("batch", None), HalfSentRequest(server.port, "/predict/batch", *batch_body))
        for _ in range(BATCH_REQUESTS)
    ]

    # All of them have reached the application (the probe itself is one more request).
    deadline = time.monotonic() + WAIT_SECONDS
    while _in_progress(server) != len(in_flight) + 1:
        assert time.monotonic() < deadline, f"requests never in flight:\n{server.tail()}"
        time.sleep(0.05)

    signal_sent = time.monotonic()
    # To uvicorn itself (PID 1 of its namespace), as `docker stop` sends it.
    os.kill(server.pid, signal.SIGTERM)
    deadline = time.monotonic() + WAIT_SECONDS
    while not _refuses_connections(server.port):
        assert time.monotonic() < deadline, "the server kept accepting connections after SIGTERM"
        time.sleep(0.05)
    assert server.process.poll() is None, "the server must wait for the requests in flight"

    for (kind, index), request in in_flight:
        status, headers, answer = request.finish()
        assert status == 200, answer
        # The connection is not kept alive by a server that is shutting down.
        assert headers.get("connection") == "close"
        if kind == "predict":
            assert index is not None
            assert answer["digit"] == served_model.digits[index]
        else:
            digits = [r["prediction"]["digit"] for r in answer["results"]]
            assert digits == [
                served_model.digits[i % len(served_model.pngs)] for i in range(BATCH_IMAGES)
            ]

    remaining = GRACE_SECONDS - (time.monotonic() - signal_sent)
    assert server.process.wait(timeout=max(remaining, 1.0)) == 0, server.tail()
    log = server.log()
    assert "Waiting for connections to close" in log or "Shutting down" in log, log[-2000:]
    assert "Finished server process" in log, log[-2000:]
