"""Retries: on 503 and connection failures, waiting what Retry-After says, never repeating what
may have run unless the call is idempotent.

Most tests answer from a scripted transport (httpx.MockTransport) and record the waits instead
of sleeping; the last starts a real server with no model yet and checks that a client waits,
as told, until one is loaded.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import httpx
import pytest
from digits_client import ApiError, AsyncClient, Client, DigitsError, NoAnswerError, Retry
from digits_client.endpoints import parse_retry_after

from harness.servers import RunningServer
from tests.client.conftest import BUNDLED_MODELS, EXAMPLES

DIGIT = (EXAMPLES / "digit.png").read_bytes()
PREDICTION = {
    "digit": 3,
    "confidence": 0.99,
    "probabilities": [0.001] * 9 + [0.991],
    "normalized": True,
    "needs_review": False,
    "review_reasons": [],
    "model_version": 2,
}


def busy(retry_after: str | None = "2", code: str = "deadline_exceeded") -> httpx.Response:
    headers = {"Retry-After": retry_after} if retry_after is not None else {}
    body = {"error": {"code": code, "message": "busy", "details": None}}
    return httpx.Response(503, json=body, headers=headers)


class Script:
    """A transport answering from a list, recording the requests it got."""

    def __init__(self, *answers: httpx.Response | Exception) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        return answer


def sync_client(script: Script, waits: list[float], **options: object) -> Client:
    return Client(
        transport=httpx.MockTransport(script),
        sleep=waits.append,
        **options,  # type: ignore[arg-type]
    )


def test_a_503_is_retried_after_the_wait_retry_after_asks() -> None:
    script = Script(busy("2"), busy("1"), httpx.Response(200, json=PREDICTION))
    waits: list[float] = []
    prediction = sync_client(script, waits).predict(DIGIT)
    assert prediction.digit == 3
    assert waits == [2.0, 1.0]
    assert len(script.requests) == 3
    # Each retry sends the same upload again, whole.
    assert all(DIGIT in request.read() for request in script.requests)


def test_a_non_idempotent_call_is_not_retried_after_a_503() -> None:
    script = Script(busy("1"), httpx.Response(200, json=PREDICTION))
    waits: list[float] = []
    client = sync_client(script, waits)
    with pytest.raises(ApiError) as raised:
        client.predict(DIGIT, idempotent=False)
    assert (raised.value.status, raised.value.code, raised.value.retry_after) == (
        503,
        "deadline_exceeded",
        1.0,
    )
    assert len(script.requests) == 1
    assert waits == []


def test_a_connection_never_made_is_retried_even_when_not_idempotent() -> None:
    refused = httpx.ConnectError("connection refused")
    script = Script(refused, refused, httpx.Response(200, json=PREDICTION))
    waits: list[float] = []
    client = sync_client(script, waits, retry=Retry(backoff=0.5))
    assert client.predict(DIGIT, idempotent=False).digit == 3
    assert len(script.requests) == 3
    assert len(waits) == 2
    assert 0.25 <= waits[0] <= 0.5 <= waits[1] <= 1.0, "exponential backoff, with jitter"


def test_a_connection_lost_after_sending_is_retried_only_when_idempotent() -> None:
    lost = httpx.ReadError("connection reset")
    script = Script(lost, httpx.Response(200, json=PREDICTION))
    waits: list[float] = []
    with pytest.raises(NoAnswerError) as raised:
        sync_client(script, waits).predict(DIGIT, idempotent=False)
    assert raised.value.sent
    assert len(script.requests) == 1

    script = Script(lost, httpx.Response(200, json=PREDICTION))
    assert sync_client(script, waits).predict(DIGIT).digit == 3
    assert len(script.requests) == 2


def test_retries_stop_after_the_attempts_allowed() -> None:
    script = Script(busy("1"))
    waits: list[float] = []
    with pytest.raises(ApiError, match="503 deadline_exceeded"):
        sync_client(script, waits, retry=Retry(attempts=3)).predict(DIGIT)
    assert len(script.requests) == 3
    assert waits == [1.0, 1.0]


def test_a_retry_after_longer_than_allowed_is_not_waited_for() -> None:
    script = Script(busy("3600"))
    waits: list[float] = []
    with pytest.raises(ApiError):
        sync_client(script, waits, retry=Retry(max_retry_after=60)).predict(DIGIT)
    assert waits == []


def test_a_model_not_ready_without_retry_after_is_not_retried() -> None:
    # The service leaves Retry-After out when no model will load until it is restarted.
    script = Script(busy(None, code="model_not_ready"))
    waits: list[float] = []
    with pytest.raises(ApiError, match="model_not_ready"):
        sync_client(script, waits).predict(DIGIT)
    assert len(script.requests) == 1


def test_errors_that_are_not_transient_are_not_retried() -> None:
    for status, code in [(400, "not_an_image"), (401, "invalid_api_key"), (500, "internal_error")]:
        body = {"error": {"code": code, "message": "no", "details": {"a": 1}}}
        script = Script(httpx.Response(status, json=body, headers={"Retry-After": "1"}))
        waits: list[float] = []
        with pytest.raises(ApiError) as raised:
            sync_client(script, waits).predict(DIGIT)
        assert (raised.value.status, raised.value.code, raised.value.details) == (
            status,
            code,
            {"a": 1},
        )
        assert len(script.requests) == 1


def test_a_proxys_page_is_an_error_too() -> None:
    script = Script(httpx.Response(502, text="<html>Bad Gateway</html>"))
    waits: list[float] = []
    with pytest.raises(ApiError) as raised:
        sync_client(script, waits, retry=Retry(attempts=2, backoff=0.1)).predict(DIGIT)
    assert (raised.value.status, raised.value.code) == (502, "http_502")
    assert len(waits) == 1, "a 502 of a proxy is worth another try"


def test_an_answer_of_another_shape_is_a_clear_error() -> None:
    script = Script(httpx.Response(200, json={"hello": "world"}))
    with pytest.raises(DigitsError, match="answered what this client does not know"):
        sync_client(script, []).predict(DIGIT)


def test_retry_after_as_an_http_date() -> None:
    later = datetime.now(UTC) + timedelta(seconds=30)
    seconds = parse_retry_after(format_datetime(later, usegmt=True))
    assert seconds is not None
    assert 28 <= seconds <= 31
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None


def test_the_api_key_is_sent_on_every_try() -> None:
    script = Script(busy("1"), httpx.Response(200, json=PREDICTION))
    waits: list[float] = []
    sync_client(script, waits, api_key="s3cret").predict(DIGIT)
    assert [r.headers.get("X-API-Key") for r in script.requests] == ["s3cret", "s3cret"]


def test_the_async_client_retries_the_same_way() -> None:
    script = Script(busy("2"), httpx.Response(200, json=PREDICTION))
    waits: list[float] = []

    async def record(seconds: float) -> None:
        waits.append(seconds)

    async def main() -> None:
        transport = httpx.MockTransport(script)
        async with AsyncClient(transport=transport, sleep=record) as client:
            assert (await client.predict(DIGIT)).digit == 3
            script.answers = [busy("1"), httpx.Response(200, json=PREDICTION)]
            with pytest.raises(ApiError):
                await client.predict(DIGIT, idempotent=False)

    asyncio.run(main())
    assert waits == [2.0]
    assert len(script.requests) == 3


def test_batches_retry_as_a_whole_and_answer_in_order() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        count = request.read().count(b'name="files"')
        results = [
            {
                "index": i,
                "filename": f"f{i}",
                "prediction": {k: v for k, v in PREDICTION.items() if k != "model_version"},
                "error": None,
            }
            for i in range(count)
        ]
        return httpx.Response(200, content=json.dumps({"model_version": 2, "results": results}))

    calls: list[int] = []

    def flaky(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        return busy("1") if len(calls) == 1 else answer(request)

    waits: list[float] = []
    client = Client(transport=httpx.MockTransport(flaky), sleep=waits.append)
    results = client.predict_many([DIGIT] * 5, max_files=2)
    assert [r.index for r in results] == [0, 1, 2, 3, 4]
    assert all(r.prediction is not None and r.prediction.model_version == 2 for r in results)
    assert waits == [1.0]
    assert len(calls) == 4  # 3 batches, the first twice


# ---------------------------------------------------------------- a real server, no model yet


@pytest.fixture
def empty_server(tmp_path: Path) -> Iterator[tuple[RunningServer, Path]]:
    """The service polling an empty models directory every second (503 with Retry-After)."""
    models = tmp_path / "models"
    models.mkdir()
    server = RunningServer.start(
        models,
        tmp_path / "server.log",
        env={"WEB_CONCURRENCY": "1", "DIGITS_MODEL_POLL_SECONDS": "1"},
        ready_path="/health/live",
    )
    try:
        yield server, models
    finally:
        server.stop()


@pytest.mark.slow
def test_a_client_waits_as_told_until_the_service_has_a_model(
    empty_server: tuple[RunningServer, Path],
) -> None:
    server, models = empty_server
    waits: list[float] = []
    copied = threading.Event()

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        if not copied.is_set():  # the first 503 seen: now publish a version, whole
            staging = models / ".staging"
            shutil.copytree(BUNDLED_MODELS / "2", staging)
            staging.rename(models / "2")
            copied.set()
        time.sleep(seconds)

    with Client(server.url, retry=Retry(attempts=120), sleep=sleep) as client:
        with Client(server.url, retry=Retry.never()) as once, pytest.raises(ApiError) as raised:
            once.predict(DIGIT)
        assert (raised.value.status, raised.value.code) == (503, "model_not_ready")
        assert raised.value.retry_after == 1.0
        prediction = client.predict(DIGIT)
    assert (prediction.digit, prediction.model_version) == (3, 2)
    assert waits, "the client waited for the model"
    assert set(waits) == {1.0}, "every wait was the service's Retry-After"
