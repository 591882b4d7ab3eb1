"""The review queue on SQLite and PostgreSQL: storing, claims and leases, submissions,
retention, figures."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from app.core.errors import DomainError
from app.reviews.db import Database
from app.reviews.queue import (
    NewItem,
    QueueFullError,
    QueueUnavailableError,
    ReviewQueue,
    Submission,
)
from app.reviews.tables import Kind, Status, Verdict


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


def reading(digits: str) -> dict[str, Any]:
    return {
        "digits": digits,
        "confidence": 0.5,
        "segments": [
            {
                "digit": int(d),
                "confidence": 0.5,
                "box": {"x": 10 * i, "y": 0, "width": 8, "height": 12},
            }
            for i, d in enumerate(digits)
        ],
        "review_reasons": [{"code": "low_confidence", "message": "m", "position": 0}],
    }


def item(digits: str = "75011", kind: Kind = Kind.FLAGGED, **extra: Any) -> NewItem:
    fields: dict[str, Any] = {
        "kind": kind,
        "endpoint": "/recognize",
        "model_version": 1,
        "image": b"\x89PNG fake image bytes " + digits.encode(),
        "image_type": "image/png",
        "reading": reading(digits),
        "reading_digits": digits,
        "request_id": "req-1",
        "client_ref": "form-17",
    }
    fields.update(extra)
    return NewItem(**fields)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def timed(database: Database, clock: Clock) -> ReviewQueue:
    return ReviewQueue(database, clock=clock)


def code_of(error: pytest.ExceptionInfo[DomainError]) -> str:
    return error.value.code


# --- storing -------------------------------------------------------------------------------


def test_a_stored_item_comes_back_as_given(queue: ReviewQueue) -> None:
    review_id = queue.enqueue(item("75011", expected_length=5))
    view = queue.get(review_id)
    assert view.status == Status.PENDING
    assert view.kind == "flagged"
    assert view.reading == reading("75011")
    assert (view.request_id, view.client_ref, view.expected_length) == ("req-1", "form-17", 5)
    assert view.has_image
    assert view.result is None
    assert queue.image(review_id) == (b"\x89PNG fake image bytes 75011", "image/png")
    assert "image" not in view.as_dict()


def test_ids_are_unguessable_and_unknown_ids_are_404(queue: ReviewQueue) -> None:
    ids = {queue.enqueue(item()) for _ in range(20)}
    assert len(ids) == 20
    assert all(len(i) >= 20 for i in ids)
    with pytest.raises(DomainError) as error:
        queue.get("no-such-item")
    assert code_of(error) == "review_not_found"


def test_the_queue_refuses_past_its_size_bound(database: Database) -> None:
    queue = ReviewQueue(database, max_items=3)
    for _ in range(3):
        queue.enqueue(item())
    with pytest.raises(QueueFullError):
        queue.enqueue(item())


def test_a_batch_is_stored_in_one_transaction_and_claimed_in_its_order(
    timed: ReviewQueue,
) -> None:
    ids = timed.enqueue_many([item("1"), item("22", kind=Kind.AUDIT), item("333")])
    assert len(set(ids)) == 3
    assert [timed.get(i).reading["digits"] for i in ids] == ["1", "22", "333"]
    assert timed.get(ids[1]).kind == "audit"
    # Stored at one moment, yet handed out in the order sent.
    claimed = [timed.claim("alice", 60) for _ in ids]
    assert [c.item.review_id for c in claimed if c is not None] == ids
    assert timed.enqueue_many([]) == []


def test_a_batch_is_all_or_nothing(database: Database) -> None:
    queue = ReviewQueue(database, max_items=2)
    queue.enqueue_many([item("1"), item("2")])
    with pytest.raises(QueueFullError):
        queue.enqueue_many([item("3")])
    # A row the database refuses (no image type: NOT NULL) fails the whole batch.
    fresh = ReviewQueue(database)
    before = fresh.stats().waiting
    with pytest.raises(QueueUnavailableError):
        fresh.enqueue_many([item("4"), item("5", image_type=None)])
    assert fresh.stats().waiting == before


# --- claims and leases ---------------------------------------------------------------------


def test_claims_hand_out_the_oldest_first_and_never_one_item_twice(
    timed: ReviewQueue, clock: Clock
) -> None:
    first = timed.enqueue(item("1"))
    clock.advance(seconds=1)
    second = timed.enqueue(item("2"))
    a = timed.claim("alice", 60)
    b = timed.claim("bob", 60)
    assert a is not None
    assert b is not None
    assert (a.item.review_id, b.item.review_id) == (first, second)
    assert a.lease != b.lease
    assert timed.claim("carol", 60) is None


def test_a_claim_may_ask_for_one_kind(timed: ReviewQueue) -> None:
    timed.enqueue(item("1"))
    audit = timed.enqueue(item("2", kind=Kind.AUDIT))
    claimed = timed.claim("alice", 60, kind=Kind.AUDIT)
    assert claimed is not None
    assert claimed.item.review_id == audit


def test_an_expired_lease_returns_the_item_to_the_queue(timed: ReviewQueue, clock: Clock) -> None:
    review_id = timed.enqueue(item())
    held = timed.claim("alice", 60)
    assert held is not None
    assert timed.claim("bob", 60) is None
    clock.advance(seconds=61)
    again = timed.claim("bob", 60)
    assert again is not None
    assert again.item.review_id == review_id
    # Alice's late submission is refused (Bob holds the item now); Bob's goes through.
    with pytest.raises(DomainError) as error:
        timed.submit(review_id, Submission("alice", held.lease, digits="75011"))
    assert code_of(error) == "review_held_by_another"
    done = timed.submit(review_id, Submission("bob", again.lease, digits="75011"))
    assert done.status == Status.DONE
    assert done.reviewer == "bob"


def test_a_lease_that_ran_out_is_refused_even_if_nobody_took_the_item(
    timed: ReviewQueue, clock: Clock
) -> None:
    review_id = timed.enqueue(item())
    held = timed.claim("alice", 60)
    assert held is not None
    clock.advance(seconds=61)
    with pytest.raises(DomainError) as error:
        timed.submit(review_id, Submission("alice", held.lease, digits="75011"))
    assert code_of(error) == "lease_expired"


def test_an_item_held_by_another_reviewer_is_refused(timed: ReviewQueue) -> None:
    review_id = timed.enqueue(item())
    assert timed.claim("alice", 60) is not None
    with pytest.raises(DomainError) as error:
        timed.submit(review_id, Submission("bob", "a-made-up-lease", digits="75011"))
    assert code_of(error) == "review_held_by_another"
    with pytest.raises(DomainError) as error:
        timed.submit(review_id, Submission("bob", None, digits="75011"))
    assert code_of(error) == "review_held_by_another"


def test_an_unclaimed_item_must_be_claimed_first(queue: ReviewQueue) -> None:
    review_id = queue.enqueue(item())
    with pytest.raises(DomainError) as error:
        queue.submit(review_id, Submission("alice", None, digits="75011"))
    assert code_of(error) == "not_claimed"


def test_a_released_item_is_handed_out_again(timed: ReviewQueue) -> None:
    review_id = timed.enqueue(item())
    held = timed.claim("alice", 60)
    assert held is not None
    timed.release(review_id, held.lease)
    again = timed.claim("bob", 60)
    assert again is not None
    assert again.item.review_id == review_id
    with pytest.raises(DomainError) as error:
        timed.release(review_id, held.lease)
    assert code_of(error) == "lease_expired"


# --- submissions ---------------------------------------------------------------------------


def claimed(queue: ReviewQueue, new: NewItem) -> tuple[str, str]:
    review_id = queue.enqueue(new)
    held = queue.claim("alice", 60)
    assert held is not None
    assert held.item.review_id == review_id
    return review_id, held.lease


def test_keying_the_string_records_whether_the_reading_was_right(queue: ReviewQueue) -> None:
    right_id, right_lease = claimed(queue, item("75011"))
    right = queue.submit(right_id, Submission("alice", right_lease, digits="75011"))
    wrong_id, wrong_lease = claimed(queue, item("75011"))
    wrong = queue.submit(wrong_id, Submission("alice", wrong_lease, digits="76011"))
    assert right.result == {"verdict": "digits", "digits": "75011", "reading_was_correct": True}
    assert wrong.result == {"verdict": "digits", "digits": "76011", "reading_was_correct": False}
    assert queue.get(wrong_id).status == Status.DONE


def test_corrections_change_single_digits_of_the_reading(queue: ReviewQueue) -> None:
    review_id, lease = claimed(queue, item("75011"))
    done = queue.submit(review_id, Submission("alice", lease, corrections=[(1, 6), (4, 7)]))
    assert done.label == "76017"


@pytest.mark.parametrize("verdict", [Verdict.UNREADABLE, Verdict.NOT_DIGITS])
def test_a_verdict_without_digits_counts_as_a_wrong_reading(
    queue: ReviewQueue, verdict: Verdict
) -> None:
    review_id, lease = claimed(queue, item("75011"))
    done = queue.submit(review_id, Submission("alice", lease, verdict=verdict))
    assert done.result == {"verdict": verdict.value, "digits": None, "reading_was_correct": False}


@pytest.mark.parametrize(
    ("submission", "words"),
    [
        (Submission("alice", "L", digits="75O11"), "digits 0-9 only"),
        (Submission("alice", "L", digits=""), "digits 0-9 only"),
        (Submission("alice", "L", digits="7501"), "asked for 5 digits"),
        (Submission("alice", "L", corrections=[(5, 1)]), "outside the reading"),
        (Submission("alice", "L", corrections=[(0, 12)]), "0 to 9"),
        (Submission("alice", "L"), "exactly one of"),
        (Submission("alice", "L", digits="75011", verdict=Verdict.UNREADABLE), "exactly one of"),
        (Submission("al ice", "L", digits="75011"), "reviewer's name"),
    ],
)
def test_bad_submissions_are_refused_with_a_reason(
    queue: ReviewQueue, submission: Submission, words: str
) -> None:
    review_id, lease = claimed(queue, item("75011", expected_length=5))
    attempt = Submission(
        submission.reviewer,
        lease,
        submission.digits,
        submission.corrections,
        submission.verdict,
    )
    with pytest.raises(DomainError) as error:
        queue.submit(review_id, attempt)
    assert code_of(error) == "invalid_review"
    assert words in error.value.message
    assert queue.get(review_id).status == Status.CLAIMED


def test_submitting_twice_is_idempotent_and_a_different_answer_is_refused(
    queue: ReviewQueue,
) -> None:
    review_id, lease = claimed(queue, item("75011"))
    first = queue.submit(review_id, Submission("alice", lease, digits="75011"))
    again = queue.submit(review_id, Submission("alice", lease, digits="75011"))
    assert again == first
    with pytest.raises(DomainError) as error:
        queue.submit(review_id, Submission("alice", lease, digits="75012"))
    assert code_of(error) == "already_reviewed"
    assert queue.get(review_id).label == "75011"


# --- figures and listing -------------------------------------------------------------------


def key(queue: ReviewQueue, new: NewItem, digits: str | None) -> None:
    review_id, lease = claimed(queue, new)
    if digits is None:
        queue.submit(review_id, Submission("alice", lease, verdict=Verdict.UNREADABLE))
    else:
        queue.submit(review_id, Submission("alice", lease, digits=digits))


def test_audits_give_the_error_among_accepted_answers_per_version(queue: ReviewQueue) -> None:
    for digits, keyed, version in [
        ("1", "1", 1),
        ("2", "2", 1),
        ("3", "8", 1),
        ("4", None, 1),
        ("5", "5", 2),
    ]:
        key(queue, item(digits, kind=Kind.AUDIT, model_version=version), keyed)
    key(queue, item("9"), "7")  # flagged: not an audit, not counted
    queue.enqueue(item("6", kind=Kind.AUDIT))  # not keyed yet: not counted
    estimates = {e.model_version: e for e in queue.audit()}
    assert (estimates[1].reviewed, estimates[1].wrong) == (4, 2)
    assert (estimates[2].reviewed, estimates[2].wrong) == (1, 0)
    assert estimates[1].error_rate == 0.5


def test_stats_count_waiting_held_done_and_expired(timed: ReviewQueue, clock: Clock) -> None:
    key(timed, item("6"), "6")
    for digits in "1234":
        clock.advance(seconds=1)
        timed.enqueue(item(digits))
    timed.enqueue(item("5", kind=Kind.AUDIT))
    clock.advance(seconds=3)
    stats = timed.stats()
    assert stats.done == 1
    assert stats.claimed == 0
    assert stats.waiting == 5
    assert stats.by_kind["audit"]["waiting"] == 1
    assert stats.oldest_waiting_seconds is not None
    assert stats.oldest_waiting_seconds >= 4
    held = timed.claim("bob", 60)
    assert held is not None
    assert timed.stats().claimed == 1
    clock.advance(seconds=61)
    assert timed.stats().claimed == 0


def test_listing_pages_through_every_item_in_order(timed: ReviewQueue, clock: Clock) -> None:
    ids = []
    for digits in "123456789":
        ids.append(timed.enqueue(item(digits)))
        clock.advance(seconds=1)
    seen: list[str] = []
    after = None
    while True:
        page, after = timed.items(limit=4, after=after)
        seen += [v.review_id for v in page]
        if after is None:
            break
    assert seen == ids
    held = timed.claim("alice", 60)
    assert held is not None
    claimed_only, _ = timed.items(status=Status.CLAIMED)
    assert [v.review_id for v in claimed_only] == [ids[0]]


def test_reviewed_items_come_with_their_images_for_export(queue: ReviewQueue) -> None:
    key(queue, item("12"), "12")
    key(queue, item("34"), None)
    queue.enqueue(item("56"))
    done = list(queue.reviewed(batch=1))
    assert [(v.label, v.verdict) for v in done] == [("12", "digits"), (None, "unreadable")]
    assert all(v.image is not None for v in done)


# --- retention and deletion ----------------------------------------------------------------


def test_retention_deletes_old_images_and_expires_what_was_never_keyed(
    timed: ReviewQueue, clock: Clock
) -> None:
    old_done, lease = claimed(timed, item("2"))
    timed.submit(old_done, Submission("alice", lease, digits="2"))
    old_pending = timed.enqueue(item("1"))
    clock.advance(days=31)
    recent = timed.enqueue(item("3"))
    assert timed.purge(30) == 2
    assert timed.get(old_pending).status == Status.EXPIRED
    assert timed.get(old_done).status == Status.DONE
    assert timed.get(old_done).label == "2"
    assert timed.get(recent).has_image
    for review_id in (old_pending, old_done):
        with pytest.raises(DomainError) as error:
            timed.image(review_id)
        assert code_of(error) == "review_image_deleted"
    held = timed.claim("alice", 60)
    assert held is not None
    assert held.item.review_id == recent
    assert timed.purge(30) == 0


def test_a_deleted_item_is_gone(queue: ReviewQueue) -> None:
    review_id = queue.enqueue(item())
    queue.delete(review_id)
    with pytest.raises(DomainError) as error:
        queue.get(review_id)
    assert code_of(error) == "review_not_found"
    with pytest.raises(DomainError):
        queue.delete(review_id)


# --- a database that went away -------------------------------------------------------------


def test_a_database_that_is_gone_fails_with_the_queue_error(tmp_path: Any) -> None:
    from app.reviews.db import open_database

    database = open_database("postgresql+psycopg://nobody@127.0.0.1:9/none")
    queue = ReviewQueue(database)
    with pytest.raises(QueueUnavailableError) as error:
        queue.enqueue(item())
    assert error.value.code == "review_queue_unavailable"
    assert "reading itself is not affected" in error.value.message
    with pytest.raises(QueueUnavailableError):
        queue.stats()
