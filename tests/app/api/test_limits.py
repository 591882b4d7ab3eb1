"""The request body limit: refused by Content-Length up front, or while a chunked body arrives."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from starlette.types import Message, Receive, Scope, Send

from app.core.limits import BodySizeLimitMiddleware
from app.main import create_app
from tests.app.conftest import ModelsDir, make_settings

LIMIT = 10_000


@pytest.fixture
def small_limit_client(models: ModelsDir) -> Iterator[TestClient]:
    models.add(1, digit=1)
    with TestClient(create_app(make_settings(models.path, max_upload_bytes=LIMIT))) as client:
        yield client


def multipart(size: int) -> tuple[bytes, str]:
    boundary = "limit-test-boundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.png"\r\n'
        "Content-Type: image/png\r\n\r\n"
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    return head + b"\x00" * size + tail, f"multipart/form-data; boundary={boundary}"


def test_body_over_limit_with_content_length(small_limit_client: TestClient) -> None:
    body, content_type = multipart(LIMIT * 3)
    response = small_limit_client.post(
        "/predict", content=body, headers={"Content-Type": content_type}
    )
    assert response.status_code == 413
    error = response.json()["error"]
    assert error["code"] == "payload_too_large"
    assert "10,000 bytes" in error["message"]


def test_body_over_limit_with_chunked_encoding(small_limit_client: TestClient) -> None:
    body, content_type = multipart(LIMIT * 3)

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(body), 4096):
            yield body[start : start + 4096]

    response = small_limit_client.post(
        "/predict", content=chunks(), headers={"Content-Type": content_type}
    )
    assert "content-length" not in {k.lower() for k in response.request.headers}
    assert response.request.headers.get("transfer-encoding") == "chunked"
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"


def test_body_under_limit_is_served(small_limit_client: TestClient) -> None:
    body, content_type = multipart(100)
    response = small_limit_client.post(
        "/predict", content=body, headers={"Content-Type": content_type}
    )
    # Under the limit the request reaches the route: these zeros are not an image.
    assert response.json()["error"]["code"] == "not_an_image"


def test_refusals_are_counted_under_the_route(small_limit_client: TestClient) -> None:
    body, content_type = multipart(LIMIT * 2)
    small_limit_client.post("/predict", content=body, headers={"Content-Type": content_type})
    service = small_limit_client.get("/metrics").json()["service"]
    assert service["endpoints"]["POST /predict"]["by_status"]["413"] == 1
    assert service["errors_by_code"]["payload_too_large"] == 1


# --- the middleware alone ------------------------------------------------------------------


class Recorder:
    """An inner app that reads the whole body, then answers 200 with its length."""

    def __init__(self) -> None:
        self.read = 0
        self.called = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.called = True
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            self.read += len(message.get("body", b""))
            if not message.get("more_body", False):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": str(self.read).encode()})


def run(app: BodySizeLimitMiddleware, headers: list[tuple[bytes, bytes]], chunks: list[bytes]):
    sent: list[Message] = []
    pending = [
        {"type": "http.request", "body": c, "more_body": i < len(chunks) - 1}
        for i, c in enumerate(chunks)
    ]
    pulled = 0

    async def receive() -> Message:
        nonlocal pulled
        pulled += 1
        return pending.pop(0) if pending else {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/", "headers": headers}
    asyncio.run(app(scope, receive, send))
    return sent, pulled


def test_declared_length_over_limit_never_reaches_the_app() -> None:
    inner = Recorder()
    sent, pulled = run(
        BodySizeLimitMiddleware(inner, max_bytes=100), [(b"content-length", b"101")], [b"x" * 101]
    )
    assert not inner.called
    assert pulled == 0
    assert sent[0]["status"] == 413
    assert json.loads(sent[1]["body"])["error"]["code"] == "payload_too_large"


def test_streamed_body_stops_at_the_limit_and_app_output_is_dropped() -> None:
    inner = Recorder()
    rejected: list[str] = []
    chunks = [b"x" * 40] * 10  # 400 bytes against a 100-byte limit
    sent, pulled = run(BodySizeLimitMiddleware(inner, 100, on_reject=rejected.append), [], chunks)
    assert pulled == 3, "reading stops at the chunk that crosses the limit"
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    assert sent[0]["status"] == 413
    assert inner.called
    assert inner.read == 80
    assert rejected == ["payload_too_large"]


def test_body_exactly_at_the_limit_passes() -> None:
    inner = Recorder()
    sent, _ = run(BodySizeLimitMiddleware(inner, 100), [], [b"x" * 50, b"x" * 50])
    assert sent[0]["status"] == 200
    assert sent[1]["body"] == b"100"
