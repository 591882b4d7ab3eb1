"""The service's endpoints as data, and what the sync and async clients share around a call.

An endpoint is a row of :data:`ENDPOINTS`: method, path, the model of its answer and whether
calling it is idempotent. A new endpoint (``/recognize/batch``, a review queue's) is a new row
and a method on each client; the request building, error parsing and retrying below stay as
they are.

**Why the reading endpoints count as idempotent.** ``POST /predict``, ``/predict/batch`` and
``/recognize`` only read: the service keeps nothing of a request (no stored reading, no queue
entry), so sending one twice has the effect of sending it once, and a request whose answer was
lost may be sent again safely. That holds of the service as it is today. When the service
starts to keep readings (a review queue storing what it flags), a call that may have run
already must not be repeated blindly: every client method takes ``idempotent=False`` for
exactly that, and the row's default changes with the service.
"""

from __future__ import annotations

import contextlib
import email.utils
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, Generic, TypeVar

import httpx
from pydantic import BaseModel, ValidationError

from digits_client.batching import Upload
from digits_client.errors import ApiError, DigitsError, NoAnswerError
from digits_client.models import (
    BatchPrediction,
    ErrorAnswer,
    Live,
    ModelInfo,
    Prediction,
    Ready,
    StringReading,
)

#: Where `make serve` listens.
DEFAULT_URL: Final = "http://127.0.0.1:8000"
#: The header carrying the API key (when the service sets ``DIGITS_API_KEY``).
API_KEY_HEADER: Final = "X-API-Key"

A = TypeVar("A", bound=BaseModel)


@dataclass(frozen=True)
class Endpoint(Generic[A]):
    """One operation of the service."""

    method: str
    path: str
    answer: type[A]
    """The model its 200 answer is parsed into."""
    idempotent: bool
    """Whether sending it twice has the effect of sending it once (so it may be retried after a
    failure that leaves unknown whether it ran)."""
    upload_field: str | None = None
    """The multipart field of its files, if it takes any."""
    query: tuple[str, ...] = ()
    """The query parameters it takes."""


#: Which model version answers: ``?version=N`` or ``?label=NAME``.
_VERSION_QUERY: Final = ("version", "label")

PREDICT: Final = Endpoint(
    "POST",
    "/predict",
    Prediction,
    idempotent=True,
    upload_field="file",
    query=("normalize", "threshold", *_VERSION_QUERY),
)
PREDICT_BATCH: Final = Endpoint(
    "POST",
    "/predict/batch",
    BatchPrediction,
    idempotent=True,
    upload_field="files",
    query=("normalize", "threshold", *_VERSION_QUERY),
)
RECOGNIZE: Final = Endpoint(
    "POST",
    "/recognize",
    StringReading,
    idempotent=True,
    upload_field="file",
    query=("expected_length", "threshold", *_VERSION_QUERY),
)
MODEL: Final = Endpoint("GET", "/model", ModelInfo, idempotent=True)
LIVE: Final = Endpoint("GET", "/health/live", Live, idempotent=True)
READY: Final = Endpoint("GET", "/health/ready", Ready, idempotent=True)
#: Every endpoint the clients call (tests/client checks each against the OpenAPI document).
ENDPOINTS: Final = (PREDICT, PREDICT_BATCH, RECOGNIZE, MODEL, LIVE, READY)


@dataclass(frozen=True)
class Call(Generic[A]):
    """One request to make: an endpoint, its query and its files."""

    endpoint: Endpoint[A]
    params: Mapping[str, str | int | float | None] = field(default_factory=dict)
    uploads: tuple[Upload, ...] = ()
    idempotent: bool | None = None
    """Overrides the endpoint's own: False once a call may change something on the service."""

    @property
    def retry_safe(self) -> bool:
        """Whether a call that may have run may be sent again."""
        return self.endpoint.idempotent if self.idempotent is None else self.idempotent

    def request_arguments(self, api_key: str | None) -> dict[str, Any]:
        """Keyword arguments of ``httpx.Client.request`` for this call."""
        unknown = set(self.params) - set(self.endpoint.query)
        assert not unknown, f"{self.endpoint.path} takes no {sorted(unknown)}"
        arguments: dict[str, Any] = {
            "method": self.endpoint.method,
            "url": self.endpoint.path,
            "params": {k: str(v) for k, v in self.params.items() if v is not None},
        }
        if api_key is not None:
            arguments["headers"] = {API_KEY_HEADER: api_key}
        if self.uploads:
            name = self.endpoint.upload_field
            assert name is not None, f"{self.endpoint.path} takes no files"
            arguments["files"] = [
                (name, (upload.filename, upload.data, upload.content_type))
                for upload in self.uploads
            ]
        return arguments

    def answer(self, response: httpx.Response) -> A:
        """The parsed answer of a 2xx response; raises :class:`ApiError` for any other."""
        if not response.is_success:
            raise api_error(response)
        try:
            return self.endpoint.answer.model_validate_json(response.content)
        except ValidationError as exc:
            raise DigitsError(
                f"{self.endpoint.method} {self.endpoint.path} answered what this client does "
                f"not know (is {response.url.host}:{response.url.port} the digit reader?): "
                f"{exc.error_count()} fields differ, e.g. {exc.errors()[0]['msg']}"
            ) from exc


def api_error(response: httpx.Response) -> ApiError:
    """The service's error answer as an exception (any body: a proxy's page is not JSON)."""
    retry_after = parse_retry_after(response.headers.get("Retry-After"))
    try:
        error = ErrorAnswer.model_validate_json(response.content).error
    except ValidationError:
        text = response.text.strip().replace("\n", " ")[:200] or response.reason_phrase
        status = response.status_code
        return ApiError(status, f"http_{status}", text, None, retry_after)
    return ApiError(response.status_code, error.code, error.message, error.details, retry_after)


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from ``Retry-After``: delay-seconds or an HTTP date; None when absent or bad."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    seconds = (when - datetime.now(UTC)).total_seconds()
    return float(max(0, math.ceil(seconds))) if math.isfinite(seconds) else None


def connection_failed(exc: httpx.TransportError) -> DigitsError:
    """A transport failure as this client's error: was the request sent at all?"""
    if isinstance(exc, httpx.UnsupportedProtocol):
        return DigitsError(f"not an http:// or https:// URL: {exc}")
    sent = not isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout)
    where = ""
    with contextlib.suppress(RuntimeError):  # no request attached
        where = f" ({exc.request.url})"
    kind = "the request may have been sent" if sent else "no connection was made"
    return NoAnswerError(f"{type(exc).__name__}: {exc}{where}; {kind}", sent=sent)
