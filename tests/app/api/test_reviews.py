"""The review queue over HTTP: which readings are stored and what their answers say, the
reviewers' round (claim, key, submit) with its refusals, the access rules, retention and
deletion, and the audit figures of /model and /metrics.

The tiny model of conftest.py answers 1 for everything with probability ~0.94: below the
default review threshold, so its readings are flagged; a threshold of 0.5 (the request's, or
the operator's ``review_threshold``) makes them accepted answers. Tests whose outcome depends on
the database take ``database_url`` and run on SQLite and on a real PostgreSQL.
"""

from __future__ import annotations

import asyncio
import io
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import create_engine, make_url, text

from app.api.review_intake import ReviewIntake
from app.main import create_app
from app.reviews.audit import wilson_interval
from app.reviews.tables import Kind
from app.telemetry import Telemetry
from harness.servers import free_port
from tests.app.api.test_predict import digit_png
from tests.app.conftest import ModelsDir, encode, make_settings
from tests.app.reading.test_segmentation import as_photo, draw_string, one, seven, zero
from tests.conftest import postgres_server

CLIENT_KEY = "client-key-0123456789abcdef"
REVIEWER_KEY = "reviewer-key-0123456789abcdef"

Start = Callable[..., TestClient]


@pytest.fixture
def start(models: ModelsDir, tmp_path: Path) -> Iterator[Start]:
    """Start apps serving the tiny model (version 1) with the given settings; the database is
    a SQLite file of each app's own unless ``review_database_url`` says otherwise."""
    models.add(1, digit=1)
    apps: list[TestClient] = []
    with ExitStack() as stack:

        def started(**overrides: Any) -> TestClient:
            data_dir = tmp_path / f"data-{len(apps)}"
            values: dict[str, Any] = {"data_dir": data_dir, "review_audit_share": 0.0}
            values.update(overrides)
            app = create_app(make_settings(models.path, **values))
            apps.append(stack.enter_context(TestClient(app)))
            return apps[-1]

        yield started


@pytest.fixture
def client_on(start: Start, database_url: str) -> TestClient:
    """The service on each database (no audit samples)."""
    return start(review_database_url=database_url)


def code_png() -> bytes:
    ink, _ = draw_string([seven, zero, one])
    return encode(as_photo(ink))


def recognize(client: TestClient, data: bytes, **kwargs: Any) -> Any:
    params = kwargs.pop("params", {})
    return client.post(
        "/recognize", files={"file": ("code.png", data, "image/png")}, params=params, **kwargs
    )


def predict(client: TestClient, data: bytes | None = None, **kwargs: Any) -> Any:
    files = {"file": ("digit.png", data or digit_png(), "image/png")}
    return client.post("/predict", files=files, **kwargs)


def error_of(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert error["code"] == code, error
    assert len(error["message"]) > 20, error
    return error


def metric(client: TestClient, name: str, **labels: str) -> float | None:
    """One sample of the Prometheus text /metrics answers (None when absent)."""
    text = client.get("/metrics", headers={"Accept": "text/plain"}).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return None


def claim(client: TestClient, reviewer: str = "alice", **body: Any) -> Any:
    return client.post("/reviews/claim", json={"reviewer": reviewer, **body})


# --- which readings are stored, and what the answers say ---------------------------------------


def test_a_flagged_reading_is_stored_as_uploaded_and_answered(client_on: TestClient) -> None:
    data = encode(as_photo(draw_string([seven, zero, one])[0]), "JPEG", quality=90)
    response = recognize(
        client_on,
        data,
        params={"expected_length": 3},
        headers={"X-Client-Ref": "form 17/B", "X-Request-ID": "req-abc"},
    )
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["needs_review"] is True
    assert answer["queue"] == "queued"
    review_id = answer["review_id"]
    assert isinstance(review_id, str)
    assert len(review_id) >= 20
    # review_id and queue close the answer.
    assert list(answer)[-2:] == ["review_id", "queue"]

    item = client_on.get(f"/reviews/{review_id}").json()
    assert item["kind"] == "flagged"
    assert item["endpoint"] == "/recognize"
    assert item["status"] == "pending"
    assert item["model_version"] == 1
    assert item["client_ref"] == "form 17/B"
    assert item["request_id"] == "req-abc"
    assert item["expected_length"] == 3
    assert item["has_image"] is True
    assert item["result"] is None
    # The answer as given, before it learnt its own review id.
    assert item["reading"] == {k: v for k, v in answer.items() if k not in ("review_id", "queue")}

    image = client_on.get(f"/reviews/{review_id}/image")
    assert image.status_code == 200
    assert image.content == data  # the original bytes, not a re-encoding
    assert image.headers["content-type"] == "image/jpeg"  # sniffed, not the client's word
    assert image.headers["cache-control"] == "no-store"
    assert image.headers["x-content-type-options"] == "nosniff"


def test_predict_stores_a_flagged_reading_only_when_asked(start: Start) -> None:
    client = start()
    flagged = predict(client).json()
    assert flagged["needs_review"] is True
    assert (flagged["review_id"], flagged["queue"]) == (None, None)

    asked = predict(client, params={"queue": "true"}).json()
    assert asked["queue"] == "queued"
    item = client.get(f"/reviews/{asked['review_id']}").json()
    assert item["endpoint"] == "/predict"
    reading = item["reading"]
    # The answer as given, with the string form every item has.
    assert reading["digit"] == 1
    assert reading["model_version"] == 1
    assert reading["digits"] == "1"
    assert reading["segments"] == [
        {
            "digit": 1,
            "confidence": reading["confidence"],
            "probabilities": reading["probabilities"],
            "box": None,
        }
    ]

    by_setting = start(review_queue_predict=True)
    assert predict(by_setting).json()["queue"] == "queued"


def test_recognize_stores_flagged_readings_unless_turned_off(start: Start) -> None:
    assert recognize(start(), code_png()).json()["queue"] == "queued"
    off = recognize(start(review_queue_recognize=False), code_png()).json()
    assert off["needs_review"] is True
    assert (off["review_id"], off["queue"]) == (None, None)


def test_accepted_answers_are_sampled_for_audit(start: Start, plain_calls: list[bool]) -> None:
    # The operator's threshold of 0.5 accepts the tiny model's answers, on the short cut too.
    audited = start(review_threshold=0.5, review_audit_share=1.0)
    answer = predict(audited).json()
    assert plain_calls == [True]
    assert answer["needs_review"] is False
    assert answer["queue"] == "audit"
    assert audited.get(f"/reviews/{answer['review_id']}").json()["kind"] == "audit"
    string = recognize(audited, code_png()).json()
    assert (string["needs_review"], string["queue"]) == (False, "audit")

    never = start(review_threshold=0.5, review_audit_share=0.0)
    for _ in range(20):
        assert predict(never).json()["queue"] is None
    assert never.get("/reviews/stats").json()["waiting"] == 0


def test_flagged_answers_are_never_audit_samples(start: Start) -> None:
    # Flagged and not stored for /predict: no audit draw either (audits are of accepted ones).
    client = start(review_audit_share=1.0)
    assert predict(client).json()["queue"] is None


def test_a_batch_stores_its_readings_in_one_go(start: Start) -> None:
    client = start()
    files = [
        ("files", ("a.png", digit_png(), "image/png")),
        ("files", ("b.txt", b"not an image", "text/plain")),
        ("files", ("c.png", digit_png(40), "image/png")),
    ]
    body = client.post("/predict/batch", files=files, params={"queue": "true"}).json()
    first, broken, last = body["results"]
    assert broken["prediction"] is None
    assert "review_id" not in broken
    ids = [first["prediction"]["review_id"], last["prediction"]["review_id"]]
    assert [first["prediction"]["queue"], last["prediction"]["queue"]] == ["queued", "queued"]
    assert len(set(ids)) == 2
    # Claimed in the order sent.
    claimed = [claim(client).json()["review_id"] for _ in ids]
    assert claimed == ids
    images = [client.get(f"/reviews/{i}/image").content for i in ids]
    assert images == [files[0][1][1], files[2][1][1]]

    strings = client.post(
        "/recognize/batch",
        files=[
            ("files", ("x.png", code_png(), "image/png")),
            ("files", ("y.png", b"", "image/png")),
        ],
        headers={"X-Client-Ref": "batch-9"},
    ).json()
    reading = strings["results"][0]["reading"]
    assert reading["queue"] == "queued"
    assert client.get(f"/reviews/{reading['review_id']}").json()["client_ref"] == "batch-9"
    assert strings["results"][1]["reading"] is None


def test_requests_storing_at_once_share_a_write(database_url: str) -> None:
    async def scenario() -> tuple[list[list[Any]], int]:
        intake = ReviewIntake(
            make_settings(Path("unused"), review_database_url=database_url), Telemetry()
        )
        intake.start()
        await intake.wait_started()
        queue = intake.queue
        assert queue is not None
        writes = 0
        real = queue.enqueue_many

        def counted(items: Any) -> list[str]:
            nonlocal writes
            writes += 1
            return real(items)

        queue.enqueue_many = counted  # type: ignore[method-assign]
        item = intake.item(Kind.FLAGGED, "/predict", digit_png(), {"digits": "1"}, "1", 1, None)
        try:
            answers = await asyncio.gather(*(intake.store([item] * n) for n in (1, 2, 1, 3, 1)))
        finally:
            await intake.stop()
        return [list(a) for a in answers], writes

    answers, writes = asyncio.run(scenario())
    assert [len(a) for a in answers] == [1, 2, 1, 3, 1]
    ids = [review_id for answer in answers for review_id, queue in answer if queue == "queued"]
    assert len(set(ids)) == 8
    # The five requests that stored at once: one transaction, each its own ids.
    assert writes == 1


# --- X-Client-Ref ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "complaint"),
    [
        ("x" * 201, "200"),
        ("café".encode("latin-1"), "printable ASCII"),
        ("a\tb", "printable ASCII"),
    ],
)
def test_a_client_reference_must_be_short_printable_ascii(
    start: Start, value: str | bytes, complaint: str
) -> None:
    client = start()
    headers = {"X-Client-Ref": value}
    for response in (
        predict(client, headers=headers),  # the short cut
        predict(client, headers=headers, params={"queue": "true"}),
        recognize(client, code_png(), headers=headers),
        client.post("/recognize/batch", files=[("files", ("x.png", code_png()))], headers=headers),
    ):
        error = error_of(response, 422, "invalid_request")
        assert "X-Client-Ref" in error["message"]
        assert complaint in error["message"]
    assert client.get("/reviews/stats").json()["waiting"] == 0


def test_a_client_reference_is_sent_once(start: Start) -> None:
    client = start()
    response = client.post(
        "/recognize",
        files={"file": ("c.png", code_png())},
        headers=[("X-Client-Ref", "a"), ("X-Client-Ref", "b")],
    )
    assert "once" in error_of(response, 422, "invalid_request")["message"]
    assert recognize(client, code_png(), headers={"X-Client-Ref": "x" * 200}).status_code == 200


# --- the reviewers' round ----------------------------------------------------------------------


def test_claim_key_and_submit(client_on: TestClient) -> None:
    client = client_on
    assert claim(client).status_code == 204
    review_id = recognize(client, code_png()).json()["review_id"]

    held = claim(client, "alice")
    assert held.status_code == 200
    item = held.json()
    assert item["review_id"] == review_id
    assert item["status"] == "claimed"
    assert item["lease_expires"] is not None
    lease = item["lease"]
    assert claim(client, "bob").status_code == 204  # nobody else gets it

    # Another reviewer, without the lease: refused.
    error_of(
        client.post(f"/reviews/{review_id}", json={"reviewer": "bob", "digits": "701"}),
        409,
        "review_held_by_another",
    )
    error_of(
        client.post(
            f"/reviews/{review_id}", json={"lease": "forged", "reviewer": "bob", "digits": "7"}
        ),
        409,
        "review_held_by_another",
    )
    done = client.post(
        f"/reviews/{review_id}", json={"lease": lease, "reviewer": "alice", "digits": "701"}
    )
    assert done.status_code == 200, done.text
    keyed = done.json()
    assert keyed["status"] == "done"
    assert keyed["reviewer"] == "alice"
    assert keyed["result"] == {"verdict": "digits", "digits": "701", "reading_was_correct": False}

    # The same answer again is answered the same; another is refused.
    again = client.post(
        f"/reviews/{review_id}", json={"lease": lease, "reviewer": "alice", "digits": "701"}
    )
    assert again.status_code == 200
    assert again.json()["result"] == keyed["result"]
    error = error_of(
        client.post(
            f"/reviews/{review_id}", json={"lease": lease, "reviewer": "alice", "digits": "711"}
        ),
        409,
        "already_reviewed",
    )
    assert error["details"]["result"] == {"verdict": "digits", "digits": "701"}
    assert claim(client).status_code == 204

    # The client sees the result.
    result = client.get(f"/reviews/{review_id}/result").json()
    assert result["status"] == "done"
    assert result["result"]["digits"] == "701"
    assert result["reading"]["digits"] == "111"


def test_corrections_and_verdicts(client_on: TestClient) -> None:
    client = client_on
    ids = [recognize(client, code_png()).json()["review_id"] for _ in range(3)]
    leases = {}
    for _ in ids:
        item = claim(client).json()
        leases[item["review_id"]] = item["lease"]

    def submit(review_id: str, **body: Any) -> Any:
        return client.post(
            f"/reviews/{review_id}", json={"lease": leases[review_id], "reviewer": "a@b.c", **body}
        )

    corrected = submit(
        ids[0], corrections=[{"position": 0, "digit": 7}, {"position": 1, "digit": 0}]
    )
    assert corrected.json()["result"]["digits"] == "701"
    same = submit(ids[1], corrections=[{"position": 2, "digit": 1}])
    assert same.json()["result"] == {
        "verdict": "digits",
        "digits": "111",
        "reading_was_correct": True,
    }
    unreadable = submit(ids[2], verdict="unreadable")
    assert unreadable.json()["result"] == {
        "verdict": "unreadable",
        "digits": None,
        "reading_was_correct": False,
    }


@pytest.mark.parametrize(
    ("body", "status", "code", "words"),
    [
        ({"digits": "7a1"}, 422, "invalid_review", "digits 0-9"),
        ({"corrections": [{"position": 3, "digit": 7}]}, 422, "invalid_review", "outside"),
        ({"digits": "701", "verdict": "unreadable"}, 422, "invalid_review", "exactly one"),
        ({}, 422, "invalid_review", "exactly one"),
        ({"verdict": "digits"}, 422, "invalid_review", "exactly one"),
        ({"digits": "7011"}, 422, "invalid_review", "3 digits"),
        ({"digits": 701}, 422, "invalid_request", "digits"),
        ({"corrections": [{"position": 0, "digit": 10}]}, 422, "invalid_request", "digit"),
        ({"digit": "7"}, 422, "invalid_request", "not one this endpoint takes"),
        ({"verdict": "maybe"}, 422, "invalid_request", "verdict"),
    ],
)
def test_a_bad_result_is_refused_with_a_reason(
    start: Start, body: dict[str, Any], status: int, code: str, words: str
) -> None:
    client = start()
    recognize(client, code_png(), params={"expected_length": 3})
    item = claim(client).json()
    response = client.post(
        f"/reviews/{item['review_id']}", json={"lease": item["lease"], "reviewer": "al", **body}
    )
    assert words in error_of(response, status, code)["message"]
    assert client.get(f"/reviews/{item['review_id']}").json()["status"] == "claimed"


def test_malformed_requests_say_what_is_wrong(start: Start) -> None:
    client = start()
    assert "missing" in error_of(client.post("/reviews/claim"), 422, "invalid_request")["message"]
    broken = client.post(
        "/reviews/claim", content=b"{", headers={"Content-Type": "application/json"}
    )
    assert "not valid JSON" in error_of(broken, 422, "invalid_request")["message"]
    assert "1 to 64" in error_of(claim(client, "a b"), 422, "invalid_review")["message"]
    error_of(claim(client, kind="other"), 422, "invalid_request")
    error_of(client.get("/reviews/not an id"), 422, "invalid_request")
    error_of(client.get("/reviews/nosuchitem"), 404, "review_not_found")
    error_of(client.get("/reviews", params={"limit": 0}), 422, "invalid_request")
    error_of(client.get("/reviews", params={"after": "nosuchitem"}), 404, "review_not_found")


def test_an_expired_lease_returns_the_item_to_the_queue(start: Start, database_url: str) -> None:
    short = start(review_database_url=database_url, review_lease_seconds=0.3)
    review_id = recognize(short, code_png()).json()["review_id"]
    first = claim(short, "alice").json()
    time.sleep(0.4)
    error_of(
        short.post(
            f"/reviews/{review_id}",
            json={"lease": first["lease"], "reviewer": "alice", "digits": "1"},
        ),
        409,
        "lease_expired",
    )
    second = claim(short, "bob").json()
    assert second["review_id"] == review_id
    assert second["lease"] != first["lease"]
    assert short.get("/reviews/stats").json()["claimed"] == 1


def test_a_reviewer_may_give_an_item_back(client_on: TestClient) -> None:
    client = client_on
    review_id = recognize(client, code_png()).json()["review_id"]
    item = claim(client).json()
    error_of(
        client.post(f"/reviews/{review_id}/release", json={"lease": "not-it"}), 409, "lease_expired"
    )
    released = client.post(f"/reviews/{review_id}/release", json={"lease": item["lease"]})
    assert released.status_code == 204
    assert client.get(f"/reviews/{review_id}").json()["status"] == "pending"
    assert claim(client, "bob").json()["review_id"] == review_id
    error_of(client.post("/reviews/nosuch/release", json={"lease": "x"}), 404, "review_not_found")


def test_items_are_listed_and_counted(client_on: TestClient) -> None:
    client = client_on
    ids = [recognize(client, code_png()).json()["review_id"] for _ in range(5)]
    page = client.get("/reviews", params={"limit": 2}).json()
    assert [i["review_id"] for i in page["items"]] == ids[:2]
    rest = client.get("/reviews", params={"after": page["next"], "limit": 10}).json()
    assert [i["review_id"] for i in rest["items"]] == ids[2:]
    assert rest["next"] is None
    claim(client)
    claimed = client.get("/reviews", params={"status": "claimed"}).json()["items"]
    assert [i["review_id"] for i in claimed] == ids[:1]
    assert client.get("/reviews", params={"kind": "audit"}).json()["items"] == []
    stats = client.get("/reviews/stats").json()
    assert (stats["waiting"], stats["claimed"], stats["done"], stats["expired"]) == (4, 1, 0, 0)
    assert stats["by_kind"]["flagged"]["waiting"] == 4
    assert stats["oldest_waiting_seconds"] >= 0


# --- retention and deletion --------------------------------------------------------------------


def test_images_past_retention_are_purged_by_the_service(models: ModelsDir, tmp_path: Path) -> None:
    models.add(1, digit=1)
    # 0.5 s of retention, purged every 0.1 s by the app's own background work.
    settings = make_settings(
        models.path, data_dir=tmp_path / "data", review_retention_days=0.5 / 86400
    )
    app = create_app(settings)
    app.state.reviews.purge_seconds = 0.1
    with TestClient(app) as client:
        kept = claim_and_key(client)
        review_id = recognize(client, code_png()).json()["review_id"]
        deadline = time.monotonic() + 20
        while client.get(f"/reviews/{review_id}").json()["has_image"]:
            assert time.monotonic() < deadline, "never purged"
            time.sleep(0.1)
        item = client.get(f"/reviews/{review_id}").json()
        assert item["status"] == "expired"
        error_of(client.get(f"/reviews/{review_id}/image"), 410, "review_image_deleted")
        assert claim(client).status_code == 204
        # A keyed item keeps its result without its image.
        done = client.get(f"/reviews/{kept}").json()
        assert (done["status"], done["has_image"]) == ("done", False)
        assert done["result"]["digits"] == "111"
        assert client.get("/reviews/stats").json()["expired"] == 1


def claim_and_key(client: TestClient, digits: str = "111") -> str:
    recognize(client, code_png())
    item = claim(client).json()
    response = client.post(
        f"/reviews/{item['review_id']}",
        json={"lease": item["lease"], "reviewer": "alice", "digits": digits},
    )
    assert response.status_code == 200, response.text
    return str(item["review_id"])


def test_an_item_may_be_deleted_for_good(client_on: TestClient) -> None:
    client = client_on
    review_id = recognize(client, code_png()).json()["review_id"]
    assert client.delete(f"/reviews/{review_id}").status_code == 204
    error_of(client.get(f"/reviews/{review_id}"), 404, "review_not_found")
    error_of(client.get(f"/reviews/{review_id}/image"), 404, "review_not_found")
    error_of(client.get(f"/reviews/{review_id}/result"), 404, "review_not_found")
    error_of(client.delete(f"/reviews/{review_id}"), 404, "review_not_found")
    assert client.get("/reviews/stats").json()["waiting"] == 0


# --- access --------------------------------------------------------------------------------------

REVIEWER_CALLS: list[tuple[str, str, dict[str, Any] | None]] = [
    ("POST", "/reviews/claim", {"reviewer": "alice"}),
    ("GET", "/reviews", None),
    ("GET", "/reviews/stats", None),
    ("GET", "/reviews/{id}", None),
    ("GET", "/reviews/{id}/image", None),
    ("POST", "/reviews/{id}", {"reviewer": "alice", "digits": "111"}),
    ("POST", "/reviews/{id}/release", {"lease": "x"}),
    ("DELETE", "/reviews/{id}", None),
]


def call(client: TestClient, method: str, path: str, body: Any, key: str | None, rid: str) -> Any:
    headers = {"X-API-Key": key} if key is not None else {}
    return client.request(method, path.format(id=rid), json=body, headers=headers)


@pytest.mark.parametrize(("method", "path", "body"), REVIEWER_CALLS)
def test_reviewer_endpoints_take_the_reviewers_key(
    start: Start, method: str, path: str, body: Any
) -> None:
    client = start(api_key=CLIENT_KEY, reviewer_api_key=REVIEWER_KEY)
    rid = recognize(client, code_png(), headers={"X-API-Key": CLIENT_KEY}).json()["review_id"]
    error_of(call(client, method, path, body, None, rid), 401, "missing_api_key")
    error_of(call(client, method, path, body, "wrong", rid), 401, "invalid_api_key")
    error = error_of(
        call(client, method, path, body, CLIENT_KEY, rid), 403, "reviewer_key_required"
    )
    assert "DIGITS_REVIEWER_API_KEY" in error["message"]
    allowed = call(client, method, path, body, REVIEWER_KEY, rid)
    assert allowed.status_code < 401 or allowed.status_code == 409, allowed.text


@pytest.mark.parametrize(("method", "path", "body"), REVIEWER_CALLS)
def test_reviews_are_closed_with_a_client_key_and_no_reviewers_key(
    start: Start, method: str, path: str, body: Any
) -> None:
    client = start(api_key=CLIENT_KEY)
    rid = recognize(client, code_png(), headers={"X-API-Key": CLIENT_KEY}).json()["review_id"]
    for key in (None, CLIENT_KEY, "anything"):
        error = error_of(call(client, method, path, body, key, rid), 403, "reviews_closed")
        assert "DIGITS_REVIEWER_API_KEY" in error["message"]


@pytest.mark.parametrize(("method", "path", "body"), REVIEWER_CALLS)
def test_without_any_key_reviews_are_open(start: Start, method: str, path: str, body: Any) -> None:
    client = start()
    rid = recognize(client, code_png()).json()["review_id"]
    response = call(client, method, path, body, None, rid)
    assert response.status_code < 401 or response.status_code == 409, response.text


def test_a_readings_result_takes_the_client_key(start: Start) -> None:
    client = start(api_key=CLIENT_KEY, reviewer_api_key=REVIEWER_KEY)
    rid = recognize(client, code_png(), headers={"X-API-Key": CLIENT_KEY}).json()["review_id"]
    path = f"/reviews/{rid}/result"
    error_of(client.get(path), 401, "missing_api_key")
    error_of(client.get(path, headers={"X-API-Key": "wrong"}), 401, "invalid_api_key")
    for key in (CLIENT_KEY, REVIEWER_KEY):
        answer = client.get(path, headers={"X-API-Key": key})
        assert answer.status_code == 200
        assert answer.json()["status"] == "pending"
    # The reviewers' key reads results but makes no readings.
    error_of(
        recognize(client, code_png(), headers={"X-API-Key": REVIEWER_KEY}), 401, "invalid_api_key"
    )


def test_the_document_says_which_routes_take_a_key(start: Start) -> None:
    def security(client: TestClient) -> dict[str, bool]:
        paths = client.get("/openapi.json").json()["paths"]
        return {
            "claim": "security" in paths["/reviews/claim"]["post"],
            "result": "security" in paths["/reviews/{review_id}/result"]["get"],
            "predict": "security" in paths["/predict"]["post"],
        }

    assert security(start()) == {"claim": False, "result": False, "predict": False}
    assert security(start(reviewer_api_key=REVIEWER_KEY)) == {
        "claim": True,
        "result": False,
        "predict": False,
    }
    assert security(start(api_key=CLIENT_KEY, reviewer_api_key=REVIEWER_KEY)) == {
        "claim": True,
        "result": True,
        "predict": True,
    }
    document = start().get("/openapi.json").json()
    assert "reviews" in {tag["name"] for tag in document["tags"]}
    predict_answer = document["components"]["schemas"]["PredictResponse"]["properties"]
    assert {"review_id", "queue"} <= set(predict_answer)


# --- the audit figures ---------------------------------------------------------------------------


def test_keyed_audits_give_the_error_with_its_interval(start: Start, database_url: str) -> None:
    client = start(review_database_url=database_url, review_threshold=0.5, review_audit_share=1.0)
    for _ in range(3):
        assert predict(client).json()["queue"] == "audit"
    keyed = ["1", "1", "7"]  # the tiny model answers 1: one of three wrong
    for digits in keyed:
        item = claim(client, kind="audit").json()
        response = client.post(
            f"/reviews/{item['review_id']}",
            json={"lease": item["lease"], "reviewer": "alice", "digits": digits},
        )
        assert response.status_code == 200
    low, high = wilson_interval(1, 3)
    audit = client.get("/model").json()["audit"]
    assert audit == [
        {
            "model_version": 1,
            "reviewed": 3,
            "wrong": 1,
            "error_rate": pytest.approx(1 / 3),
            "low": pytest.approx(low),
            "high": pytest.approx(high),
        }
    ]
    assert 0 < low < 1 / 3 < high < 1
    review_queue = client.get("/model").json()["review_queue"]
    assert (review_queue["available"], review_queue["done"], review_queue["waiting"]) == (
        True,
        3,
        0,
    )

    assert metric(client, "digits_audit_reviewed", version="1") == 3
    assert metric(client, "digits_audit_wrong", version="1") == 1
    assert metric(
        client, "digits_audit_error_rate", version="1", bound="estimate"
    ) == pytest.approx(1 / 3)
    assert metric(client, "digits_audit_error_rate", version="1", bound="low") == pytest.approx(low)
    assert metric(client, "digits_audit_error_rate", version="1", bound="high") == pytest.approx(
        high
    )
    assert metric(client, "digits_review_queue_items", status="done") == 3
    assert metric(client, "digits_review_queued_total", kind="audit") == 3
    assert metric(client, "digits_review_queue_available") == 1


def test_the_figures_are_read_at_most_every_few_seconds(start: Start) -> None:
    client = start()
    assert metric(client, "digits_review_queue_items", status="waiting") == 0
    recognize(client, code_png())
    # Within the figures' 10 s the scrape answers from what it read.
    assert metric(client, "digits_review_queue_items", status="waiting") == 0
    # /model reads the database every time.
    assert client.get("/model").json()["review_queue"]["waiting"] == 1


# --- a database that fails or fills ----------------------------------------------------------


def closed_port_url() -> str:
    return f"postgresql+psycopg://nobody@127.0.0.1:{free_port()}/nowhere"


def test_a_database_that_is_down_never_fails_a_reading(
    start: Start, app_logs: pytest.LogCaptureFixture
) -> None:
    client = start(review_database_url=closed_port_url(), review_audit_share=1.0)
    data = code_png()
    answer = recognize(client, data)
    assert answer.status_code == 200
    assert (answer.json()["review_id"], answer.json()["queue"]) == (None, "not_queued")
    accepted = predict(client, params={"threshold": "0.5"}).json()
    assert (accepted["needs_review"], accepted["queue"]) == (False, "not_queued")
    assert client.get("/health/ready").status_code == 200
    assert metric(client, "digits_review_not_queued_total", reason="unavailable") == 2
    assert metric(client, "digits_review_queue_available") == 0
    error = error_of(client.get("/reviews/stats"), 503, "review_queue_unavailable")
    assert "OperationalError" in error["message"]
    assert int(client.get("/reviews/stats").headers["Retry-After"]) >= 1
    review_queue = client.get("/model").json()["review_queue"]
    assert review_queue["available"] is False
    assert "OperationalError" in review_queue["reason"]
    # Said clearly in the log, without the image.
    assert "not available" in app_logs.text
    assert "not queued" in app_logs.text
    assert repr(data)[2:40] not in app_logs.text


def test_a_database_that_comes_up_later_is_used(
    models: ModelsDir, tmp_path: Path, app_logs: pytest.LogCaptureFixture
) -> None:
    models.add(1, digit=1)
    blocker = tmp_path / "data"
    blocker.write_text("a file where the data directory should be")
    app = create_app(make_settings(models.path, data_dir=blocker / "inside"))
    app.state.reviews.retry_seconds = 0.1
    with TestClient(app) as client:
        assert recognize(client, code_png()).json()["queue"] == "not_queued"
        blocker.unlink()
        deadline = time.monotonic() + 20
        while (queue := recognize(client, code_png()).json()["queue"]) != "queued":
            assert queue == "not_queued"
            assert time.monotonic() < deadline, "the queue never opened"
            time.sleep(0.1)
        assert client.get("/reviews/stats").json()["waiting"] == 1
    assert "available again" in app_logs.text


def test_a_postgresql_created_after_the_start_is_migrated_and_used(models: ModelsDir) -> None:
    models.add(1, digit=1)
    server = postgres_server()
    name = f"digits_late_{free_port()}"
    url = make_url(server).set(database=name).render_as_string(hide_password=False)
    app = create_app(make_settings(models.path, review_database_url=url))
    app.state.reviews.retry_seconds = 0.1
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    try:
        with TestClient(app) as client:
            assert recognize(client, code_png()).json()["queue"] == "not_queued"
            with admin.connect() as connection:
                connection.execute(text(f'CREATE DATABASE "{name}"'))
            deadline = time.monotonic() + 20
            while recognize(client, code_png()).json()["queue"] != "queued":
                assert time.monotonic() < deadline, "the queue never opened"
                time.sleep(0.1)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def test_a_database_that_lost_its_table_but_not_its_revision_is_set_aside(
    start: Start, tmp_path: Path
) -> None:
    # The real-server tests (tests/ops/test_review_queue.py) cover a database dropped whole;
    # here only the queue's table goes, so the revision alone would call the database fine.
    client = start(review_retry_seconds=0.1)
    assert recognize(client, code_png()).json()["queue"] == "queued"
    database = tmp_path / "data-0" / "reviews.sqlite3"
    with sqlite3.connect(database) as connection:
        connection.execute("DROP TABLE review_items")
    connection.close()
    deadline = time.monotonic() + 20
    while True:
        assert recognize(client, code_png()).json()["queue"] == "not_queued"
        review_queue = client.get("/model").json()["review_queue"]
        if "DamagedError" in (review_queue["reason"] or ""):
            break
        assert time.monotonic() < deadline, review_queue
        time.sleep(0.1)
    error = error_of(client.get("/reviews/stats"), 503, "review_queue_unavailable")
    assert "DamagedError" in error["message"]
    # As the log advises: without its revision the check applies the migrations again.
    with sqlite3.connect(database) as connection:
        connection.execute("DROP TABLE alembic_version")
    connection.close()
    while recognize(client, code_png()).json()["queue"] != "queued":
        assert time.monotonic() < deadline, "the queue never came back"
        time.sleep(0.1)
    assert client.get("/reviews/stats").json()["waiting"] == 1


def test_a_queue_not_migrated_is_not_used_until_it_is(start: Start, database_url: str) -> None:
    client = start(review_database_url=database_url, review_migrate=False)
    assert recognize(client, code_png()).json()["queue"] == "not_queued"
    error = error_of(client.get("/reviews/stats"), 503, "review_queue_unavailable")
    assert "NotMigrated" in error["message"]
    reason = client.get("/model").json()["review_queue"]["reason"]
    assert "NotMigrated" in reason


def test_a_database_url_that_cannot_work_is_said_once(
    start: Start, app_logs: pytest.LogCaptureFixture
) -> None:
    client = start(review_database_url="mysql://user@127.0.0.1/digits")
    assert recognize(client, code_png()).json()["queue"] == "not_queued"
    assert "SQLite or PostgreSQL" in app_logs.text
    assert "restart" in app_logs.text
    error_of(client.get("/reviews/stats"), 503, "review_queue_unavailable")


def test_a_full_queue_answers_not_queued(start: Start) -> None:
    client = start(review_max_items=1)
    assert recognize(client, code_png()).json()["queue"] == "queued"
    full = recognize(client, code_png())
    assert full.status_code == 200
    assert full.json()["queue"] == "not_queued"
    assert metric(client, "digits_review_not_queued_total", reason="full") == 1


def test_the_queue_may_be_turned_off(start: Start) -> None:
    client = start(review_queue=False, review_audit_share=1.0)
    assert recognize(client, code_png()).json()["queue"] is None
    assert predict(client, params={"threshold": "0.5"}).json()["queue"] is None
    error = error_of(client.get("/reviews/stats"), 503, "review_queue_off")
    assert "Retry-After" not in client.get("/reviews/stats").headers
    assert "DIGITS_REVIEW_QUEUE" in error["message"]
    assert client.get("/model").json()["review_queue"]["enabled"] is False
    assert metric(client, "digits_review_queue_available") is None


def test_the_images_sniffed_type_is_kept(start: Start) -> None:
    client = start(review_queue_predict=True)
    stroke = Image.open(io.BytesIO(digit_png())).convert("L")
    for fmt, content_type in (
        ("PNG", "image/png"),
        ("GIF", "image/gif"),
        ("BMP", "image/bmp"),
        ("WEBP", "image/webp"),
    ):
        data = encode(stroke, fmt)
        answer = predict(client, data).json()
        assert answer["queue"] == "queued", (fmt, answer)
        image = client.get(f"/reviews/{answer['review_id']}/image")
        assert image.headers["content-type"] == content_type
        assert image.content == data
