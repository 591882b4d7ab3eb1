"""Reading a list of items: files loaded, batched within the limits, read, and each row written.

An :class:`Engine` reads: :class:`ServerEngine` through the service (:class:`AsyncClient`),
or the local reader of :mod:`digits_client.local` in this process. :func:`read_items` feeds it:
one task loads the files and cuts them into batches (:class:`BatchPlanner`), ``concurrency``
tasks send the batches (single digits to ``/predict/batch``, strings to ``/recognize/batch``),
and every item's row is written the moment its answer is known. An
item that cannot be read (missing, not an image, too large) gets its row with the error code
and the run goes on; what concerns every item (the API key, the service gone after its retries)
stops the run with :class:`RunStoppedError`, every row written so far kept for ``--resume``.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Protocol

from digits_client.batching import BatchPlanner, Limits, Upload, refusal
from digits_client.calls import Normalize
from digits_client.client import AsyncClient
from digits_client.errors import ApiError, DigitsError, NoAnswerError
from digits_client.models import ItemError, Prediction, StringReading
from digits_client.output import Row
from digits_client.sources import Item

#: Files loaded per hop to a thread.
LOAD_CHUNK: Final = 64
#: Most digit strings per batch unless ``--batch-size`` says otherwise. A string costs the
#: service far more than a digit (segmentation, several model inputs, the reading), so a few
#: strings already make a request's own overhead small; larger batches were measured slower
#: (benchmarks/bench_bulk.py): the service spends more per string on them, they spread less
#: evenly over its workers, and they come nearer its request deadline.
STRING_BATCH_FILES: Final = 8


class RunStoppedError(Exception):
    """Something that concerns every item stopped the run (rows written so far are kept)."""

    def __init__(self, message: str, *, usage: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.usage = usage
        """Whether it is the caller's to fix (a key, a version): exit code 2."""


@dataclass(frozen=True)
class Reading:
    """How to read: digits or strings, and the parameters of either."""

    recognize: bool = False
    expected_length: int | None = None
    threshold: float | None = None
    """Below it a reading is flagged (for strings the service applies it); None: the served
    version's own."""
    normalize: Normalize | None = None
    version: int | None = None


class Engine(Protocol):
    """What reads the images: the service or the local model."""

    @property
    def limits(self) -> Limits:
        """The limits batches are planned with (read again for every batch)."""
        ...

    async def start(self) -> None:
        """Get ready (the service answers, the model version is there), or stop the run."""
        ...

    async def read_digits(self, uploads: list[Upload]) -> list[Prediction | ItemError]:
        """One batch of single digits; one answer per upload, in order."""
        ...

    async def read_strings(self, uploads: list[Upload]) -> list[StringReading | ItemError]:
        """One batch of digit strings; one answer per upload, in order."""
        ...

    async def close(self) -> None:
        """Let go of connections or models."""
        ...


def stopped(error: DigitsError) -> RunStoppedError:
    """The run-stopping form of an error that concerns every item."""
    if isinstance(error, ApiError) and error.fatal:
        return RunStoppedError(f"the service refused: {error}", usage=True)
    if isinstance(error, ApiError | NoAnswerError):
        return RunStoppedError(f"the service is unavailable: {error}")
    return RunStoppedError(str(error), usage=True)


class ServerEngine:
    """Reads through the service with an :class:`AsyncClient`."""

    def __init__(self, client: AsyncClient, reading: Reading) -> None:
        self.client = client
        self.reading = reading

    @property
    def limits(self) -> Limits:
        return self.client.limits

    async def start(self) -> None:
        try:
            await self.client.model()
        except DigitsError as error:
            raise stopped(error) from error

    async def read_digits(self, uploads: list[Upload]) -> list[Prediction | ItemError]:
        try:
            results = await self.client.predict_many(
                uploads,
                normalize=self.reading.normalize,
                threshold=self.reading.threshold,
                version=self.reading.version,
                concurrency=1,
            )
        except DigitsError as error:
            raise stopped(error) from error
        answers: list[Prediction | ItemError] = []
        for result in results:
            answer = result.prediction or result.error
            assert answer is not None
            answers.append(answer)
        return answers

    async def read_strings(self, uploads: list[Upload]) -> list[StringReading | ItemError]:
        reading = self.reading
        try:
            results = await self.client.recognize_many(
                uploads,
                expected_length=reading.expected_length,
                threshold=reading.threshold,
                version=reading.version,
                concurrency=1,
            )
        except DigitsError as error:
            raise stopped(error) from error
        answers: list[StringReading | ItemError] = []
        for result in results:
            answer = result.reading or result.error
            assert answer is not None
            answers.append(answer)
        return answers

    async def close(self) -> None:
        await self.client.aclose()


@dataclass
class Summary:
    """What a run did."""

    read: int = 0
    """Items read (a digit or a string answered)."""
    flagged: int = 0
    """Of those, readings flagged for review."""
    queued: int = 0
    """Of those, readings the service stored in its review queue (a ``review_id``)."""
    refused: Counter[str] = field(default_factory=Counter)
    """Items not read, by error code."""
    skipped: int = 0
    """Items left out because the results file already held them (``--resume``)."""
    seconds: float = 0.0
    stopped: RunStoppedError | None = None

    @property
    def done(self) -> int:
        """Items that got their row in this run."""
        return self.read + sum(self.refused.values())

    @property
    def rate(self) -> float:
        """Items per second in this run."""
        return self.done / self.seconds if self.seconds > 0 else 0.0

    def count(self, row: Row) -> None:
        """Add one row."""
        if row.error is not None:
            self.refused[row.error] += 1
        else:
            self.read += 1
            self.flagged += bool(row.needs_review)
            self.queued += row.review_id is not None


def error_row(item: Item, code: str, message: str) -> Row:
    """The row of an item that was not read."""
    return Row(item.id, item.path, error=code, message=message)


def digit_row(item: Item, answer: Prediction | ItemError) -> Row:
    """The row of a single digit, with the service's review flag and reason codes."""
    if isinstance(answer, ItemError):
        return error_row(item, answer.code, answer.message)
    return Row(
        item.id,
        item.path,
        digits=str(answer.digit),
        confidence=answer.confidence,
        needs_review=answer.needs_review,
        reasons=[reason.code for reason in answer.review_reasons],
        model_version=answer.model_version,
        review_id=answer.review_id,
    )


def string_row(item: Item, answer: StringReading | ItemError) -> Row:
    """The row of a digit string, with the service's review reasons."""
    if isinstance(answer, ItemError):
        return error_row(item, answer.code, answer.message)
    return Row(
        item.id,
        item.path,
        digits=answer.digits,
        confidence=answer.confidence,
        needs_review=answer.needs_review,
        reasons=[reason.code for reason in answer.review_reasons],
        model_version=answer.model_version,
        review_id=answer.review_id,
    )


def load(item: Item) -> Upload | Row:
    """An item's file as an upload, or its error row when it cannot be read."""
    path = Path(item.path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return error_row(item, "file_not_found", f"{item.path}: no such file")
    except IsADirectoryError:
        return error_row(item, "unreadable_file", f"{item.path} is a folder")
    except OSError as exc:
        return error_row(item, "unreadable_file", f"{item.path}: {exc.strerror or exc}")
    return Upload.of(path.name, data)


def load_all(items: Sequence[Item]) -> list[Upload | Row]:
    """:func:`load` for each item (one hop to a thread for many small files)."""
    return [load(item) for item in items]


Batch = list[tuple[Item, Upload]]


async def read_items(
    items: Sequence[Item],
    engine: Engine,
    write: Callable[[Row], None],
    reading: Reading,
    *,
    concurrency: int = 4,
    max_files: int | None = None,
) -> Summary:
    """Read every item and ``write`` its row as soon as it is known.

    Raises:
        RunStoppedError: the service refused the key or the version, or stayed unavailable after
            the retries; the rows written until then stand.
    """
    summary = Summary()
    await engine.start()
    started = time.perf_counter()

    def record(row: Row) -> None:
        write(row)
        summary.count(row)

    queue: asyncio.Queue[Batch | None] = asyncio.Queue(maxsize=concurrency)

    async def produce() -> None:
        planner: BatchPlanner[tuple[Item, Upload]] = BatchPlanner(
            lambda: engine.limits,
            lambda pair: pair[1],
            max_files=max_files or (STRING_BATCH_FILES if reading.recognize else None),
        )
        for start in range(0, len(items), LOAD_CHUNK):
            chunk = items[start : start + LOAD_CHUNK]
            loaded = await asyncio.to_thread(load_all, chunk)
            for item, upload in zip(chunk, loaded, strict=True):
                if isinstance(upload, Row):
                    record(upload)
                    continue
                refused = refusal(upload, engine.limits)
                if refused is not None:
                    record(error_row(item, refused.code, refused.message))
                    continue
                for batch in planner.add((item, upload)):
                    await queue.put(batch)
        for batch in planner.flush():
            await queue.put(batch)
        for _ in range(concurrency):
            await queue.put(None)

    async def consume() -> None:
        while (batch := await queue.get()) is not None:
            uploads = [upload for _, upload in batch]
            if reading.recognize:
                strings = await engine.read_strings(uploads)
                for (item, _), string in zip(batch, strings, strict=True):
                    record(string_row(item, string))
                continue
            answers = await engine.read_digits(uploads)
            for (item, _), answer in zip(batch, answers, strict=True):
                record(digit_row(item, answer))

    try:
        async with asyncio.TaskGroup() as group:
            group.create_task(produce())
            for _ in range(concurrency):
                group.create_task(consume())
    except BaseExceptionGroup as failures:
        first: BaseException = failures
        while isinstance(first, BaseExceptionGroup):
            first = first.exceptions[0]
        if not isinstance(first, RunStoppedError):
            raise first from None
        summary.stopped = first
    finally:
        summary.seconds = time.perf_counter() - started
    return summary
