"""The service's endpoints as data, and what the sync and async clients share around a call.

An endpoint is a row of :data:`ENDPOINTS`: method, path, how its answer is parsed and whether
calling it is idempotent. A :class:`Call` is one request to make of it; both clients send
calls the same way (:meth:`Call.request_arguments`, :meth:`Call.answer`), and only the
sending differs. A new endpoint is a new row and a builder in :mod:`digits_client.calls`.

**Which calls are idempotent.** ``POST /predict`` and ``/predict/batch`` only read: the
service stores a single digit's reading only when it is asked to (``queue=True``, or its
operator set ``DIGITS_REVIEW_QUEUE_PREDICT``), so by default sending one twice has the effect
of sending it once, and a request whose answer was lost may be sent again. ``POST /recognize``
and ``/recognize/batch`` store what they flag in the review queue (the service's default), so
a request that may have run is not repeated blindly: sent again, a flagged reading would be
queued twice. Every client method takes ``idempotent=`` to say otherwise.
"""

from __future__ import annotations

import contextlib
import email.utils
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, Generic, Protocol, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ValidationError

from digits_client.batching import Upload
from digits_client.errors import ApiError, DigitsError, NoAnswerError
from digits_client.models import (
    BatchPrediction,
    ClaimedReview,
    ErrorAnswer,
    Live,
    ModelInfo,
    Prediction,
    Ready,
    ReviewImage,
    ReviewItem,
    ReviewOutcome,
    ReviewPage,
    ReviewStats,
    StringBatch,
    StringReading,
)

#: Where `make serve` listens.
DEFAULT_URL: Final = "http://127.0.0.1:8000"
#: The header carrying the API key (when the service sets ``DIGITS_API_KEY``); the reviewers'
#: key (``DIGITS_REVIEWER_API_KEY``) goes in the same header.
API_KEY_HEADER: Final = "X-API-Key"
#: The header carrying the caller's own reference of a reading, stored with its review item.
CLIENT_REF_HEADER: Final = "X-Client-Ref"
#: The longest ``X-Client-Ref`` the service stores.
CLIENT_REF_MAX: Final = 200
#: Content types the service takes as a raw image body (app/api/uploads.py); any other file
#: goes as ``application/octet-stream``, and the service's decoder says what the bytes are.
RAW_IMAGE_TYPES: Final = frozenset(
    {"image/png", "image/jpeg", "image/bmp", "image/gif", "image/webp"}
)
RAW_OTHER_TYPE: Final = "application/octet-stream"

R = TypeVar("R")
R_co = TypeVar("R_co", covariant=True)
M = TypeVar("M", bound=BaseModel)
QueryValue = str | int | float | bool | None


class Parser(Protocol[R_co]):
    """How an endpoint's success answer becomes a value."""

    @property
    def model(self) -> type[BaseModel] | None:
        """The model of its JSON answer, as the service's OpenAPI document describes it."""
        ...

    def parse(self, response: httpx.Response) -> R_co:
        """The value of a 2xx answer (raises ``pydantic.ValidationError`` for another shape)."""
        ...


@dataclass(frozen=True)
class Json(Generic[M]):
    """A JSON answer, parsed into ``model``."""

    model: type[M]

    def parse(self, response: httpx.Response) -> M:
        return self.model.model_validate_json(response.content)


@dataclass(frozen=True)
class JsonOrNone(Generic[M]):
    """A JSON answer parsed into ``model``, or None for 204 No Content."""

    model: type[M]

    def parse(self, response: httpx.Response) -> M | None:
        if response.status_code == 204:
            return None
        return self.model.model_validate_json(response.content)


@dataclass(frozen=True)
class Empty:
    """An answer without a body (204): None."""

    model: None = None

    def parse(self, response: httpx.Response) -> None:
        return None


@dataclass(frozen=True)
class Bytes:
    """An answer that is a file: its bytes and content type."""

    model: None = None

    def parse(self, response: httpx.Response) -> ReviewImage:
        content_type = response.headers.get("content-type", RAW_OTHER_TYPE)
        return ReviewImage(data=response.content, content_type=content_type)


@dataclass(frozen=True)
class Endpoint(Generic[R]):
    """One operation of the service."""

    method: str
    path: str
    """The path; ``{name}`` parts are filled from :attr:`Call.path_params`."""
    answer: Parser[R]
    """How its success answer is parsed."""
    idempotent: bool
    """Whether sending it twice has the effect of sending it once (so it may be retried after a
    failure that leaves unknown whether it ran)."""
    upload_field: str | None = None
    """The multipart field of its files, if it takes any."""
    raw_body: bool = False
    """Whether one image may be the request's body itself (no multipart: less to build and to
    parse on both sides). Such a call is sent that way."""
    query: tuple[str, ...] = ()
    """The query parameters it takes."""
    headers: tuple[str, ...] = ()
    """The request headers it takes, besides the API key."""
    json_body: bool = False
    """Whether it takes a JSON body."""


#: Which model version answers: ``?version=N`` or ``?label=NAME``.
_VERSION_QUERY: Final = ("version", "label")

PREDICT: Final = Endpoint(
    "POST",
    "/predict",
    Json(Prediction),
    idempotent=True,
    upload_field="file",
    raw_body=True,
    query=("normalize", "threshold", "queue", *_VERSION_QUERY),
    headers=(CLIENT_REF_HEADER,),
)
PREDICT_BATCH: Final = Endpoint(
    "POST",
    "/predict/batch",
    Json(BatchPrediction),
    idempotent=True,
    upload_field="files",
    query=("normalize", "threshold", "queue", *_VERSION_QUERY),
    headers=(CLIENT_REF_HEADER,),
)
RECOGNIZE: Final = Endpoint(
    "POST",
    "/recognize",
    Json(StringReading),
    idempotent=False,
    upload_field="file",
    raw_body=True,
    query=("expected_length", "threshold", *_VERSION_QUERY),
    headers=(CLIENT_REF_HEADER,),
)
RECOGNIZE_BATCH: Final = Endpoint(
    "POST",
    "/recognize/batch",
    Json(StringBatch),
    idempotent=False,
    upload_field="files",
    query=("expected_length", "threshold", *_VERSION_QUERY),
    headers=(CLIENT_REF_HEADER,),
)
MODEL: Final = Endpoint("GET", "/model", Json(ModelInfo), idempotent=True)
LIVE: Final = Endpoint("GET", "/health/live", Json(Live), idempotent=True)
READY: Final = Endpoint("GET", "/health/ready", Json(Ready), idempotent=True)

# The review queue. Claiming changes which item a reviewer holds: sent twice, it may hold a
# second item until its lease runs out, so it is not repeated blindly. Submitting the same
# answer again is answered 200 (only a different answer on a done item is refused), and a
# deleted item stays deleted: both may be repeated.
REVIEW_CLAIM: Final = Endpoint(
    "POST", "/reviews/claim", JsonOrNone(ClaimedReview), idempotent=False, json_body=True
)
REVIEW_SUBMIT: Final = Endpoint(
    "POST", "/reviews/{review_id}", Json(ReviewItem), idempotent=True, json_body=True
)
REVIEW_LIST: Final = Endpoint(
    "GET", "/reviews", Json(ReviewPage), idempotent=True, query=("status", "kind", "limit", "after")
)
REVIEW_STATS: Final = Endpoint("GET", "/reviews/stats", Json(ReviewStats), idempotent=True)
REVIEW_GET: Final = Endpoint("GET", "/reviews/{review_id}", Json(ReviewItem), idempotent=True)
REVIEW_IMAGE: Final = Endpoint("GET", "/reviews/{review_id}/image", Bytes(), idempotent=True)
REVIEW_DELETE: Final = Endpoint("DELETE", "/reviews/{review_id}", Empty(), idempotent=True)
REVIEW_RESULT: Final = Endpoint(
    "GET", "/reviews/{review_id}/result", Json(ReviewOutcome), idempotent=True
)

#: The review queue's endpoints.
REVIEW_ENDPOINTS: Final[tuple[Endpoint[Any], ...]] = (
    REVIEW_CLAIM,
    REVIEW_SUBMIT,
    REVIEW_LIST,
    REVIEW_STATS,
    REVIEW_GET,
    REVIEW_IMAGE,
    REVIEW_DELETE,
    REVIEW_RESULT,
)
#: Every endpoint the clients call (tests/client checks each against the OpenAPI document).
ENDPOINTS: Final[tuple[Endpoint[Any], ...]] = (
    PREDICT,
    PREDICT_BATCH,
    RECOGNIZE,
    RECOGNIZE_BATCH,
    MODEL,
    LIVE,
    READY,
    *REVIEW_ENDPOINTS,
)


def _query_value(value: str | int | float | bool) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def client_ref_header(client_ref: str | None) -> dict[str, str]:
    """The ``X-Client-Ref`` header for ``client_ref`` (none for None).

    Raises:
        ValueError: not 1 to 200 printable ASCII characters (what a header can carry as is).
    """
    if client_ref is None:
        return {}
    if not 0 < len(client_ref) <= CLIENT_REF_MAX or not all(" " <= c <= "~" for c in client_ref):
        raise ValueError(
            f"client_ref must be 1 to {CLIENT_REF_MAX} printable ASCII characters, "
            f"not {client_ref[:40]!r}" + ("..." if len(client_ref) > 40 else "")
        )
    return {CLIENT_REF_HEADER: client_ref}


@dataclass(frozen=True)
class Call(Generic[R]):
    """One request to make: an endpoint, its query, its files or JSON body, its headers."""

    endpoint: Endpoint[R]
    params: Mapping[str, QueryValue] = field(default_factory=dict)
    uploads: tuple[Upload, ...] = ()
    idempotent: bool | None = None
    """Overrides the endpoint's own: False once a call may change something on the service."""
    path_params: Mapping[str, str] = field(default_factory=dict)
    json: Mapping[str, Any] | None = None
    headers: Mapping[str, str] = field(default_factory=dict)

    @property
    def retry_safe(self) -> bool:
        """Whether a call that may have run may be sent again."""
        return self.endpoint.idempotent if self.idempotent is None else self.idempotent

    @property
    def path(self) -> str:
        """The endpoint's path with its parameters filled in (each quoted whole)."""
        values = {name: quote(value, safe="") for name, value in self.path_params.items()}
        return self.endpoint.path.format(**values)

    def request_arguments(self, api_key: str | None) -> dict[str, Any]:
        """Keyword arguments of ``httpx.Client.request`` for this call."""
        endpoint = self.endpoint
        unknown = set(self.params) - set(endpoint.query)
        assert not unknown, f"{endpoint.path} takes no {sorted(unknown)}"
        unknown = set(self.headers) - set(endpoint.headers)
        assert not unknown, f"{endpoint.path} takes no header {sorted(unknown)}"
        assert self.json is None or endpoint.json_body, f"{endpoint.path} takes no JSON body"
        headers = dict(self.headers)
        if api_key is not None:
            headers[API_KEY_HEADER] = api_key
        arguments: dict[str, Any] = {
            "method": endpoint.method,
            "url": self.path,
            "params": {k: _query_value(v) for k, v in self.params.items() if v is not None},
        }
        if self.json is not None:
            arguments["json"] = self.json
        if endpoint.raw_body and len(self.uploads) == 1:
            (upload,) = self.uploads
            content_type = upload.content_type
            headers["Content-Type"] = (
                content_type if content_type in RAW_IMAGE_TYPES else RAW_OTHER_TYPE
            )
            arguments["content"] = upload.data
        elif self.uploads:
            name = endpoint.upload_field
            assert name is not None, f"{endpoint.path} takes no files"
            arguments["files"] = [
                (name, (upload.filename, upload.data, upload.content_type))
                for upload in self.uploads
            ]
        if headers:
            arguments["headers"] = headers
        return arguments

    def answer(self, response: httpx.Response) -> R:
        """The parsed answer of a 2xx response; raises :class:`ApiError` for any other."""
        if not response.is_success:
            raise api_error(response)
        try:
            return self.endpoint.answer.parse(response)
        except ValidationError as exc:
            raise DigitsError(
                f"{self.endpoint.method} {self.path} answered what this client does "
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
