"""The service's side of the review queue: which readings are stored, and the queue's life.

**Which readings.** After a reading is made, :meth:`ReviewIntake.kind_for` decides: one flagged
for review (``needs_review``) is stored as ``flagged`` when storing is on for its endpoint
(``DIGITS_REVIEW_QUEUE_RECOGNIZE``, ``DIGITS_REVIEW_QUEUE_PREDICT`` or ``?queue=true``); one
not flagged is stored as ``audit`` with probability ``DIGITS_REVIEW_AUDIT_SHARE``; nothing else
is. The unflagged, unsampled answer, by far the most common, costs one ``random()``.

**Before the answer.** :meth:`ReviewIntake.store` writes the original upload (its bytes and
sniffed type), the answer as given, the model version, the request id and the client's
``X-Client-Ref`` in a worker thread and returns only once the row is committed, so a
``review_id`` a client holds always names a stored item. Requests that store at the same time
share one transaction. A database that fails, is not open
or is full never fails the reading: the answer says ``"queue": "not_queued"``, a metric counts
it (``digits_review_not_queued_total{reason}``) and a warning is logged, without the image.

**The queue's life.** :meth:`ReviewIntake.start` opens the database and applies the migrations
(``DIGITS_REVIEW_MIGRATE``; else it checks they were applied) in a thread. A database that is
down does not stop the service: it is tried again every ``DIGITS_REVIEW_RETRY_SECONDS`` while
readings are answered as usual. Once open, images past ``DIGITS_REVIEW_RETENTION_DAYS`` are
purged at once and every :data:`PURGE_SECONDS`. :meth:`ReviewIntake.stop` disposes of the
connections.

**A database lost later.** A database dropped and recreated empty, whose tables were dropped, or
that stopped answering fails the queue's calls; each failure marks the database as doubtful
(the queue's ``on_failure``: a flag, no query) and the background task, which wakes every retry
interval, checks it then: its revision and tables (:meth:`ReviewIntake._check`), migrated again
when ``DIGITS_REVIEW_MIGRATE`` allows. A database that fails the check is set aside (readings
``not_queued`` at once, reviewers 503, ``problem`` in ``/model``) and checked every retry
interval until it passes. A SQLite file deleted or replaced under the service is noticed by its
inode (one ``stat`` per write, :meth:`app.reviews.db.Database.file_identity`): connections still
open on it would write where nobody reads. Each change of state is logged once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import re
import time
from collections.abc import Sequence
from typing import Any, Final

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from app.core.errors import ApiError, DomainError
from app.core.request_id import current_request_id
from app.reviews.audit import AuditEstimate
from app.reviews.db import (
    Database,
    current_revision,
    head_revision,
    missing_tables,
    open_database,
    redacted,
    upgrade,
)
from app.reviews.queue import (
    NewItem,
    QueueFullError,
    QueueStats,
    QueueUnavailableError,
    ReviewQueue,
)
from app.reviews.tables import Kind
from app.settings import Settings
from app.telemetry import Telemetry

logger = logging.getLogger(__name__)

#: How often images past the retention period are deleted.
PURGE_SECONDS: Final = 3600.0
#: How long the start waits for the first attempt before serving without the queue.
START_WAIT_SECONDS: Final = 15.0
#: Most one "not queued" warning per this many seconds (the others are counted in it).
WARN_EVERY_SECONDS: Final = 60.0

#: A request's readings waiting to be written, and where it learns their ids (or why not).
_Waiting = tuple[Sequence[NewItem], "asyncio.Future[list[str] | str]"]

#: What an answer's ``queue`` says for each kind stored.
QUEUED: Final = {Kind.FLAGGED: "queued", Kind.AUDIT: "audit"}
NOT_QUEUED: Final = "not_queued"
#: What the service answers about one reading: (review_id, queue).
Queued = tuple[str | None, str | None]
NOTHING: Final[Queued] = (None, None)

CLIENT_REF_HEADER: Final = "X-Client-Ref"
MAX_CLIENT_REF: Final = 200
#: Printable ASCII, space included.
_CLIENT_REF: Final = re.compile(rf"[\x20-\x7e]{{1,{MAX_CLIENT_REF}}}")

#: The image types a reading can come from, by their first bytes.
_SIGNATURES: Final = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"BM", "image/bmp"),
)


def image_type(data: bytes) -> str:
    """The content type of image bytes, from their signature (not from what a client said)."""
    for signature, content_type in _SIGNATURES:
        if data.startswith(signature):
            return content_type
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return "application/octet-stream"


def client_ref(request: Request) -> str | None:
    """The request's ``X-Client-Ref`` (None when absent or empty), checked.

    It is stored with the item and shown to reviewers, so it is held to what a form number or
    a file name needs: at most 200 printable ASCII characters, sent once.

    Raises:
        ApiError: 422 ``invalid_request`` for anything else.
    """
    values = request.headers.getlist(CLIENT_REF_HEADER)
    if not values:
        return None
    if len(values) > 1:
        raise ApiError(
            422,
            "invalid_request",
            f"The {CLIENT_REF_HEADER} header was sent {len(values)} times: send it once.",
        )
    value = values[0]
    if value == "":
        return None
    if _CLIENT_REF.fullmatch(value) is None:
        raise ApiError(
            422,
            "invalid_request",
            f"The {CLIENT_REF_HEADER} header must be 1 to {MAX_CLIENT_REF} printable ASCII "
            f"characters (letters, digits, spaces, punctuation); got {len(value)} characters"
            + ("." if len(value) > MAX_CLIENT_REF else ", some outside that set."),
            details={"header": CLIENT_REF_HEADER, "length": len(value)},
        )
    return value


#: The OpenAPI description of the header, for the reading routes' ``openapi_extra``.
CLIENT_REF_PARAMETER: Final[dict[str, Any]] = {
    "name": CLIENT_REF_HEADER,
    "in": "header",
    "required": False,
    "description": "Your own reference for this image (a form number, a file name), stored "
    "with it when the reading goes to review and shown to the reviewers: at most 200 "
    "printable ASCII characters.",
    "schema": {"type": "string", "maxLength": MAX_CLIENT_REF, "pattern": "^[\\x20-\\x7e]*$"},
}


class ReviewIntake:
    """The review queue as the app holds it (see the module's docstring)."""

    def __init__(self, settings: Settings, telemetry: Telemetry) -> None:
        self.enabled = settings.review_queue
        self.audit_share = settings.review_audit_share
        self.lease_seconds = settings.review_lease_seconds
        self.retention_days = settings.review_retention_days
        self.retry_seconds = settings.review_retry_seconds
        """How often a database that is not available is tried again (and a doubtful one
        checked): ``DIGITS_REVIEW_RETRY_SECONDS``."""
        self.purge_seconds = PURGE_SECONDS
        self.queue: ReviewQueue | None = None
        """The queue once its database is open and migrated; None before (or when off)."""
        self.problem: str | None = None
        """Why the queue is not open: the last attempt's failure, for messages and /model."""
        self._settings = settings
        self._telemetry = telemetry
        self._url = settings.review_database() if self.enabled else ""
        self._database: Database | None = None
        self._task: asyncio.Task[None] | None = None
        self._attempted: asyncio.Event | None = None
        self._attempts = 0
        self._starts = 0
        self._pending: list[_Waiting] = []
        self._drainer: asyncio.Task[None] | None = None
        self._warned_at = -math.inf
        self._unwarned = 0
        self._doubtful = False
        """A queue call failed on the database since the last check: check it."""
        self._identity: tuple[int, int] | None = None
        """The SQLite file's identity when last checked (None: not SQLite, or not open)."""

    # --- which readings -----------------------------------------------------------------------

    def kind_for(self, flagged: bool, wanted: bool) -> Kind | None:
        """How a reading is stored: ``flagged`` when flagged and storing is on (``wanted``),
        ``audit`` for a sampled unflagged one, None for the rest."""
        if not self.enabled:
            return None
        if flagged:
            return Kind.FLAGGED if wanted else None
        return Kind.AUDIT if random.random() < self.audit_share else None

    def item(
        self,
        kind: Kind,
        endpoint: str,
        image: bytes,
        reading: dict[str, Any],
        digits: str,
        model_version: int,
        client_ref: str | None,
        expected_length: int | None = None,
    ) -> NewItem:
        """What is stored for one reading: the upload as sent and the answer as given."""
        return NewItem(
            kind=kind,
            endpoint=endpoint,
            model_version=model_version,
            image=image,
            image_type=image_type(image),
            reading=reading,
            reading_digits=digits,
            request_id=current_request_id(),
            client_ref=client_ref,
            expected_length=expected_length,
        )

    async def store(self, items: Sequence[NewItem]) -> list[Queued]:
        """Store ``items`` in one transaction; what each answer says, once it is committed.

        Requests storing at the same time share one write (:meth:`_drain`). Never raises: a
        queue that is not open, fails or is full answers every item ``(None, "not_queued")``,
        counted and logged (the images never are).
        """
        if not items:
            return []
        queue = self.queue
        if queue is None:
            return self._not_queued("unavailable", len(items))
        loop = asyncio.get_running_loop()
        waiting: asyncio.Future[list[str] | str] = loop.create_future()
        if self._drainer is not None and self._drainer.get_loop() is not loop:
            # An app served by two event loops at once (a test client inside another): the
            # writes of this one go alone.
            await self._write(queue, [(items, waiting)])
        else:
            self._pending.append((items, waiting))
            if self._drainer is None:
                self._drainer = loop.create_task(self._drain(queue), name="review-writes")
        # Shielded: a client that leaves does not stop the write the others share.
        outcome = await asyncio.shield(waiting)
        if isinstance(outcome, str):
            return self._not_queued(outcome, len(items))
        for item in items:
            self._telemetry.count_queued(item.kind.value)
        return [(rid, QUEUED[item.kind]) for rid, item in zip(outcome, items, strict=True)]

    async def _drain(self, queue: ReviewQueue) -> None:
        """Write what waits, in one transaction and one thread hop, until nothing waits.

        As the inference worker batches model calls: under load, the readings that arrive
        while a write runs go together in the next, so a commit (and, on SQLite, the one
        writer's lock) serves many requests rather than each waiting its turn for its own.
        """
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                await self._write(queue, batch)
        finally:
            self._drainer = None
            # Cancelled (the loop is closing): nobody may wait forever.
            batch, self._pending = self._pending, []
            for _, waiting in batch:
                if not waiting.done():
                    waiting.set_result("unavailable")

    async def _write(self, queue: ReviewQueue, batch: list[_Waiting]) -> None:
        """One transaction for a batch of requests' readings; each learns its ids or why not."""
        items = [item for stored, _ in batch for item in stored]
        outcome: list[str] | str = "unavailable"
        try:
            outcome = await run_in_threadpool(self._enqueue, queue, items)
        except QueueFullError:
            outcome = "full"
        except QueueUnavailableError:
            pass  # the queue called _doubt already
        except Exception as exc:  # a reading must never fail for its review copy
            self._doubt()
            # The type only: SQLAlchemy's messages carry the statement's parameters, which
            # hold the image.
            logger.error("storing readings for review failed: %s", type(exc).__name__)
        finally:
            start = 0
            for stored, waiting in batch:
                if not waiting.done():
                    waiting.set_result(
                        outcome
                        if isinstance(outcome, str)
                        else outcome[start : start + len(stored)]
                    )
                start += len(stored)

    def _enqueue(self, queue: ReviewQueue, items: Sequence[NewItem]) -> list[str]:
        """:meth:`ReviewQueue.enqueue_many`, unless the SQLite file was deleted or replaced
        since it was checked (in a worker thread)."""
        if self._identity is not None and queue.database.file_identity() != self._identity:
            self._doubt()
            raise QueueUnavailableError("The review queue's SQLite file was deleted or replaced.")
        return queue.enqueue_many(items)

    def _doubt(self) -> None:
        """A queue call failed on the database: the background task checks it at its next
        wake-up. Any thread; costs nothing."""
        self._doubtful = True

    def _not_queued(self, reason: str, count: int) -> list[Queued]:
        self._telemetry.count_not_queued(reason, count)
        self._warn_not_queued(reason, count)
        return [(None, NOT_QUEUED)] * count

    async def store_one(self, item: NewItem) -> Queued:
        """:meth:`store` for one reading."""
        (queued,) = await self.store([item])
        return queued

    async def file_many(
        self, answers: Sequence[dict[str, object]], items: Sequence[NewItem | None]
    ) -> None:
        """Store a batch's readings in one transaction and complete their answers with
        ``review_id`` and ``queue``: ``items[i]`` is the stored form of ``answers[i]`` (None:
        nothing to store)."""
        stored = iter(await self.store([item for item in items if item is not None]))
        for answer, item in zip(answers, items, strict=True):
            answer["review_id"], answer["queue"] = NOTHING if item is None else next(stored)

    def _warn_not_queued(self, reason: str, count: int) -> None:
        now = time.monotonic()
        self._unwarned += count
        if now - self._warned_at < WARN_EVERY_SECONDS:
            return
        if reason == "full":
            why = f"the queue is full (DIGITS_REVIEW_MAX_ITEMS={self._settings.review_max_items:,})"
        elif self.problem is not None:
            why = f"its database is not available ({self.problem})"
        elif self.queue is None:
            why = "its database is not open yet"
        else:
            why = (
                f"a write to its database failed; the database is checked within "
                f"{self.retry_seconds:g} s"
            )
        logger.warning(
            "%d reading(s) answered without being queued for review since the last warning: "
            "%s. Readings are answered as usual.",
            self._unwarned,
            why,
        )
        self._warned_at = now
        self._unwarned = 0

    # --- for the routes -----------------------------------------------------------------------

    def require(self) -> ReviewQueue:
        """The queue, for the reviewers' routes.

        Raises:
            ApiError: 503 ``review_queue_off`` when storing is off.
            DomainError: 503 ``review_queue_unavailable`` while the database is not open.
        """
        if not self.enabled:
            raise ApiError(
                503,
                "review_queue_off",
                "The review queue is off on this service (DIGITS_REVIEW_QUEUE=false): start it "
                "with DIGITS_REVIEW_QUEUE=true to store readings for review.",
            )
        queue = self.queue
        if queue is None:
            raise QueueUnavailableError(
                "The review queue's database is not available"
                + (f" ({self.problem_type})" if self.problem_type else "")
                + f"; it is tried again every {self.retry_seconds:g} s. Readings are answered "
                "as usual meanwhile.",
                retry_after=max(1, round(self.retry_seconds)),
            )
        return queue

    @property
    def problem_type(self) -> str | None:
        """The kind of the last failure only (no host names or paths), for answers."""
        return self.problem.split(":", 1)[0] if self.problem else None

    def figures(self) -> tuple[list[AuditEstimate], QueueStats]:
        """The audit estimates and the queue's counts (blocking: call it in a thread).

        Raises:
            QueueUnavailableError: while the database is not open, or when it fails.
        """
        queue = self.queue
        if queue is None:
            raise QueueUnavailableError("The review queue's database is not open.")
        return queue.audit(), queue.stats()

    # --- the queue's life ---------------------------------------------------------------------

    def start(self) -> None:
        """Open the database in the background (see the module's docstring). Nothing when off.

        Counted: an app whose lifespan runs again while it runs (a test client inside
        another) keeps the first start's work until the last :meth:`stop`.
        """
        self._starts += 1
        if not self.enabled or self._task is not None:
            return
        self._attempted = asyncio.Event()
        self._task = asyncio.create_task(self._run(), name="review-queue")

    async def wait_started(self, timeout: float = START_WAIT_SECONDS) -> None:
        """Wait (at most ``timeout`` s) until the first attempt to open the database ended."""
        attempted = self._attempted
        if attempted is None or attempted.is_set():
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(attempted.wait(), timeout)

    async def stop(self) -> None:
        """Stop the background work and close every connection (at the last of the starts)."""
        self._starts -= 1
        if self._starts > 0:
            return
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.queue = None
        database, self._database = self._database, None
        if database is not None:
            await run_in_threadpool(database.dispose)

    async def _run(self) -> None:
        assert self._attempted is not None
        while True:
            opened = await run_in_threadpool(self._open)
            self._attempted.set()
            if opened is None:
                return  # a setting that cannot work: said once, not retried
            if opened:
                break
            await asyncio.sleep(self.retry_seconds)
        purge_at = -math.inf
        while True:
            if time.monotonic() >= purge_at:
                await run_in_threadpool(self.purge)
                purge_at = time.monotonic() + self.purge_seconds
            await asyncio.sleep(min(self.retry_seconds, max(0.0, purge_at - time.monotonic())))
            await run_in_threadpool(self._watch)

    def _watch(self) -> None:
        """At each wake-up of the background task (in a thread): check the database when a
        call failed on it, while it is set aside, or when its SQLite file changed."""
        database = self._database
        if database is None:
            return
        moved = self._identity is not None and database.file_identity() != self._identity
        if not (self._doubtful or moved or self.queue is None):
            return
        self._doubtful = False
        where = redacted(self._url)
        if moved and self.problem is None:
            logger.warning(
                "The review queue's SQLite file %s was deleted or replaced while the service "
                "ran: its connections are closed and the file is opened again.",
                where,
            )
        if moved:
            # Connections still open on a deleted file would go on writing into it.
            database.dispose()
        try:
            found = self._check(database)
        except Exception as exc:
            problem = _describe(exc)
            self.queue = None
            if problem != self.problem:
                logger.warning(
                    "The review queue's database %s failed its check: %s. Readings are answered "
                    "as usual and not queued; checking it again every %g s.",
                    where,
                    problem,
                    self.retry_seconds,
                )
            self.problem = problem
            return
        self._identity = database.file_identity()
        if found != head_revision():
            logger.warning(
                "The review queue's database %s had lost its schema (revision %s): the "
                "migrations were applied again and readings are queued from now on; what it "
                "held before is not in it.",
                where,
                found or "none",
            )
        elif self.problem is not None or moved:
            logger.warning(
                "The review queue's database %s is available again: readings are queued from "
                "now on.",
                where,
            )
        if self.queue is None or found != head_revision() or moved:
            # A new queue: its count of stored images belonged to the database that went.
            self.queue = self._new_queue(database)
        self.problem = None

    def _check(self, database: Database) -> str | None:
        """Make sure the database has this service's schema, migrating it when allowed
        (blocking); the revision it was found at.

        Raises:
            Exception: the database's own failure when it does not answer;
                :class:`_NotMigratedError` when it lacks migrations the service may not apply;
                :class:`_DamagedError` when it claims the newest revision without the tables.
        """
        found, wanted = current_revision(database), head_revision()
        if found != wanted:
            if not self._settings.review_migrate:
                raise _NotMigratedError(
                    f"the database is at revision {found or 'none'}, this service needs "
                    f"{wanted}: run `python -m app.reviews upgrade` (DIGITS_REVIEW_MIGRATE "
                    "is false)"
                )
            upgrade(database)
        elif missing := missing_tables(database):
            raise _DamagedError(
                f"the database says it is at revision {found} but has no table "
                f"{', '.join(missing)}: restore it, or drop its alembic_version table so the "
                "migrations create the tables again"
            )
        return found

    def _new_queue(self, database: Database) -> ReviewQueue:
        return ReviewQueue(
            database, max_items=self._settings.review_max_items, on_failure=self._doubt
        )

    def _open(self) -> bool | None:
        """One attempt to open (and migrate) the database: True when open, False to retry,
        None for a URL that can never work."""
        self._attempts += 1
        where = redacted(self._url)
        try:
            database = open_database(self._url)
        except ValueError as exc:  # a URL of another database
            self.problem = _describe(exc)
            logger.error(
                "The review queue cannot use %s: %s Readings are answered without it; fix "
                "DIGITS_REVIEW_DATABASE_URL and restart.",
                where,
                exc,
            )
            return None
        except Exception as exc:  # e.g. a SQLite directory that cannot be made
            return self._failed(where, exc)
        try:
            self._check(database)
        except Exception as exc:
            database.dispose()
            return self._failed(where, exc)
        self._database = database
        self._identity = database.file_identity()
        self.queue = self._new_queue(database)
        if self._attempts > 1:
            logger.warning(
                "The review queue's database %s is available again (attempt %d): readings are "
                "queued from now on.",
                where,
                self._attempts,
            )
        else:
            logger.info("review queue ready: %s", where)
        self.problem = None
        return True

    def _failed(self, where: str, exc: Exception) -> bool:
        self.problem = _describe(exc)
        log = logger.error if self._attempts == 1 else logger.warning
        log(
            "The review queue's database %s is not available (attempt %d): %s. Readings are "
            "answered as usual and not queued; trying again in %g s.",
            where,
            self._attempts,
            self.problem,
            self.retry_seconds,
        )
        return False

    def purge(self) -> int:
        """Delete the images older than the retention period now (blocking); how many."""
        queue = self.queue
        if queue is None:
            return 0
        try:
            purged = queue.purge(self.retention_days)
        except DomainError as exc:
            logger.warning("review queue: the retention purge failed: %s", exc.message)
            return 0
        except Exception as exc:  # the next purge must still run
            logger.error("review queue: the retention purge failed: %s", type(exc).__name__)
            return 0
        if purged:
            logger.info(
                "review queue: deleted the images of %d item(s) stored more than %g days ago",
                purged,
                self.retention_days,
            )
        return purged


class _NotMigratedError(Exception):
    """The database lacks migrations and the service may not apply them."""


class _DamagedError(Exception):
    """The database says it is migrated but lacks the queue's tables."""


def _describe(exc: BaseException) -> str:
    """A failure in one line: its type and the first line of its message (no statement, no
    parameters: SQLAlchemy puts those on later lines)."""
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    # SQLAlchemy prefixes the driver's type: "(psycopg.OperationalError) connection failed".
    first = re.sub(r"^\([\w.]+\)\s*", "", first)[:300]
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__
