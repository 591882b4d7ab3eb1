"""The service's HTTP API as Python calls: :class:`Client` (sync) and :class:`AsyncClient`.

Both speak to one service (``url``), send the API key when given one, retry what may be retried
(:class:`~digits_client.retry.Retry`) and answer typed models (:mod:`digits_client.models`);
an error answer raises :class:`~digits_client.errors.ApiError` with the service's code.
``predict_many`` reads any number of images: it cuts them into batches that fit the service's
limits (:mod:`digits_client.batching`), answers each image in the order given, a refused one
with its error, and needs no more from the caller than an iterable of files.

An image is a path, bytes, or an :class:`~digits_client.batching.Upload`.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Literal, Self, TypeVar

import httpx
from pydantic import BaseModel

from digits_client.batching import Limits, Upload, plan_batches, refusal, resplit
from digits_client.endpoints import (
    DEFAULT_URL,
    LIVE,
    MODEL,
    PREDICT,
    PREDICT_BATCH,
    READY,
    RECOGNIZE,
    Call,
    connection_failed,
)
from digits_client.errors import ApiError, DigitsError
from digits_client.models import (
    BatchPrediction,
    ItemError,
    Live,
    ModelInfo,
    Prediction,
    Ready,
    StringReading,
)
from digits_client.retry import Retry

ImageInput = str | os.PathLike[str] | bytes | Upload
Normalize = Literal["auto", "always", "never"]
A = TypeVar("A", bound=BaseModel)


def as_upload(image: ImageInput, name: str = "image") -> Upload:
    """An image as the file to send: a path is read, bytes are sent under ``name``."""
    if isinstance(image, Upload):
        return image
    if isinstance(image, bytes):
        return Upload.of(name, image)
    path = Path(image)
    return Upload.of(path.name, path.read_bytes())


@dataclass(frozen=True)
class ItemResult:
    """One image of :meth:`Client.predict_many`: its prediction or its error, never both."""

    index: int
    """Its position among the images given, from 0."""
    filename: str
    prediction: Prediction | None
    error: ItemError | None


class _ManyImages:
    """The bookkeeping of one ``predict_many``: what is answered, what is still to send.

    Shared by both clients; they only send. A batch refused whole for its size is cut again
    within the limits the refusal reports, a batch the service failed on (500) in halves, so
    that every image ends with its own answer or its own error.
    """

    def __init__(self, uploads: list[Upload], limits: Limits, max_files: int | None) -> None:
        self.uploads = uploads
        self.limits = limits
        self.results: dict[int, ItemResult] = {}
        sendable = []
        for index, upload in enumerate(uploads):
            refused = refusal(upload, limits)
            if refused is None:
                sendable.append(index)
            else:
                self._error(index, refused)
        self.batches = list(plan_batches(sendable, limits, self._upload, max_files=max_files))

    def _upload(self, index: int) -> Upload:
        return self.uploads[index]

    def _error(self, index: int, error: ApiError) -> None:
        item_error = ItemError(code=error.code, message=error.message)
        self.results[index] = ItemResult(index, self.uploads[index].filename, None, item_error)

    def answered(self, batch: list[int], answer: BatchPrediction) -> None:
        """Record a batch's answers, matched to its images by their index in the request."""
        for item in answer.results:
            index = batch[item.index]
            prediction = None
            if item.prediction is not None:
                fields = item.prediction.model_dump()
                prediction = Prediction(**fields, model_version=answer.model_version)
            filename = self.uploads[index].filename
            self.results[index] = ItemResult(index, filename, prediction, item.error)
        missing = set(range(len(batch))) - {item.index for item in answer.results}
        if missing:
            raise DigitsError(f"the service answered no result for {len(missing)} images")

    def refused(self, batch: list[int], error: ApiError) -> list[list[int]]:
        """The batches to send instead of one refused whole; raises what no cut can help."""
        again = resplit(batch, error, self.limits, self._upload)
        if again is not None:
            self.limits, parts = again
            return parts
        if len(batch) == 1 and not error.fatal and not error.transient:
            self._error(batch[0], error)
            return []
        raise error

    def in_order(self) -> list[ItemResult]:
        return [self.results[index] for index in range(len(self.uploads))]


def _query(**values: str | int | float | None) -> dict[str, str | int | float | None]:
    return values


class _Settings:
    """What both clients are configured with."""

    def __init__(self, api_key: str | None, retry: Retry | None, limits: Limits | None) -> None:
        self.api_key = api_key
        self.retry = retry or Retry()
        self.limits = limits or Limits()
        """The request limits batches are planned with; tightened when the service reports
        lower ones."""


class Client(_Settings):
    """A synchronous client of the digit reader service.

    ``url`` is the service's base URL; ``api_key`` is sent as ``X-API-Key``. ``limits``
    overrides the documented request limits that batches are sized by. ``transport`` or a
    whole ``http_client`` (an ``httpx.Client``, e.g. FastAPI's ``TestClient``) replace the
    network; ``sleep`` is how retries wait.

    Every call takes ``idempotent``: whether it may be sent again after a failure that leaves
    unknown whether it ran (a lost connection, a 503 after the work started). By default the
    reading calls are: ``/predict``, ``/predict/batch`` and ``/recognize`` change nothing on
    the service today (it keeps no reading), so reading an image twice equals reading it once.
    Pass ``idempotent=False`` once a call stores something (a review queue keeping readings):
    it is then retried only when it cannot have reached the service.
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        api_key: str | None = None,
        timeout: float = 60.0,
        retry: Retry | None = None,
        limits: Limits | None = None,
        transport: httpx.BaseTransport | None = None,
        http_client: httpx.Client | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        super().__init__(api_key, retry, limits)
        self._owns_http = http_client is None
        self._http = http_client or httpx.Client(base_url=url, timeout=timeout, transport=transport)
        self._sleep = sleep

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connections (not those of an ``http_client`` passed in)."""
        if self._owns_http:
            self._http.close()

    def send(self, call: Call[A]) -> A:
        """Make one call, retried as :attr:`retry` allows; its parsed answer."""
        for attempt in itertools.count(1):
            try:
                response = self._http.request(**call.request_arguments(self.api_key))
                return call.answer(response)
            except httpx.TransportError as exc:
                failure = connection_failed(exc)
                cause: BaseException | None = exc
            except ApiError as exc:
                failure, cause = exc, None
            wait = self.retry.wait(attempt, failure, idempotent=call.retry_safe)
            if wait is None:
                raise failure from cause
            self._sleep(wait)
        raise AssertionError("unreachable")  # pragma: no cover

    def predict(
        self,
        image: ImageInput,
        *,
        normalize: Normalize | None = None,
        threshold: float | None = None,
        version: int | None = None,
        label: str | None = None,
        idempotent: bool | None = None,
    ) -> Prediction:
        """``POST /predict``: read one digit."""
        query = _query(normalize=normalize, threshold=threshold, version=version, label=label)
        return self.send(Call(PREDICT, query, (as_upload(image),), idempotent))

    def predict_batch(
        self,
        images: Sequence[ImageInput],
        *,
        normalize: Normalize | None = None,
        threshold: float | None = None,
        version: int | None = None,
        label: str | None = None,
        idempotent: bool | None = None,
    ) -> BatchPrediction:
        """``POST /predict/batch``: the images in one request, as given (no sizing: a batch
        over a limit is refused whole; :meth:`predict_many` sizes them)."""
        uploads = tuple(as_upload(image, f"image-{i}") for i, image in enumerate(images))
        query = _query(normalize=normalize, threshold=threshold, version=version, label=label)
        return self.send(Call(PREDICT_BATCH, query, uploads, idempotent))

    def predict_many(
        self,
        images: Iterable[ImageInput],
        *,
        normalize: Normalize | None = None,
        threshold: float | None = None,
        version: int | None = None,
        label: str | None = None,
        max_files: int | None = None,
        idempotent: bool | None = None,
    ) -> list[ItemResult]:
        """Read any number of digits, in batches within the limits; one result per image, in
        order. ``max_files`` caps a batch below the service's limit."""
        uploads = [as_upload(image, f"image-{i}") for i, image in enumerate(images)]
        run = _ManyImages(uploads, self.limits, max_files)
        query = _query(normalize=normalize, threshold=threshold, version=version, label=label)
        pending = list(reversed(run.batches))
        while pending:
            batch = pending.pop()
            call = Call(PREDICT_BATCH, query, tuple(uploads[i] for i in batch), idempotent)
            try:
                run.answered(batch, self.send(call))
            except ApiError as error:
                pending.extend(reversed(run.refused(batch, error)))
                self.limits = run.limits
        return run.in_order()

    def recognize(
        self,
        image: ImageInput,
        *,
        expected_length: int | None = None,
        threshold: float | None = None,
        version: int | None = None,
        label: str | None = None,
        idempotent: bool | None = None,
    ) -> StringReading:
        """``POST /recognize``: read a digit string (a postal code)."""
        query = _query(
            expected_length=expected_length, threshold=threshold, version=version, label=label
        )
        return self.send(Call(RECOGNIZE, query, (as_upload(image),), idempotent))

    def model(self) -> ModelInfo:
        """``GET /model``: the served version and what is on disk."""
        return self.send(Call(MODEL))

    def live(self) -> Live:
        """``GET /health/live``."""
        return self.send(Call(LIVE))

    def ready(self) -> Ready:
        """``GET /health/ready``: raises :class:`ApiError` 503 while no model is loaded (after
        the retries the service's ``Retry-After`` allows)."""
        return self.send(Call(READY))


async def _gather(calls: Iterable[Awaitable[None]]) -> None:
    """Run the calls together; the first failure cancels the others and is raised as it is."""
    try:
        async with asyncio.TaskGroup() as group:
            for call in calls:
                group.create_task(_awaited(call))
    except BaseExceptionGroup as failures:
        first: BaseException = failures
        while isinstance(first, BaseExceptionGroup):
            first = first.exceptions[0]
        raise first from None


async def _awaited(call: Awaitable[None]) -> None:
    await call


class AsyncClient(_Settings):
    """The asynchronous twin of :class:`Client`: the same calls, awaited.

    :meth:`predict_many` sends up to ``concurrency`` batches at once.
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        api_key: str | None = None,
        timeout: float = 60.0,
        retry: Retry | None = None,
        limits: Limits | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        http_client: httpx.AsyncClient | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        super().__init__(api_key, retry, limits)
        self._owns_http = http_client is None
        self._http = http_client or httpx.AsyncClient(
            base_url=url, timeout=timeout, transport=transport
        )
        self._sleep = sleep

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connections (not those of an ``http_client`` passed in)."""
        if self._owns_http:
            await self._http.aclose()

    async def send(self, call: Call[A]) -> A:
        """Make one call, retried as :attr:`retry` allows; its parsed answer."""
        for attempt in itertools.count(1):
            try:
                response = await self._http.request(**call.request_arguments(self.api_key))
                return call.answer(response)
            except httpx.TransportError as exc:
                failure = connection_failed(exc)
                cause: BaseException | None = exc
            except ApiError as exc:
                failure, cause = exc, None
            wait = self.retry.wait(attempt, failure, idempotent=call.retry_safe)
            if wait is None:
                raise failure from cause
            await self._sleep(wait)
        raise AssertionError("unreachable")  # pragma: no cover

    async def predict(
        self,
        image: ImageInput,
        *,
        normalize: Normalize | None = None,
        threshold: float | None = None,
        version: int | None = None,
        label: str | None = None,
        idempotent: bool | None = None,
    ) -> Prediction:
        """``POST /predict``: read one digit."""
        query = _query(normalize=normalize, threshold=threshold, version=version, label=label)
        return await self.send(Call(PREDICT, query, (as_upload(image),), idempotent))

    async def predict_batch(
        self,
        images: Sequence[ImageInput],
        *,
        normalize: Normalize | None = None,
        threshold: float | None = None,
        version: int | None = None,
        label: str | None = None,
        idempotent: bool | None = None,
    ) -> BatchPrediction:
        """``POST /predict/batch``: the images in one request, as given."""
        uploads = tuple(as_upload(image, f"image-{i}") for i, image in enumerate(images))
        query = _query(normalize=normalize, threshold=threshold, version=version, label=label)
        return await self.send(Call(PREDICT_BATCH, query, uploads, idempotent))

    async def predict_many(
        self,
        images: Iterable[ImageInput],
        *,
        normalize: Normalize | None = None,
        threshold: float | None = None,
        version: int | None = None,
        label: str | None = None,
        max_files: int | None = None,
        concurrency: int = 4,
        idempotent: bool | None = None,
    ) -> list[ItemResult]:
        """Read any number of digits, ``concurrency`` batches at a time, each within the
        limits; one result per image, in order."""
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        uploads = [as_upload(image, f"image-{i}") for i, image in enumerate(images)]
        run = _ManyImages(uploads, self.limits, max_files)
        query = _query(normalize=normalize, threshold=threshold, version=version, label=label)
        slots = asyncio.Semaphore(concurrency)

        async def send(batch: list[int]) -> None:
            call = Call(PREDICT_BATCH, query, tuple(uploads[i] for i in batch), idempotent)
            async with slots:
                try:
                    answer = await self.send(call)
                except ApiError as error:
                    parts = run.refused(batch, error)
                    self.limits = run.limits
                else:
                    run.answered(batch, answer)
                    return
            await _gather(send(part) for part in parts)

        await _gather(send(batch) for batch in run.batches)
        return run.in_order()

    async def recognize(
        self,
        image: ImageInput,
        *,
        expected_length: int | None = None,
        threshold: float | None = None,
        version: int | None = None,
        label: str | None = None,
        idempotent: bool | None = None,
    ) -> StringReading:
        """``POST /recognize``: read a digit string (a postal code)."""
        query = _query(
            expected_length=expected_length, threshold=threshold, version=version, label=label
        )
        return await self.send(Call(RECOGNIZE, query, (as_upload(image),), idempotent))

    async def model(self) -> ModelInfo:
        """``GET /model``: the served version and what is on disk."""
        return await self.send(Call(MODEL))

    async def live(self) -> Live:
        """``GET /health/live``."""
        return await self.send(Call(LIVE))

    async def ready(self) -> Ready:
        """``GET /health/ready``: raises :class:`ApiError` 503 while no model is loaded."""
        return await self.send(Call(READY))
