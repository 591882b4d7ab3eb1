"""What the clients put on the wire and how they read the answers, for every call.

The requests are recorded by httpx.MockTransport and the answers scripted in the service's
shapes (the shapes themselves are checked against its OpenAPI document in test_models.py, the
readings against a real server in test_client.py). Each call is made through both clients:
they must send the same request and read the same answer, since both are the one builder of
:mod:`digits_client.calls` sent two ways.
"""

from __future__ import annotations

import asyncio
import inspect
import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from digits_client import (
    ApiError,
    AsyncClient,
    ClaimedReview,
    Client,
    ReviewImage,
    ReviewItem,
    StringResult,
    calls,
)
from digits_client.errors import NoAnswerError

from tests.client.conftest import EXAMPLES

DIGIT = (EXAMPLES / "digit.png").read_bytes()
CODE = (EXAMPLES / "postal-code.png").read_bytes()
PREDICTION = {
    "digit": 3,
    "confidence": 0.99,
    "probabilities": [0.001] * 9 + [0.991],
    "normalized": True,
    "needs_review": False,
    "review_reasons": [],
    "model_version": 2,
}
SEGMENT = {
    "digit": 7,
    "confidence": 0.6,
    "probabilities": [0.04] * 9 + [0.64],
    "box": {"x": 1, "y": 2, "width": 10, "height": 20},
}
READING = {
    "digits": "75011",
    "confidence": 0.4,
    "needs_review": True,
    "review_reasons": [{"code": "low_confidence", "message": "unsure", "position": 2}],
    "model_version": 2,
    "image": {"width": 300, "height": 60},
    "segments": [SEGMENT] * 5,
    "ignored": [],
    "review_id": "AAAAAAAAAAAAAAAAAAAAAA",
    "queue": "queued",
}
ITEM = {
    "review_id": "AAAAAAAAAAAAAAAAAAAAAA",
    "kind": "flagged",
    "endpoint": "/recognize",
    "status": "claimed",
    "created_at": "2024-05-01T12:00:00Z",
    "model_version": 2,
    "request_id": "req-1",
    "client_ref": "batch-7/scan-3",
    "expected_length": 5,
    "image_type": "image/png",
    "has_image": True,
    "reading": {
        "digits": "75011",
        "confidence": 0.4,
        "segments": [SEGMENT] * 5,
        "review_reasons": [{"code": "low_confidence", "message": "unsure", "position": 2}],
    },
    "lease_expires": "2024-05-01T12:05:00Z",
    "reviewer": "alice",
    "reviewed_at": None,
    "result": None,
}
DONE = {
    **ITEM,
    "status": "done",
    "lease_expires": None,
    "reviewed_at": "2024-05-01T12:01:00Z",
    "result": {"verdict": "digits", "digits": "75017", "reading_was_correct": False},
}


class Service:
    """A scripted transport: answers by method and path, records every request."""

    def __init__(self, answers: dict[tuple[str, str], Callable[[httpx.Request], httpx.Response]]):
        self.answers = answers
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        request.read()
        self.requests.append(request)
        path = request.url.raw_path.split(b"?")[0].decode()  # as sent, %-escapes kept
        return self.answers[request.method, path](request)


def constant(status: int, body: Any = None, **headers: str) -> Callable[..., httpx.Response]:
    def answer(request: httpx.Request) -> httpx.Response:
        if isinstance(body, bytes):
            return httpx.Response(status, content=body, headers=headers)
        if body is None:
            return httpx.Response(status, headers=headers)
        return httpx.Response(status, json=body, headers=headers)

    return answer


def both(
    service: Service, method: str, *args: Any, api_key: str | None = None, **kwargs: Any
) -> tuple[Any, Any, list[httpx.Request]]:
    """``method`` through the sync and then the async client: both answers, and the requests
    of the sync one (the async one's must be the same)."""
    transport = httpx.MockTransport(service)
    start = len(service.requests)
    with Client(transport=transport, api_key=api_key, sleep=lambda _: None) as client:
        sync_answer = getattr(client, method)(*args, **kwargs)
    middle = len(service.requests)

    async def nowait(_: float) -> None:
        return None

    async def main() -> Any:
        async with AsyncClient(transport=transport, api_key=api_key, sleep=nowait) as client:
            return await getattr(client, method)(*args, **kwargs)

    async_answer = asyncio.run(main())
    sync_requests, async_requests = service.requests[start:middle], service.requests[middle:]
    assert sync_requests
    assert len(sync_requests) == len(async_requests)
    for sent, also_sent in zip(sync_requests, async_requests, strict=True):
        assert same_request(sent, also_sent), "both clients send the same request"
    return sync_answer, async_answer, sync_requests


def same_request(a: httpx.Request, b: httpx.Request) -> bool:
    def key(request: httpx.Request) -> tuple[object, ...]:
        content_type = request.headers.get("content-type", "")
        # A multipart body differs by its random boundary only: compare its parts' names.
        multipart = content_type.startswith("multipart/")
        body = request.content.count(b'name="') if multipart else request.content
        headers = (request.headers.get("x-api-key"), request.headers.get("x-client-ref"))
        return (request.method, str(request.url), content_type.split(";")[0], headers, body)

    return key(a) == key(b)


# ---------------------------------------------------------------- reading: the raw body


def test_predict_sends_the_image_itself_as_the_body() -> None:
    service = Service({("POST", "/predict"): constant(200, PREDICTION)})
    mine, theirs, requests = both(service, "predict", EXAMPLES / "digit.png")
    assert mine == theirs
    assert mine.digit == 3
    for request in requests:
        assert request.content == DIGIT, "the bytes, no multipart framing"
        assert request.headers["content-type"] == "image/png"
        assert request.url.query == b""


def test_bytes_of_no_known_type_go_as_octet_stream() -> None:
    service = Service({("POST", "/recognize"): constant(200, READING)})
    reading, _, requests = both(service, "recognize", CODE, expected_length=5)
    assert reading.digits == "75011"
    assert (reading.review_id, reading.queue) == ("AAAAAAAAAAAAAAAAAAAAAA", "queued")
    assert requests[0].headers["content-type"] == "application/octet-stream"
    assert requests[0].content == CODE
    assert requests[0].url.params["expected_length"] == "5"


def test_an_answer_without_review_fields_still_parses() -> None:
    older = {k: v for k, v in READING.items() if k not in ("review_id", "queue")}
    service = Service({("POST", "/recognize"): constant(200, older)})
    reading, _, _ = both(service, "recognize", CODE)
    assert (reading.review_id, reading.queue) == (None, None)


def test_queue_and_client_ref_are_sent() -> None:
    service = Service({("POST", "/predict"): constant(200, {**PREDICTION, "queue": "audit"})})
    answer, _, requests = both(
        service, "predict", DIGIT, queue=True, client_ref="batch-7/scan-3", api_key="k"
    )
    assert answer.queue == "audit"
    for request in requests:
        assert request.url.params["queue"] == "true", "a bool as the service parses it"
        assert request.headers["x-client-ref"] == "batch-7/scan-3"
        assert request.headers["x-api-key"] == "k"


@pytest.mark.parametrize("ref", ["", "x" * 201, "naïve", "line\nbreak"])
def test_a_client_ref_a_header_cannot_carry_is_refused_before_sending(ref: str) -> None:
    service = Service({("POST", "/recognize"): constant(200, READING)})
    with Client(transport=httpx.MockTransport(service)) as client:
        with pytest.raises(ValueError, match="client_ref must be"):
            client.recognize(CODE, client_ref=ref)
        with pytest.raises(ValueError, match="client_ref must be"):
            client.recognize_many([CODE], client_ref=ref)
    assert service.requests == []


def test_batches_stay_multipart() -> None:
    answer = {
        "model_version": 2,
        "results": [
            {"index": 0, "filename": "digit.png", "reading": READING, "error": None},
            {
                "index": 1,
                "filename": "image-1",
                "reading": None,
                "error": {"code": "not_an_image", "message": "no"},
            },
        ],
    }
    service = Service({("POST", "/recognize/batch"): constant(200, answer)})
    batch, _, requests = both(
        service, "recognize_batch", [EXAMPLES / "digit.png", b"junk"], client_ref="r"
    )
    assert [r.reading.digits if r.reading else r.error.code for r in batch.results] == [
        "75011",
        "not_an_image",
    ]
    body = requests[0].content
    assert requests[0].headers["content-type"].startswith("multipart/form-data")
    assert body.count(b'name="files"') == 2
    assert b'filename="digit.png"' in body
    assert requests[0].headers["x-client-ref"] == "r"


# ---------------------------------------------------------------- many strings, sized


def batch_answer(request: httpx.Request) -> httpx.Response:
    """/recognize/batch: each file read, but a file whose bytes say so refused as an item."""
    parts = request.content.split(b'name="files"')[1:]
    results: list[dict[str, Any]] = []
    for index, part in enumerate(parts):
        if b"junk" in part:
            error = {"code": "not_an_image", "message": "not an image"}
            results.append({"index": index, "filename": None, "reading": None, "error": error})
        else:
            results.append({"index": index, "filename": None, "reading": READING, "error": None})
    return httpx.Response(200, json={"model_version": 2, "results": results})


def test_recognize_many_sends_sized_batches_and_answers_in_order() -> None:
    service = Service({("POST", "/recognize/batch"): batch_answer})
    images = [CODE, CODE, b"junk", CODE, CODE]
    mine, theirs, _ = both(service, "recognize_many", images, max_files=2, expected_length=5)
    assert mine == theirs
    assert all(isinstance(result, StringResult) for result in mine)
    assert [r.index for r in mine] == [0, 1, 2, 3, 4]
    assert [r.error.code if r.error else r.reading.digits for r in mine] == [
        "75011",
        "75011",
        "not_an_image",
        "75011",
        "75011",
    ]
    sync_requests = service.requests[: len(service.requests) // 2]
    assert [r.content.count(b'name="files"') for r in sync_requests] == [2, 2, 1]
    assert all(r.url.params["expected_length"] == "5" for r in sync_requests)


def test_recognize_many_learns_a_lower_limit_from_a_413() -> None:
    seen: list[int] = []

    def answer(request: httpx.Request) -> httpx.Response:
        files = request.content.count(b'name="files"')
        seen.append(files)
        if files > 3:
            body = {
                "error": {
                    "code": "too_many_files",
                    "message": "at most 3",
                    "details": {"max_files": 3},
                }
            }
            return httpx.Response(413, json=body)
        return batch_answer(request)

    service = Service({("POST", "/recognize/batch"): answer})
    with Client(transport=httpx.MockTransport(service)) as client:
        results = client.recognize_many([CODE] * 8)
        assert client.limits.max_files == 3
    assert [r.reading is not None for r in results] == [True] * 8
    assert seen == [8, 3, 3, 2]


# ---------------------------------------------------------------- retries of what is stored


def busy(code: str = "deadline_exceeded") -> Callable[..., httpx.Response]:
    body = {"error": {"code": code, "message": "busy", "details": None}}
    return constant(503, body, **{"Retry-After": "1"})


class Turns:
    """Answers in turn (the last one again once the others are used)."""

    def __init__(self, *answers: Callable[[httpx.Request], httpx.Response]) -> None:
        self.answers = list(answers)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        return answer(request)


def test_recognize_is_not_repeated_after_it_may_have_run() -> None:
    # The service queues what /recognize flags: sent again, a reading would be queued twice.
    service = Service({("POST", "/recognize"): Turns(busy(), constant(200, READING))})
    waits: list[float] = []
    client = Client(transport=httpx.MockTransport(service), sleep=waits.append)
    with pytest.raises(ApiError, match="deadline_exceeded"):
        client.recognize(CODE)
    assert (len(service.requests), waits) == (1, [])
    assert client.recognize(CODE, idempotent=True).digits == "75011", "unless the caller says"


def test_a_digit_asked_to_be_queued_is_not_repeated_either() -> None:
    service = Service({("POST", "/predict"): Turns(busy(), constant(200, PREDICTION))})
    client = Client(transport=httpx.MockTransport(service), sleep=lambda _: None)
    with pytest.raises(ApiError):
        client.predict(DIGIT, queue=True)
    assert client.predict(DIGIT).digit == 3, "a plain /predict stores nothing: retried"
    assert len(service.requests) == 2


def test_a_lost_batch_of_strings_is_not_sent_again() -> None:
    def lost(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadError("connection reset", request=request)

    service = Service({("POST", "/recognize/batch"): lost})
    with Client(transport=httpx.MockTransport(service)) as client, pytest.raises(NoAnswerError):
        client.recognize_many([CODE] * 3)
    assert len(service.requests) == 1


def test_model_not_ready_is_retried_even_when_not_idempotent() -> None:
    # Answered before any work starts: nothing ran, nothing was queued.
    service = Service(
        {("POST", "/recognize"): Turns(busy("model_not_ready"), constant(200, READING))}
    )
    waits: list[float] = []
    client = Client(transport=httpx.MockTransport(service), sleep=waits.append)
    assert client.recognize(CODE).digits == "75011"
    assert waits == [1.0]


# ---------------------------------------------------------------- the review queue


def test_claim_sends_the_reviewer_and_reads_the_lease() -> None:
    claimed = {**ITEM, "lease": "lease-token"}
    service = Service({("POST", "/reviews/claim"): constant(200, claimed)})
    mine, theirs, requests = both(service, "claim_review", "alice", kind="flagged", api_key="rk")
    assert mine == theirs
    assert isinstance(mine, ClaimedReview)
    assert (mine.lease, mine.status, mine.reading.digits) == ("lease-token", "claimed", "75011")
    assert mine.reading.segments[0].box is not None
    assert json.loads(requests[0].content) == {"reviewer": "alice", "kind": "flagged"}
    assert requests[0].headers["x-api-key"] == "rk"
    assert requests[0].headers["content-type"] == "application/json"


def test_claim_with_nothing_waiting_is_none() -> None:
    service = Service({("POST", "/reviews/claim"): constant(204)})
    mine, theirs, requests = both(service, "claim_review", "alice")
    assert mine is None
    assert theirs is None
    assert json.loads(requests[0].content) == {"reviewer": "alice", "kind": None}


def test_a_claim_is_not_repeated_after_it_may_have_run() -> None:
    # Sent twice, a reviewer would hold a second item until its lease runs out.
    service = Service({("POST", "/reviews/claim"): Turns(busy(), constant(204))})
    with Client(transport=httpx.MockTransport(service)) as client, pytest.raises(ApiError):
        client.claim_review("alice")
    assert len(service.requests) == 1


@pytest.mark.parametrize(
    ("answer", "body"),
    [
        ({"digits": "75017"}, {"digits": "75017"}),
        ({"corrections": {4: 7, 1: 5}}, {"corrections": [{"position": 4, "digit": 7},
                                                         {"position": 1, "digit": 5}]}),
        ({"verdict": "unreadable"}, {"verdict": "unreadable"}),
    ],
)  # fmt: skip
def test_submit_sends_one_form_of_answer(answer: dict[str, Any], body: dict[str, Any]) -> None:
    path = "/reviews/AAAAAAAAAAAAAAAAAAAAAA"
    service = Service({("POST", path): constant(200, DONE)})
    mine, _, requests = both(
        service,
        "submit_review",
        "AAAAAAAAAAAAAAAAAAAAAA",
        lease="lease-token",
        reviewer="alice",
        **answer,
    )
    assert isinstance(mine, ReviewItem)
    assert mine.result is not None
    assert (mine.status, mine.result.verdict, mine.result.digits) == ("done", "digits", "75017")
    assert not mine.result.reading_was_correct
    assert json.loads(requests[0].content) == {"lease": "lease-token", "reviewer": "alice", **body}


@pytest.mark.parametrize(
    "answer",
    [{}, {"digits": "1", "verdict": "unreadable"}, {"digits": "1", "corrections": {0: 1}}],
)
def test_submit_needs_exactly_one_form_of_answer(answer: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="exactly one of digits, corrections or verdict"):
        calls.submit_review("id", lease="l", reviewer="r", **answer)


def test_a_review_submitted_again_may_be_retried() -> None:
    # The same answer again is answered 200: a lost answer may be sent again.
    path = "/reviews/AAAAAAAAAAAAAAAAAAAAAA"
    service = Service({("POST", path): Turns(busy(), constant(200, DONE))})
    with Client(transport=httpx.MockTransport(service), sleep=lambda _: None) as client:
        item = client.submit_review(
            "AAAAAAAAAAAAAAAAAAAAAA", lease="l", reviewer="alice", digits="75017"
        )
    assert item.status == "done"
    assert len(service.requests) == 2


def test_an_id_is_one_path_segment_whatever_it_holds() -> None:
    service = Service({("GET", "/reviews/a%2F..%2Fb"): constant(200, ITEM)})
    item, _, requests = both(service, "get_review", "a/../b")
    assert item.review_id == ITEM["review_id"]
    assert requests[0].url.raw_path == b"/reviews/a%2F..%2Fb"


def test_the_image_comes_back_as_bytes_with_its_type() -> None:
    path = "/reviews/AAAAAAAAAAAAAAAAAAAAAA/image"
    service = Service({("GET", path): constant(200, CODE, **{"Content-Type": "image/png"})})
    mine, theirs, _ = both(service, "review_image", "AAAAAAAAAAAAAAAAAAAAAA")
    assert mine == theirs == ReviewImage(data=CODE, content_type="image/png")


def test_an_image_past_retention_is_a_410() -> None:
    path = "/reviews/AAAAAAAAAAAAAAAAAAAAAA/image"
    body = {"error": {"code": "review_image_deleted", "message": "gone", "details": None}}
    service = Service({("GET", path): constant(410, body)})
    with Client(transport=httpx.MockTransport(service)) as client, pytest.raises(ApiError) as e:
        client.review_image("AAAAAAAAAAAAAAAAAAAAAA")
    assert (e.value.status, e.value.code, e.value.fatal) == (410, "review_image_deleted", False)


def test_list_sends_its_filters_and_reads_the_next_page() -> None:
    page = {"items": [ITEM, DONE], "next": "BBBBBBBBBBBBBBBBBBBBBB"}
    service = Service({("GET", "/reviews"): constant(200, page)})
    mine, _, requests = both(
        service, "list_reviews", status="done", kind="audit", limit=2, after="AAAA"
    )
    assert [item.status for item in mine.items] == ["claimed", "done"]
    assert mine.next == "BBBBBBBBBBBBBBBBBBBBBB"
    assert dict(requests[0].url.params) == {
        "status": "done",
        "kind": "audit",
        "limit": "2",
        "after": "AAAA",
    }
    service = Service({("GET", "/reviews"): constant(200, {"items": [], "next": None})})
    _, _, requests = both(service, "list_reviews")
    assert requests[0].url.query == b"", "no filter: no query"


def test_stats_delete_and_result() -> None:
    stats = {
        "waiting": 3,
        "claimed": 1,
        "done": 10,
        "expired": 0,
        "by_kind": {
            "flagged": {"waiting": 2, "claimed": 1, "done": 9, "expired": 0},
            "audit": {"waiting": 1, "claimed": 0, "done": 1, "expired": 0},
        },
        "oldest_waiting_seconds": 42.5,
    }
    outcome = {
        "review_id": "AAAAAAAAAAAAAAAAAAAAAA",
        "status": "done",
        "reading": ITEM["reading"],
        "result": DONE["result"],
    }
    path = "/reviews/AAAAAAAAAAAAAAAAAAAAAA"
    service = Service(
        {
            ("GET", "/reviews/stats"): constant(200, stats),
            ("DELETE", path): constant(204),
            ("GET", f"{path}/result"): constant(200, outcome),
        }
    )
    found, _, _ = both(service, "review_stats")
    assert (found.waiting, found.oldest_waiting_seconds) == (3, 42.5)
    assert found.by_kind["audit"].done == 1
    deleted, _, requests = both(service, "delete_review", "AAAAAAAAAAAAAAAAAAAAAA")
    assert deleted is None
    assert requests[0].method == "DELETE"
    result, _, _ = both(service, "review_result", "AAAAAAAAAAAAAAAAAAAAAA")
    assert result.result is not None
    assert (result.status, result.result.digits) == ("done", "75017")


def test_a_reviewer_call_with_the_clients_key_is_fatal() -> None:
    body = {"error": {"code": "reviewer_key_required", "message": "reviewers only"}}
    service = Service({("GET", "/reviews/stats"): constant(403, body)})
    with Client(transport=httpx.MockTransport(service)) as client, pytest.raises(ApiError) as e:
        client.review_stats()
    assert e.value.fatal
    assert len(service.requests) == 1


# ---------------------------------------------------------------- one API, two clients


def public_methods(cls: type) -> set[str]:
    return {name for name in dir(cls) if not name.startswith("_") and callable(getattr(cls, name))}


def test_both_clients_have_the_same_calls_with_the_same_parameters() -> None:
    sync, concurrent = public_methods(Client), public_methods(AsyncClient)
    assert sync - {"close"} == concurrent - {"aclose"}
    for name in sorted(sync - {"close"}):
        mine, theirs = getattr(Client, name), getattr(AsyncClient, name)
        assert inspect.iscoroutinefunction(theirs), name
        assert not inspect.iscoroutinefunction(mine), name
        parameters = dict(inspect.signature(theirs).parameters)
        if name.endswith("_many"):
            assert parameters.pop("concurrency").default == 4
        assert inspect.signature(mine).parameters == parameters, name


def test_a_wrapped_call_shows_its_own_signature_and_docs() -> None:
    signature = inspect.signature(Client().predict)
    assert list(signature.parameters)[:1] == ["image"], "self is bound, the image comes first"
    assert signature.return_annotation == "Prediction"
    assert inspect.signature(AsyncClient.claim_review).return_annotation == "ClaimedReview | None"
    assert Client.submit_review.__qualname__ == "Client.submit_review"
    assert Client.recognize.__doc__ == calls.recognize.__doc__
    assert "POST /recognize" in (AsyncClient.recognize.__doc__ or "")
