"""The service's HTTP API as Python calls: :class:`Client` (sync) and :class:`AsyncClient`.

Both speak to one service (``url``), send the API key when given one, retry what may be retried
(:class:`~digits_client.retry.Retry`) and answer typed models (:mod:`digits_client.models`);
an error answer raises :class:`~digits_client.errors.ApiError` with the service's code.
``predict_many`` and ``recognize_many`` read any number of images: they cut them into batches
that fit the service's limits (:mod:`digits_client.batching`), answer each image in the order
given, a refused one with its error, and need no more from the caller than an iterable of files.

Every request is built once, in :mod:`digits_client.calls`; the two clients are two ways of
sending it. A one-request method of either client is the builder of that name wrapped (same
parameters, same docstring): the sync client sends the call and returns its answer, the async
one awaits it. Only the many-image methods are written out twice, because the async client
sends several batches at once.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import itertools
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Concatenate, ParamSpec, Self, TypeVar

import httpx

from digits_client import calls
from digits_client.batching import Limits
from digits_client.calls import ImageInput, Many, Normalize, as_upload
from digits_client.endpoints import DEFAULT_URL, Call, connection_failed
from digits_client.errors import ApiError
from digits_client.models import ItemError, Prediction, StringReading
from digits_client.retry import Retry

__all__ = [
    "DEFAULT_URL",
    "AsyncClient",
    "Client",
    "ImageInput",
    "ItemResult",
    "Normalize",
    "StringResult",
    "as_upload",
]

P = ParamSpec("P")
R = TypeVar("R")
B = TypeVar("B")
V = TypeVar("V")


@dataclass(frozen=True)
class ItemResult:
    """One image of :meth:`Client.predict_many`: its prediction or its error, never both."""

    index: int
    """Its position among the images given, from 0."""
    filename: str
    prediction: Prediction | None
    error: ItemError | None


@dataclass(frozen=True)
class StringResult:
    """One image of :meth:`Client.recognize_many`: its reading or its error, never both."""

    index: int
    """Its position among the images given, from 0."""
    filename: str
    reading: StringReading | None
    error: ItemError | None


def _as_method(method: Callable[..., Any], build: Callable[..., Any], owner: str) -> None:
    """Give ``method`` the name, docstring and signature of ``build``, with ``self`` first and
    the answer (not the call) as what it returns: what ``help()`` and IDEs show."""
    functools.update_wrapper(method, build)
    method.__module__ = __name__
    method.__qualname__ = f"{owner}.{build.__name__}"
    signature = inspect.signature(build)
    returns = signature.return_annotation
    if isinstance(returns, str) and returns.startswith("Call[") and returns.endswith("]"):
        returns = returns[len("Call[") : -1]
    this = inspect.Parameter("self", inspect.Parameter.POSITIONAL_ONLY)
    # inspect.signature reads __signature__ before following __wrapped__ to the builder.
    method.__dict__["__signature__"] = signature.replace(
        parameters=[this, *signature.parameters.values()], return_annotation=returns
    )


def _blocking(build: Callable[P, Call[R]]) -> Callable[Concatenate[Client, P], R]:
    """A method of :class:`Client` that sends the call ``build`` makes and returns its answer."""

    def method(self: Client, /, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.send(build(*args, **kwargs))

    _as_method(method, build, "Client")
    return method


def _awaited(
    build: Callable[P, Call[R]],
) -> Callable[Concatenate[AsyncClient, P], Coroutine[Any, Any, R]]:
    """A method of :class:`AsyncClient` that sends the call ``build`` makes, awaited."""

    async def method(self: AsyncClient, /, *args: P.args, **kwargs: P.kwargs) -> R:
        return await self.send(build(*args, **kwargs))

    _as_method(method, build, "AsyncClient")
    return method


class _Settings:
    """What both clients are configured with, and what they decide alike."""

    def __init__(self, api_key: str | None, retry: Retry | None, limits: Limits | None) -> None:
        self.api_key = api_key
        self.retry = retry or Retry()
        self.limits = limits or Limits()
        """The request limits batches are planned with; tightened when the service reports
        lower ones."""

    def _wait_after(
        self, call: Call[Any], attempt: int, exc: httpx.TransportError | ApiError
    ) -> float:
        """Seconds to wait before sending ``call`` again after try ``attempt`` failed with
        ``exc``; raises the failure when it is not to be sent again."""
        if isinstance(exc, httpx.TransportError):
            failure, cause = connection_failed(exc), exc
        else:
            failure, cause = exc, None
        wait = self.retry.wait(attempt, failure, idempotent=call.retry_safe)
        if wait is None:
            raise failure from cause
        return wait

    def _refused(self, many: Many[Any, Any], batch: list[int], error: ApiError) -> list[list[int]]:
        """What to send instead of a batch refused whole; learns the limits it reported."""
        parts = many.refused(batch, error)
        self.limits = many.limits
        return parts


def _item_results(many: Many[Any, Prediction]) -> list[ItemResult]:
    return [ItemResult(a.index, a.filename, a.answer, a.error) for a in many.in_order()]


def _string_results(many: Many[Any, StringReading]) -> list[StringResult]:
    return [StringResult(a.index, a.filename, a.answer, a.error) for a in many.in_order()]


class Client(_Settings):
    """A synchronous client of the digit reader service.

    ``url`` is the service's base URL; ``api_key`` is sent as ``X-API-Key`` (the reviewers' key
    for the review queue's calls). ``limits`` overrides the documented request limits that
    batches are sized by. ``transport`` or a whole ``http_client`` (an ``httpx.Client``, e.g.
    FastAPI's ``TestClient``) replace the network; ``sleep`` is how retries wait.

    Every reading call takes ``idempotent``: whether it may be sent again after a failure that
    leaves unknown whether it ran (a lost connection, a 503 after the work started). By default
    ``/predict`` and ``/predict/batch`` are (they store nothing unless asked with
    ``queue=True``), ``/recognize`` and ``/recognize/batch`` are not (the service keeps what
    they flag in its review queue: sent twice, a reading would be queued twice). A call that is
    not idempotent is retried only when it cannot have reached the service.
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

    def send(self, call: Call[R]) -> R:
        """Make one call, retried as :attr:`retry` allows; its parsed answer."""
        for attempt in itertools.count(1):
            try:
                return call.answer(self._http.request(**call.request_arguments(self.api_key)))
            except (httpx.TransportError, ApiError) as exc:
                self._sleep(self._wait_after(call, attempt, exc))
        raise AssertionError("unreachable")  # pragma: no cover

    predict = _blocking(calls.predict)
    predict_batch = _blocking(calls.predict_batch)
    recognize = _blocking(calls.recognize)
    recognize_batch = _blocking(calls.recognize_batch)
    model = _blocking(calls.model)
    live = _blocking(calls.live)
    ready = _blocking(calls.ready)
    claim_review = _blocking(calls.claim_review)
    submit_review = _blocking(calls.submit_review)
    get_review = _blocking(calls.get_review)
    review_image = _blocking(calls.review_image)
    list_reviews = _blocking(calls.list_reviews)
    review_stats = _blocking(calls.review_stats)
    delete_review = _blocking(calls.delete_review)
    review_result = _blocking(calls.review_result)

    def predict_many(
        self,
        images: Iterable[ImageInput],
        *,
        normalize: Normalize | None = None,
        threshold: float | None = None,
        version: int | None = None,
        label: str | None = None,
        queue: bool | None = None,
        client_ref: str | None = None,
        max_files: int | None = None,
        idempotent: bool | None = None,
    ) -> list[ItemResult]:
        """Read any number of digits, in ``POST /predict/batch`` requests within the limits;
        one result per image, in order. ``max_files`` caps a batch below the service's limit."""
        many = calls.many_digits(
            images,
            self.limits,
            max_files=max_files,
            normalize=normalize,
            threshold=threshold,
            version=version,
            label=label,
            queue=queue,
            client_ref=client_ref,
            idempotent=idempotent,
        )
        self._send_all(many)
        return _item_results(many)

    def recognize_many(
        self,
        images: Iterable[ImageInput],
        *,
        expected_length: int | None = None,
        threshold: float | None = None,
        version: int | None = None,
        label: str | None = None,
        client_ref: str | None = None,
        max_files: int | None = None,
        idempotent: bool | None = None,
    ) -> list[StringResult]:
        """Read any number of digit strings, in ``POST /recognize/batch`` requests within the
        limits; one result per image, in order."""
        many = calls.many_strings(
            images,
            self.limits,
            max_files=max_files,
            expected_length=expected_length,
            threshold=threshold,
            version=version,
            label=label,
            client_ref=client_ref,
            idempotent=idempotent,
        )
        self._send_all(many)
        return _string_results(many)

    def _send_all(self, many: Many[B, V]) -> None:
        pending = list(reversed(many.batches))
        while pending:
            batch = pending.pop()
            try:
                many.answered(batch, self.send(many.call(batch)))
            except ApiError as error:
                pending.extend(reversed(self._refused(many, batch, error)))


async def _gather(calls: Iterable[Awaitable[None]]) -> None:
    """Run the calls together; the first failure cancels the others and is raised as it is."""
    try:
        async with asyncio.TaskGroup() as group:
            for call in calls:
                group.create_task(_awaited_call(call))
    except BaseExceptionGroup as failures:
        first: BaseException = failures
        while isinstance(first, BaseExceptionGroup):
            first = first.exceptions[0]
        raise first from None


async def _awaited_call(call: Awaitable[None]) -> None:
    await call


class AsyncClient(_Settings):
    """The asynchronous twin of :class:`Client`: the same calls, awaited.

    :meth:`predict_many` and :meth:`recognize_many` send up to ``concurrency`` batches at once.
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

    async def send(self, call: Call[R]) -> R:
        """Make one call, retried as :attr:`retry` allows; its parsed answer."""
        for attempt in itertools.count(1):
            try:
                response = await self._http.request(**call.request_arguments(self.api_key))
                return call.answer(response)
            except (httpx.TransportError, ApiError) as exc:
                await self._sleep(self._wait_after(call, attempt, exc))
        raise AssertionError("unreachable")  # pragma: no cover

    predict = _awaited(calls.predict)
    predict_batch = _awaited(calls.predict_batch)
    recognize = _awaited(calls.recognize)
    recognize_batch = _awaited(calls.recognize_batch)
    model = _awaited(calls.model)
    live = _awaited(calls.live)
    ready = _awaited(calls.ready)
    claim_review = _awaited(calls.claim_review)
    submit_review = _awaited(calls.submit_review)
    get_review = _awaited(calls.get_review)
    review_image = _awaited(calls.review_image)
    list_reviews = _awaited(calls.list_reviews)
    review_stats = _awaited(calls.review_stats)
    delete_review = _awaited(calls.delete_review)
    review_result = _awaited(calls.review_result)

    async def predict_many(
        self,
        images: Iterable[ImageInput],
        *,
        normalize: Normalize | None = None,
        threshold: float | None = None,
        version: int | None = None,
        label: str | None = None,
        queue: bool | None = None,
        client_ref: str | None = None,
        max_files: int | None = None,
        concurrency: int = 4,
        idempotent: bool | None = None,
    ) -> list[ItemResult]:
        """Read any number of digits, ``concurrency`` batches at a time, each within the
        limits; one result per image, in order."""
        _check_concurrency(concurrency)
        many = calls.many_digits(
            images,
            self.limits,
            max_files=max_files,
            normalize=normalize,
            threshold=threshold,
            version=version,
            label=label,
            queue=queue,
            client_ref=client_ref,
            idempotent=idempotent,
        )
        await self._send_all(many, concurrency)
        return _item_results(many)

    async def recognize_many(
        self,
        images: Iterable[ImageInput],
        *,
        expected_length: int | None = None,
        threshold: float | None = None,
        version: int | None = None,
        label: str | None = None,
        client_ref: str | None = None,
        max_files: int | None = None,
        concurrency: int = 4,
        idempotent: bool | None = None,
    ) -> list[StringResult]:
        """Read any number of digit strings, ``concurrency`` batches at a time, each within
        the limits; one result per image, in order."""
        _check_concurrency(concurrency)
        many = calls.many_strings(
            images,
            self.limits,
            max_files=max_files,
            expected_length=expected_length,
            threshold=threshold,
            version=version,
            label=label,
            client_ref=client_ref,
            idempotent=idempotent,
        )
        await self._send_all(many, concurrency)
        return _string_results(many)

    async def _send_all(self, many: Many[B, V], concurrency: int) -> None:
        slots = asyncio.Semaphore(concurrency)

        async def send(batch: list[int]) -> None:
            async with slots:
                try:
                    answer = await self.send(many.call(batch))
                except ApiError as error:
                    parts = self._refused(many, batch, error)
                else:
                    many.answered(batch, answer)
                    return
            await _gather(send(part) for part in parts)

        await _gather(send(batch) for batch in many.batches)


def _check_concurrency(concurrency: int) -> None:
    if concurrency < 1:
        raise ValueError("concurrency must be at least 1")
