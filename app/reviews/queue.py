"""The review queue: readings people should key, handed out under leases, and their results.

Every method is synchronous and runs one short transaction; the service calls them in a worker
thread. The rules:

- **Enqueue** stores the image and the answer as given and returns an unguessable id. Past
  ``max_items`` items holding an image it refuses (:class:`QueueFullError`) rather than grow
  without bound.
- **Claim** hands the oldest waiting item to one reviewer with a lease (a random token and an
  expiry). Two reviewers never get the same item: the row is taken by an UPDATE that only
  succeeds while the row is still free, inside a transaction that on PostgreSQL skips rows
  other transactions have locked (``FOR UPDATE SKIP LOCKED``) and on SQLite holds the write
  lock. A lease that expired returns its item to the queue.
- **Submit** needs the item's current lease; the same result sent twice is answered like the
  first, a different one on a keyed item is refused (``already_reviewed``), and an item held by
  someone else is refused (``review_held_by_another``).
- **Purge** deletes the images older than the retention period; an item never keyed by then is
  ``expired``. The rows stay, so the figures (audits) keep counting them.
"""

from __future__ import annotations

import re
import secrets
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from sqlalchemy import ColumnElement, and_, case, delete, func, insert, or_, select, update
from sqlalchemy.exc import SQLAlchemyError

from app.core.errors import DomainError, domain_error
from app.reviews.audit import AuditEstimate
from app.reviews.db import Database
from app.reviews.tables import Kind, ReviewItem, Status, Verdict

#: Most digits a keyed string may have (the column's width).
MAX_LABEL_DIGITS: Final = 64
#: How long the count of items holding an image is trusted before it is read again.
HELD_COUNT_SECONDS: Final = 10.0
_DIGITS = re.compile(r"[0-9]+")
_NAME = re.compile(r"[A-Za-z0-9._@+-]{1,64}")
#: How many times a claim retries when another reviewer took its candidate first.
CLAIM_ATTEMPTS: Final = 8

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    """Now, in UTC."""
    return datetime.now(UTC)


def _aware(moment: datetime | None) -> datetime | None:
    # SQLite hands back naive datetimes; everything stored is UTC.
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=UTC)


class QueueUnavailableError(DomainError):
    """The database could not be reached or failed."""

    code = "review_queue_unavailable"


class QueueFullError(DomainError):
    """The queue holds ``max_items`` images already."""

    code = "review_queue_full"


@dataclass(frozen=True, slots=True)
class NewItem:
    """A reading to queue."""

    kind: Kind
    endpoint: str
    model_version: int
    image: bytes
    image_type: str
    reading: dict[str, Any]
    """The answer as the service gave it (digits, confidence, segments, review reasons)."""
    reading_digits: str
    request_id: str | None = None
    client_ref: str | None = None
    expected_length: int | None = None


@dataclass(frozen=True, slots=True)
class Submission:
    """A reviewer's result for one item: exactly one of ``digits``, ``corrections`` and a
    ``verdict`` other than ``digits``."""

    reviewer: str
    lease: str | None = None
    digits: str | None = None
    corrections: Sequence[tuple[int, int]] = ()
    """(position, digit) pairs replacing digits of the service's reading."""
    verdict: Verdict | None = None


@dataclass(frozen=True, slots=True)
class ReviewView:
    """An item as the API shows it (the image itself only when asked for)."""

    review_id: str
    kind: str
    endpoint: str
    status: str
    created_at: datetime
    model_version: int
    request_id: str | None
    client_ref: str | None
    expected_length: int | None
    image_type: str
    has_image: bool
    reading: dict[str, Any]
    lease_expires: datetime | None
    reviewer: str | None
    reviewed_at: datetime | None
    verdict: str | None
    label: str | None
    correct: bool | None
    image: bytes | None = field(default=None, repr=False)

    @property
    def result(self) -> dict[str, Any] | None:
        """The reviewer's result, once keyed."""
        if self.verdict is None:
            return None
        return {
            "verdict": self.verdict,
            "digits": self.label,
            "reading_was_correct": bool(self.correct),
        }

    def as_dict(self) -> dict[str, Any]:
        """The JSON form of the item (without the image)."""
        return {
            "review_id": self.review_id,
            "kind": self.kind,
            "endpoint": self.endpoint,
            "status": self.status,
            "created_at": self.created_at.isoformat(),
            "model_version": self.model_version,
            "request_id": self.request_id,
            "client_ref": self.client_ref,
            "expected_length": self.expected_length,
            "image_type": self.image_type,
            "has_image": self.has_image,
            "reading": self.reading,
            "lease_expires": self.lease_expires.isoformat() if self.lease_expires else None,
            "reviewer": self.reviewer,
            "reviewed_at": self.reviewed_at.isoformat() if self.reviewed_at else None,
            "result": self.result,
        }


@dataclass(frozen=True, slots=True)
class Claimed:
    """A claimed item and its lease."""

    item: ReviewView
    lease: str
    lease_expires: datetime


@dataclass(frozen=True, slots=True)
class QueueStats:
    """How many items are where."""

    waiting: int
    """Pending, or claimed under a lease that expired: what the next claims hand out."""
    claimed: int
    """Held under a lease still running."""
    done: int
    expired: int
    by_kind: dict[str, dict[str, int]]
    oldest_waiting_seconds: float | None

    def as_dict(self) -> dict[str, Any]:
        """The JSON form (``GET /reviews/stats``)."""
        return {
            "waiting": self.waiting,
            "claimed": self.claimed,
            "done": self.done,
            "expired": self.expired,
            "by_kind": self.by_kind,
            "oldest_waiting_seconds": self.oldest_waiting_seconds,
        }


def _view(row: ReviewItem, *, with_image: bool = False) -> ReviewView:
    return ReviewView(
        review_id=row.id,
        kind=row.kind,
        endpoint=row.endpoint,
        status=row.status,
        created_at=_aware(row.created_at) or row.created_at,
        model_version=row.model_version,
        request_id=row.request_id,
        client_ref=row.client_ref,
        expected_length=row.expected_length,
        image_type=row.image_type,
        has_image=row.image is not None,
        reading=row.reading,
        lease_expires=_aware(row.lease_expires) if row.status == Status.CLAIMED else None,
        reviewer=row.reviewer,
        reviewed_at=_aware(row.reviewed_at),
        verdict=row.verdict,
        label=row.label,
        correct=row.correct,
        image=row.image if with_image else None,
    )


def _not_found(review_id: str) -> DomainError:
    return domain_error(
        "review_not_found",
        f"There is no review item {review_id!r}: it was deleted, or the id is mistyped.",
    )


def _invalid(message: str, **details: Any) -> DomainError:
    return domain_error("invalid_review", message, details or None)


def _waiting(now: datetime) -> ColumnElement[bool]:
    """Rows a claim may take: pending, or claimed under a lease that expired; with an image."""
    return and_(
        ReviewItem.image.is_not(None),
        or_(
            ReviewItem.status == Status.PENDING,
            and_(ReviewItem.status == Status.CLAIMED, ReviewItem.lease_expires < now),
        ),
    )


#: The queue's one order, oldest first (ties broken by id): claims, pages and the export.
QUEUE_ORDER: Final = (ReviewItem.created_at, ReviewItem.id)


def _later_than(created_at: datetime, review_id: str) -> ColumnElement[bool]:
    """Rows after (``created_at``, ``review_id``) in :data:`QUEUE_ORDER`: a page's cursor."""
    return or_(
        ReviewItem.created_at > created_at,
        and_(ReviewItem.created_at == created_at, ReviewItem.id > review_id),
    )


class ReviewQueue:
    """The queue over one database (see the module's docstring for its rules)."""

    def __init__(
        self,
        database: Database,
        *,
        max_items: int = 100_000,
        clock: Clock = utc_now,
        on_failure: Callable[[], None] | None = None,
    ) -> None:
        self.database = database
        self.max_items = max_items
        self._clock = clock
        self._on_failure = on_failure
        """Called (in the failing thread) each time the database fails a call, before the
        call raises :class:`QueueUnavailableError`: how the service learns that its database
        may need looking at, at no cost to the calls that succeed."""
        self._held: int | None = None
        self._held_read_at = 0.0
        self._held_lock = threading.Lock()

    # --- the service's side -------------------------------------------------------------------

    def enqueue(self, item: NewItem) -> str:
        """Store ``item``; return its review id.

        Raises:
            QueueFullError: when ``max_items`` items hold an image.
            QueueUnavailableError: when the database fails.
        """
        (review_id,) = self.enqueue_many([item])
        return review_id

    def enqueue_many(self, items: Sequence[NewItem]) -> list[str]:
        """Store ``items`` in one transaction (all or none); return their review ids in order.

        The limit is checked once for the lot: a batch arriving just under ``max_items`` is
        stored whole and may take the queue past it by less than its own size.

        Raises:
            QueueFullError: when ``max_items`` items hold an image.
            QueueUnavailableError: when the database fails.
        """
        if not items:
            return []
        review_ids = [secrets.token_urlsafe(16) for _ in items]
        try:
            if self._held_count() >= self.max_items:
                raise QueueFullError(
                    f"The review queue holds {self.max_items:,} images "
                    "(DIGITS_REVIEW_MAX_ITEMS): key or delete some, or shorten "
                    "DIGITS_REVIEW_RETENTION_DAYS.",
                    {"max_items": self.max_items},
                )
            now = self._clock()
            rows = [
                {
                    "id": review_id,
                    "kind": item.kind.value,
                    "endpoint": item.endpoint,
                    "status": Status.PENDING.value,
                    # A microsecond apart: claims hand a batch out in the order it was sent.
                    "created_at": now + timedelta(microseconds=index),
                    "model_version": item.model_version,
                    "request_id": item.request_id,
                    "client_ref": item.client_ref,
                    "expected_length": item.expected_length,
                    "image": item.image,
                    "image_type": item.image_type,
                    "image_bytes": len(item.image),
                    "reading": item.reading,
                    "reading_digits": item.reading_digits[:MAX_LABEL_DIGITS],
                }
                for index, (review_id, item) in enumerate(zip(review_ids, items, strict=True))
            ]
            # A plain INSERT rather than the ORM's unit of work: less than half the CPU time,
            # for what runs once per reading stored.
            with self.database.engine.begin() as connection:
                connection.execute(insert(ReviewItem), rows)
        except SQLAlchemyError as exc:
            raise self._unavailable(exc) from exc
        with self._held_lock:
            if self._held is not None:
                self._held += len(items)
        return review_ids

    def _held_count(self) -> int:
        with self._held_lock:
            fresh = time.monotonic() - self._held_read_at < HELD_COUNT_SECONDS
            if self._held is not None and fresh:
                return self._held
        with self.database.sessions() as session:
            count = session.scalar(
                select(func.count()).select_from(ReviewItem).where(ReviewItem.image.is_not(None))
            )
        with self._held_lock:
            self._held = int(count or 0)
            self._held_read_at = time.monotonic()
            return self._held

    # --- the reviewers' side ------------------------------------------------------------------

    def claim(
        self, reviewer: str, lease_seconds: float, *, kind: Kind | None = None
    ) -> Claimed | None:
        """Hand the oldest waiting item to ``reviewer`` under a new lease (None: none waits)."""
        _check_reviewer(reviewer)
        postgres = self.database.dialect == "postgresql"
        for _ in range(CLAIM_ATTEMPTS):
            now = self._clock()
            lease = secrets.token_urlsafe(24)
            expires = now + timedelta(seconds=lease_seconds)
            with self._session() as session:
                query = select(ReviewItem.id).where(_waiting(now))
                if kind is not None:
                    query = query.where(ReviewItem.kind == kind.value)
                query = query.order_by(*QUEUE_ORDER).limit(1)
                if postgres:
                    query = query.with_for_update(skip_locked=True)
                review_id = session.scalar(query)
                if review_id is None:
                    return None
                taken = session.execute(
                    update(ReviewItem)
                    .where(ReviewItem.id == review_id, _waiting(now))
                    .values(
                        status=Status.CLAIMED.value,
                        lease_token=lease,
                        lease_owner=reviewer,
                        lease_expires=expires,
                    )
                    .execution_options(synchronize_session=False)
                )
                if taken.rowcount != 1:
                    continue  # another reviewer took it between our read and our write
                row = session.get(ReviewItem, review_id, populate_existing=True)
                assert row is not None
                return Claimed(_view(row), lease, expires)
        return None

    def submit(self, review_id: str, submission: Submission) -> ReviewView:
        """Record a reviewer's result (see the module's docstring for the rules).

        Raises:
            DomainError: ``invalid_review`` (422), ``review_not_found`` (404),
                ``review_held_by_another``, ``lease_expired``, ``not_claimed`` or
                ``already_reviewed`` (409), ``review_image_deleted`` (410).
        """
        _check_reviewer(submission.reviewer)
        now = self._clock()
        with self._session() as session:
            query = select(ReviewItem).where(ReviewItem.id == review_id)
            if self.database.dialect == "postgresql":
                query = query.with_for_update()
            row = session.scalar(query)
            if row is None:
                raise _not_found(review_id)
            verdict, label = _result(row, submission)
            if row.status == Status.DONE:
                if (row.verdict, row.label) == (verdict.value, label):
                    return _view(row)  # the same answer again: idempotent
                raise domain_error(
                    "already_reviewed",
                    f"Review item {review_id} was already keyed by {row.reviewer} "
                    f"({row.verdict}{': ' + row.label if row.label else ''}); it is not changed.",
                    {"result": {"verdict": row.verdict, "digits": row.label}},
                )
            if row.status == Status.EXPIRED:
                raise domain_error(
                    "review_image_deleted",
                    f"Review item {review_id} expired: its image was deleted after the "
                    "retention period before anyone keyed it.",
                )
            _check_lease(row, submission, now)
            row.status = Status.DONE.value
            row.verdict = verdict.value
            row.label = label
            row.reviewer = submission.reviewer
            row.reviewed_at = now
            row.correct = verdict is Verdict.DIGITS and label == row.reading_digits
            row.lease_token = None
            row.lease_expires = None
            session.flush()
            return _view(row)

    def release(self, review_id: str, lease: str) -> None:
        """Give a claimed item back to the queue at once (a reviewer skipped it)."""
        with self._session() as session:
            result = session.execute(
                update(ReviewItem)
                .where(
                    ReviewItem.id == review_id,
                    ReviewItem.status == Status.CLAIMED,
                    ReviewItem.lease_token == lease,
                )
                .values(status=Status.PENDING.value, lease_token=None, lease_expires=None)
                .execution_options(synchronize_session=False)
            )
            if result.rowcount != 1:
                if session.get(ReviewItem, review_id) is None:
                    raise _not_found(review_id)
                raise domain_error(
                    "lease_expired",
                    f"The lease on review item {review_id} is not yours any more: it expired "
                    "or the item was keyed.",
                )

    # --- reading ------------------------------------------------------------------------------

    def get(self, review_id: str) -> ReviewView:
        """One item.

        Raises:
            DomainError: ``review_not_found``.
        """
        with self._session() as session:
            row = session.get(ReviewItem, review_id)
            if row is None:
                raise _not_found(review_id)
            return _view(row)

    def image(self, review_id: str) -> tuple[bytes, str]:
        """An item's image and its content type.

        Raises:
            DomainError: ``review_not_found``, ``review_image_deleted``.
        """
        with self._session() as session:
            row = session.execute(
                select(ReviewItem.image, ReviewItem.image_type).where(ReviewItem.id == review_id)
            ).first()
        if row is None:
            raise _not_found(review_id)
        image, image_type = row
        if image is None:
            raise domain_error(
                "review_image_deleted",
                f"The image of review item {review_id} was deleted after the retention period.",
            )
        return image, image_type

    def items(
        self,
        *,
        status: Status | None = None,
        kind: Kind | None = None,
        limit: int = 50,
        after: str | None = None,
    ) -> tuple[list[ReviewView], str | None]:
        """Items oldest first, ``limit`` at a time; the second value is the cursor of the next
        page (pass it as ``after``), None on the last.

        Raises:
            DomainError: ``review_not_found`` for an ``after`` that names no item.
        """
        with self._session() as session:
            query = select(ReviewItem)
            if status is not None:
                query = query.where(ReviewItem.status == status.value)
            if kind is not None:
                query = query.where(ReviewItem.kind == kind.value)
            if after is not None:
                anchor = session.get(ReviewItem, after)
                if anchor is None:
                    raise _not_found(after)
                query = query.where(_later_than(anchor.created_at, anchor.id))
            query = query.order_by(*QUEUE_ORDER).limit(limit + 1)
            rows = list(session.scalars(query))
        views = [_view(row) for row in rows[:limit]]
        return views, (views[-1].review_id if len(rows) > limit else None)

    def stats(self) -> QueueStats:
        """How many items wait, are held, keyed and expired, by kind."""
        now = self._clock()
        state = case(
            (and_(ReviewItem.status == Status.CLAIMED, ReviewItem.lease_expires < now), "waiting"),
            (ReviewItem.status == Status.PENDING, "waiting"),
            else_=ReviewItem.status,
        )
        with self._session() as session:
            rows = session.execute(
                select(state, ReviewItem.kind, func.count()).group_by(state, ReviewItem.kind)
            ).all()
            oldest = session.scalar(select(func.min(ReviewItem.created_at)).where(_waiting(now)))
        totals = {"waiting": 0, "claimed": 0, "done": 0, "expired": 0}
        by_kind: dict[str, dict[str, int]] = {kind.value: dict.fromkeys(totals, 0) for kind in Kind}
        for where, kind, count in rows:
            totals[where] = totals.get(where, 0) + count
            by_kind.setdefault(kind, dict.fromkeys(totals, 0))[where] = count
        oldest_at = _aware(oldest)
        return QueueStats(
            waiting=totals["waiting"],
            claimed=totals["claimed"],
            done=totals["done"],
            expired=totals["expired"],
            by_kind=by_kind,
            oldest_waiting_seconds=(now - oldest_at).total_seconds() if oldest_at else None,
        )

    def audit(self) -> list[AuditEstimate]:
        """The error among accepted answers per model version, from keyed audit samples."""
        wrong = func.sum(case((ReviewItem.correct.is_(True), 0), else_=1))
        with self._session() as session:
            rows = session.execute(
                select(ReviewItem.model_version, func.count(), wrong)
                .where(ReviewItem.kind == Kind.AUDIT, ReviewItem.status == Status.DONE)
                .group_by(ReviewItem.model_version)
                .order_by(ReviewItem.model_version)
            ).all()
        return [AuditEstimate(int(v), int(n), int(w or 0)) for v, n, w in rows]

    def reviewed(self, *, batch: int = 200) -> Iterator[ReviewView]:
        """Every keyed item that still has its image, with the image, oldest first."""
        after: tuple[datetime, str] | None = None
        while True:
            with self._session() as session:
                query = select(ReviewItem).where(
                    ReviewItem.status == Status.DONE, ReviewItem.image.is_not(None)
                )
                if after is not None:
                    query = query.where(_later_than(*after))
                rows = list(session.scalars(query.order_by(*QUEUE_ORDER).limit(batch)))
                views = [_view(row, with_image=True) for row in rows]
            yield from views
            if len(rows) < batch:
                return
            after = (rows[-1].created_at, rows[-1].id)

    # --- housekeeping -------------------------------------------------------------------------

    def delete(self, review_id: str) -> None:
        """Delete an item and its image for good.

        Raises:
            DomainError: ``review_not_found``.
        """
        with self._session() as session:
            result = session.execute(delete(ReviewItem).where(ReviewItem.id == review_id))
            if result.rowcount != 1:
                raise _not_found(review_id)
        with self._held_lock:
            self._held = None

    def purge(self, retention_days: float) -> int:
        """Delete the images stored more than ``retention_days`` ago; return how many.

        Items never keyed by then become ``expired``; keyed ones keep their result.
        """
        cutoff = self._clock() - timedelta(days=retention_days)
        with self._session() as session:
            result = session.execute(
                update(ReviewItem)
                .where(ReviewItem.created_at < cutoff, ReviewItem.image.is_not(None))
                .values(
                    image=None,
                    status=case(
                        (ReviewItem.status == Status.DONE, Status.DONE.value),
                        else_=Status.EXPIRED.value,
                    ),
                    lease_token=None,
                    lease_expires=None,
                )
                .execution_options(synchronize_session=False)
            )
            purged = int(result.rowcount)
        with self._held_lock:
            self._held = None
        return purged

    # --- plumbing -----------------------------------------------------------------------------

    def _session(self) -> _Transaction:
        return _Transaction(self.database, self._unavailable)

    def _unavailable(self, exc: Exception) -> QueueUnavailableError:
        if self._on_failure is not None:
            self._on_failure()
        return _unavailable(exc)


class _Transaction:
    """One session in one transaction, with database failures turned into
    :class:`QueueUnavailableError` by ``unavailable`` (the queue's own errors pass through)."""

    def __init__(
        self, database: Database, unavailable: Callable[[Exception], QueueUnavailableError]
    ) -> None:
        self._context = database.sessions.begin()
        self._unavailable = unavailable

    def __enter__(self) -> Any:
        try:
            return self._context.__enter__()
        except SQLAlchemyError as exc:
            raise self._unavailable(exc) from exc

    def __exit__(self, *exc_info: Any) -> None:
        try:
            self._context.__exit__(*exc_info)
        except SQLAlchemyError as exc:
            raise self._unavailable(exc) from exc
        if isinstance(exc_info[1], SQLAlchemyError):
            raise self._unavailable(exc_info[1]) from exc_info[1]


def _unavailable(exc: Exception) -> QueueUnavailableError:
    return QueueUnavailableError(
        "The review queue's database is not answering; the reading itself is not affected. "
        f"({type(exc).__name__})"
    )


def _check_reviewer(reviewer: str) -> None:
    if not _NAME.fullmatch(reviewer):
        raise _invalid(
            "The reviewer's name must be 1 to 64 letters, digits or . _ @ + -.",
            reviewer=reviewer[:80],
        )


def _result(row: ReviewItem, submission: Submission) -> tuple[Verdict, str | None]:
    """The verdict and the keyed string a submission gives for ``row``, checked."""
    given = [
        submission.digits is not None,
        bool(submission.corrections),
        submission.verdict not in (None, Verdict.DIGITS),
    ]
    if sum(given) != 1:
        raise _invalid(
            "Send exactly one of: 'digits' (the string the image shows), 'corrections' "
            "(positions and digits to change in the reading) or 'verdict' ('unreadable' or "
            "'not_digits')."
        )
    if submission.verdict in (Verdict.UNREADABLE, Verdict.NOT_DIGITS):
        return submission.verdict, None
    if submission.digits is not None:
        label = submission.digits
        if not _DIGITS.fullmatch(label):
            raise _invalid(
                f"'digits' must be digits 0-9 only, like '75011'; got {label[:80]!r}.",
                digits=label[:80],
            )
    else:
        reading = list(row.reading_digits)
        for position, digit in submission.corrections:
            if not 0 <= position < len(reading):
                raise _invalid(
                    f"Correction position {position} is outside the reading "
                    f"'{row.reading_digits}' (positions 0 to {len(reading) - 1}); to change the "
                    "number of digits send the whole string as 'digits'.",
                    position=position,
                )
            if not 0 <= digit <= 9:
                raise _invalid(f"A corrected digit must be 0 to 9, not {digit}.", digit=digit)
            reading[position] = str(digit)
        label = "".join(reading)
    if len(label) > MAX_LABEL_DIGITS:
        raise _invalid(f"At most {MAX_LABEL_DIGITS} digits may be keyed; got {len(label)}.")
    if row.expected_length is not None and len(label) != row.expected_length:
        raise _invalid(
            f"The reading was asked for {row.expected_length} digits and {len(label)} were "
            f"keyed ({label!r}). Key all {row.expected_length}, or mark the image 'unreadable'.",
            expected_length=row.expected_length,
            keyed=len(label),
        )
    return Verdict.DIGITS, label


def _check_lease(row: ReviewItem, submission: Submission, now: datetime) -> None:
    expires = _aware(row.lease_expires)
    ours = submission.lease is not None and row.lease_token is not None
    ours = ours and secrets.compare_digest(str(submission.lease), str(row.lease_token))
    running = row.status == Status.CLAIMED and expires is not None and expires > now
    if ours and running:
        return
    if ours:
        raise domain_error(
            "lease_expired",
            f"Your lease on review item {row.id} expired; claim an item again "
            "(POST /reviews/claim).",
        )
    if running:
        raise domain_error(
            "review_held_by_another",
            f"Review item {row.id} is being keyed by {row.lease_owner} until "
            f"{expires.isoformat() if expires else 'its lease ends'}.",
            {"lease_expires": expires.isoformat() if expires else None},
        )
    if submission.lease is not None:
        raise domain_error(
            "lease_expired",
            f"That lease on review item {row.id} is no longer valid (it expired); claim an "
            "item again (POST /reviews/claim).",
        )
    raise domain_error(
        "not_claimed",
        f"Claim review item {row.id} before keying it: POST /reviews/claim gives an item "
        "with the lease to send back.",
    )
