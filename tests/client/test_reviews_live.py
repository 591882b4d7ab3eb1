"""The client's review-queue calls against the real service: a reading queued, claimed, keyed,
fetched by its client; the access rules; the command line's review ids and queue counts."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from digits_client import ApiError, AsyncClient, Client

from harness.servers import RunningServer
from tests.client.conftest import EXAMPLES, rows, run_cli, start_server

pytestmark = pytest.mark.slow

CLIENT_KEY = "client-key-for-reviews"
REVIEWER_KEY = "reviewer-key-for-reviews"
CODE = (EXAMPLES / "postal-code.png").read_bytes()
DIGIT = (EXAMPLES / "digit-7.png").read_bytes()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    folder = tmp_path_factory.mktemp("reviews")
    running = start_server(
        folder / "server.log",
        {
            "DIGITS_API_KEY": CLIENT_KEY,
            "DIGITS_REVIEWER_API_KEY": REVIEWER_KEY,
            "DIGITS_DATA_DIR": str(folder / "data"),
            "DIGITS_REVIEW_AUDIT_SHARE": "0",
        },
    )
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def clients(server: RunningServer) -> Iterator[tuple[Client, Client]]:
    with (
        Client(server.url, api_key=CLIENT_KEY) as client,
        Client(server.url, api_key=REVIEWER_KEY) as reviewer,
    ):
        yield client, reviewer


def drain(reviewer: Client) -> None:
    """Key everything waiting, so each test starts from an empty queue."""
    while (item := reviewer.claim_review("drainer")) is not None:
        reviewer.submit_review(
            item.review_id, lease=item.lease, reviewer="drainer", verdict="unreadable"
        )


def test_a_flagged_reading_goes_round_the_queue(clients: tuple[Client, Client]) -> None:
    client, reviewer = clients
    drain(reviewer)
    reading = client.recognize(CODE, expected_length=6, client_ref="form-17")
    assert reading.needs_review
    assert reading.queue == "queued"
    assert reading.review_id is not None

    item = reviewer.claim_review("alice")
    assert item is not None
    assert item.review_id == reading.review_id
    assert (item.client_ref, item.expected_length, item.reading.digits) == (
        "form-17",
        6,
        reading.digits,
    )
    image = reviewer.review_image(item.review_id)
    assert (image.data, image.content_type) == (CODE, "image/png")
    assert reviewer.claim_review("bob") is None, "one item, already held"

    outcome = client.review_result(reading.review_id)
    assert (outcome.status, outcome.result) == ("claimed", None)

    done = reviewer.submit_review(
        item.review_id, lease=item.lease, reviewer="alice", digits="750110"
    )
    again = reviewer.submit_review(
        item.review_id, lease=item.lease, reviewer="alice", digits="750110"
    )
    assert done.result is not None
    assert again.result == done.result
    with pytest.raises(ApiError) as error:
        reviewer.submit_review(item.review_id, lease=item.lease, reviewer="alice", digits="123456")
    assert (error.value.status, error.value.code) == (409, "already_reviewed")

    outcome = client.review_result(reading.review_id)
    assert outcome.status == "done"
    assert outcome.result is not None
    assert outcome.result.digits == "750110"
    assert reviewer.get_review(item.review_id).reviewer == "alice"


def test_listing_stats_and_deleting(clients: tuple[Client, Client]) -> None:
    client, reviewer = clients
    drain(reviewer)
    ids = [client.recognize(CODE, expected_length=3).review_id for _ in range(3)]
    assert None not in ids
    stats = reviewer.review_stats()
    assert stats.waiting == 3
    assert stats.by_kind["flagged"].waiting == 3
    first = reviewer.list_reviews(status="pending", limit=2)
    assert first.next is not None
    second = reviewer.list_reviews(status="pending", limit=2, after=first.next)
    assert [i.review_id for i in first.items + second.items] == ids
    reviewer.delete_review(ids[0])
    with pytest.raises(ApiError) as error:
        reviewer.get_review(ids[0])
    assert (error.value.status, error.value.code) == (404, "review_not_found")
    assert reviewer.review_stats().waiting == 2


def test_predict_queues_a_flagged_digit_only_when_asked(clients: tuple[Client, Client]) -> None:
    client, reviewer = clients
    drain(reviewer)
    plain = client.predict(CODE)  # a string sent as one digit: flagged (several digits)
    assert plain.needs_review
    assert plain.queue is None
    assert plain.review_id is None
    asked = client.predict(CODE, queue=True)
    assert asked.queue == "queued"
    assert asked.review_id is not None
    assert reviewer.get_review(asked.review_id).endpoint == "/predict"


def test_reviewers_calls_need_the_reviewers_key(clients: tuple[Client, Client]) -> None:
    client, reviewer = clients
    with pytest.raises(ApiError) as error:
        client.review_stats()
    assert (error.value.status, error.value.code) == (403, "reviewer_key_required")
    with pytest.raises(ApiError) as error:
        client.claim_review("mallory")
    assert error.value.status == 403
    reading = client.recognize(CODE, expected_length=6)
    assert reading.review_id is not None
    # A reading's result is the client's to fetch.
    assert client.review_result(reading.review_id).review_id == reading.review_id
    drain(reviewer)


def test_the_async_client_claims_too(server: RunningServer, clients: tuple[Client, Client]) -> None:
    client, reviewer = clients
    drain(reviewer)
    queued = client.recognize(CODE, expected_length=6).review_id

    async def claim() -> str | None:
        async with AsyncClient(server.url, api_key=REVIEWER_KEY) as async_reviewer:
            item = await async_reviewer.claim_review("carol")
            return None if item is None else item.review_id

    assert asyncio.run(claim()) == queued
    drain(reviewer)


def test_the_command_line_writes_review_ids_and_shows_the_counts(
    server: RunningServer, clients: tuple[Client, Client], tmp_path: Path
) -> None:
    _, reviewer = clients
    drain(reviewer)
    folder = tmp_path / "scans"
    folder.mkdir()
    (folder / "code.png").write_bytes(CODE)
    out = tmp_path / "out.jsonl"
    env = {"DIGITS_URL": server.url, "DIGITS_API_KEY": CLIENT_KEY}
    result = run_cli("read", folder, "--recognize", "--expected-length", "6", "--out", out, env=env)
    assert result.exit_code == 0, result.stderr
    (row,) = rows(out)
    assert row["review_id"]
    assert row["needs_review"]

    shown = run_cli("reviews", "stats", env={**env, "DIGITS_API_KEY": REVIEWER_KEY})
    assert shown.exit_code == 0, shown.stderr
    assert json.loads(shown.stdout)["waiting"] == 1
    refused = run_cli("reviews", "stats", env=env)
    assert refused.exit_code == 2
    drain(reviewer)
