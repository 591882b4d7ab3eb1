"""Every request of the service's API, built once for both clients.

Each function here takes a method's arguments and returns the :class:`~digits_client.endpoints.
Call` to send; :class:`~digits_client.Client` and :class:`~digits_client.AsyncClient` only send
it (their methods are these functions, wrapped: same parameters, same docstring). What takes
many requests (:class:`Many`: any number of images, in batches within the limits) is planned
here too; the clients only differ in how many of its batches they send at once.

An image is a path, bytes, or an :class:`~digits_client.batching.Upload`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar

from digits_client.batching import Limits, Upload, plan_batches, refusal, resplit
from digits_client.endpoints import (
    LIVE,
    MODEL,
    PREDICT,
    PREDICT_BATCH,
    READY,
    RECOGNIZE,
    RECOGNIZE_BATCH,
    REVIEW_CLAIM,
    REVIEW_DELETE,
    REVIEW_GET,
    REVIEW_IMAGE,
    REVIEW_LIST,
    REVIEW_RESULT,
    REVIEW_STATS,
    REVIEW_SUBMIT,
    Call,
    client_ref_header,
)
from digits_client.errors import ApiError, DigitsError
from digits_client.models import (
    BatchPrediction,
    ClaimedReview,
    ItemError,
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

ImageInput = str | os.PathLike[str] | bytes | Upload
Normalize = Literal["auto", "always", "never"]
ReviewKind = Literal["flagged", "audit"]
ReviewStatus = Literal["pending", "claimed", "done", "expired"]
Verdict = Literal["unreadable", "not_digits"]
B = TypeVar("B")
V = TypeVar("V")


def as_upload(image: ImageInput, name: str = "image") -> Upload:
    """An image as the file to send: a path is read, bytes are sent under ``name``."""
    if isinstance(image, Upload):
        return image
    if isinstance(image, bytes):
        return Upload.of(name, image)
    path = Path(image)
    return Upload.of(path.name, path.read_bytes())


def as_uploads(images: Iterable[ImageInput]) -> list[Upload]:
    """Images as files to send; bytes are named ``image-<index>``."""
    return [as_upload(image, f"image-{i}") for i, image in enumerate(images)]


# --- reading -------------------------------------------------------------------------------


def predict(
    image: ImageInput,
    *,
    normalize: Normalize | None = None,
    threshold: float | None = None,
    version: int | None = None,
    label: str | None = None,
    queue: bool | None = None,
    client_ref: str | None = None,
    idempotent: bool | None = None,
) -> Call[Prediction]:
    """``POST /predict``: read one digit (the image is sent as the request's body).

    ``queue=True`` asks the service to keep the reading in its review queue when it flags it
    (the answer's ``review_id``); the call is then not repeated after a failure that leaves
    unknown whether it ran, unless ``idempotent=True``. ``client_ref`` (``X-Client-Ref``, at
    most 200 printable ASCII characters) is stored with the review item.
    """
    query = {
        "normalize": normalize,
        "threshold": threshold,
        "version": version,
        "label": label,
        "queue": queue,
    }
    headers = client_ref_header(client_ref)
    safe = _reading_idempotent(idempotent, queue)
    return Call(PREDICT, query, (as_upload(image),), safe, headers=headers)


def predict_batch(
    images: Sequence[ImageInput],
    *,
    normalize: Normalize | None = None,
    threshold: float | None = None,
    version: int | None = None,
    label: str | None = None,
    queue: bool | None = None,
    client_ref: str | None = None,
    idempotent: bool | None = None,
) -> Call[BatchPrediction]:
    """``POST /predict/batch``: the images in one request, as given (no sizing: a batch over a
    limit is refused whole; ``predict_many`` sizes them). ``client_ref`` goes with each."""
    query = {
        "normalize": normalize,
        "threshold": threshold,
        "version": version,
        "label": label,
        "queue": queue,
    }
    uploads = tuple(as_uploads(images))
    safe = _reading_idempotent(idempotent, queue)
    return Call(PREDICT_BATCH, query, uploads, safe, headers=client_ref_header(client_ref))


def recognize(
    image: ImageInput,
    *,
    expected_length: int | None = None,
    threshold: float | None = None,
    version: int | None = None,
    label: str | None = None,
    client_ref: str | None = None,
    idempotent: bool | None = None,
) -> Call[StringReading]:
    """``POST /recognize``: read a digit string, such as a postal code (the image is sent as the
    request's body).

    The service keeps a flagged reading in its review queue (the answer's ``review_id``), so by
    default the call is not repeated after a failure that leaves unknown whether it ran:
    ``idempotent=True`` allows it where a reading queued twice does no harm.
    """
    query = {
        "expected_length": expected_length,
        "threshold": threshold,
        "version": version,
        "label": label,
    }
    headers = client_ref_header(client_ref)
    return Call(RECOGNIZE, query, (as_upload(image),), idempotent, headers=headers)


def recognize_batch(
    images: Sequence[ImageInput],
    *,
    expected_length: int | None = None,
    threshold: float | None = None,
    version: int | None = None,
    label: str | None = None,
    client_ref: str | None = None,
    idempotent: bool | None = None,
) -> Call[StringBatch]:
    """``POST /recognize/batch``: the digit strings in one request, as given (no sizing;
    ``recognize_many`` sizes them). ``client_ref`` goes with each."""
    query = {
        "expected_length": expected_length,
        "threshold": threshold,
        "version": version,
        "label": label,
    }
    uploads = tuple(as_uploads(images))
    headers = client_ref_header(client_ref)
    return Call(RECOGNIZE_BATCH, query, uploads, idempotent, headers=headers)


def _reading_idempotent(idempotent: bool | None, queue: bool | None) -> bool | None:
    """A digit asked to be queued is stored: not repeated blindly unless the caller says so."""
    if idempotent is None and queue:
        return False
    return idempotent


def model() -> Call[ModelInfo]:
    """``GET /model``: the served version and what is on disk."""
    return Call(MODEL)


def live() -> Call[Live]:
    """``GET /health/live``."""
    return Call(LIVE)


def ready() -> Call[Ready]:
    """``GET /health/ready``: raises :class:`ApiError` 503 while no model is loaded (after the
    retries the service's ``Retry-After`` allows)."""
    return Call(READY)


# --- the review queue (the reviewers' key, but for review_result) ----------------------------


def claim_review(reviewer: str, *, kind: ReviewKind | None = None) -> Call[ClaimedReview | None]:
    """``POST /reviews/claim``: hold the next waiting item (of ``kind``, or any) for
    ``reviewer`` until its ``lease_expires``; None when nothing is waiting."""
    return Call(REVIEW_CLAIM, json={"reviewer": reviewer, "kind": kind})


def submit_review(
    review_id: str,
    *,
    lease: str,
    reviewer: str,
    digits: str | None = None,
    corrections: Mapping[int, int] | None = None,
    verdict: Verdict | None = None,
) -> Call[ReviewItem]:
    """``POST /reviews/{id}``: a claimed item's answer, exactly one of: the ``digits`` as
    written, ``corrections`` of the reading (position from 0 → digit), or a ``verdict`` that
    the image is ``unreadable`` or ``not_digits``. Answers the item, done.

    Raises:
        ValueError: not exactly one of ``digits``, ``corrections`` and ``verdict``.
    """
    given = [name for name, value in [("digits", digits), ("corrections", corrections),
                                      ("verdict", verdict)] if value is not None]  # fmt: skip
    if len(given) != 1:
        raise ValueError(
            "give exactly one of digits, corrections or verdict, not "
            + (" and ".join(given) or "none")
        )
    body: dict[str, Any] = {"lease": lease, "reviewer": reviewer}
    if digits is not None:
        body["digits"] = digits
    elif corrections is not None:
        body["corrections"] = [
            {"position": position, "digit": digit} for position, digit in corrections.items()
        ]
    else:
        body["verdict"] = verdict
    return Call(REVIEW_SUBMIT, path_params={"review_id": review_id}, json=body)


def get_review(review_id: str) -> Call[ReviewItem]:
    """``GET /reviews/{id}``: one item, its reading and (once done) its result."""
    return Call(REVIEW_GET, path_params={"review_id": review_id})


def review_image(review_id: str) -> Call[ReviewImage]:
    """``GET /reviews/{id}/image``: the stored image, its bytes and content type (410
    ``review_image_deleted`` once retention has removed it)."""
    return Call(REVIEW_IMAGE, path_params={"review_id": review_id})


def list_reviews(
    *,
    status: ReviewStatus | None = None,
    kind: ReviewKind | None = None,
    limit: int | None = None,
    after: str | None = None,
) -> Call[ReviewPage]:
    """``GET /reviews``: a page of items; pass its ``next`` as ``after`` for the next page."""
    query = {"status": status, "kind": kind, "limit": limit, "after": after}
    return Call(REVIEW_LIST, query)


def review_stats() -> Call[ReviewStats]:
    """``GET /reviews/stats``: items by status and kind, and how long the oldest has waited."""
    return Call(REVIEW_STATS)


def delete_review(review_id: str) -> Call[None]:
    """``DELETE /reviews/{id}``: remove an item and its image."""
    return Call(REVIEW_DELETE, path_params={"review_id": review_id})


def review_result(review_id: str) -> Call[ReviewOutcome]:
    """``GET /reviews/{id}/result`` (the client's key): what became of a reading the service
    queued: its status and, once reviewed, the keyed answer."""
    return Call(REVIEW_RESULT, path_params={"review_id": review_id})


# --- many images ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Answered(Generic[V]):
    """One image of a run of many: its answer or its error, never both."""

    index: int
    """Its position among the images given, from 0."""
    filename: str
    answer: V | None
    error: ItemError | None


class Many(Generic[B, V]):
    """The bookkeeping of reading many images: what is answered, what is still to send.

    ``call`` makes a batch's request, ``items`` reads its answer as ``(index in the batch,
    answer, error)``. Shared by both clients; they only send. A batch refused whole for its
    size is cut again within the limits the refusal reports, a batch the service failed on
    (500) in halves, so that every image ends with its own answer or its own error.
    """

    def __init__(
        self,
        uploads: list[Upload],
        limits: Limits,
        max_files: int | None,
        call: Callable[[tuple[Upload, ...]], Call[B]],
        items: Callable[[B], Iterable[tuple[int, V | None, ItemError | None]]],
    ) -> None:
        self.uploads = uploads
        self.limits = limits
        self._call = call
        self._items = items
        self.results: dict[int, Answered[V]] = {}
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
        self.results[index] = Answered(index, self.uploads[index].filename, None, item_error)

    def call(self, batch: list[int]) -> Call[B]:
        """The request of one batch."""
        return self._call(tuple(self.uploads[index] for index in batch))

    def answered(self, batch: list[int], answer: B) -> None:
        """Record a batch's answers, matched to its images by their index in the request."""
        seen = set()
        for position, value, error in self._items(answer):
            index = batch[position]
            filename = self.uploads[index].filename
            self.results[index] = Answered(index, filename, value, error)
            seen.add(position)
        missing = set(range(len(batch))) - seen
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

    def in_order(self) -> list[Answered[V]]:
        """Every image's answer or error, in the order given."""
        return [self.results[index] for index in range(len(self.uploads))]


def many_digits(
    images: Iterable[ImageInput],
    limits: Limits,
    *,
    max_files: int | None,
    **options: Any,
) -> Many[BatchPrediction, Prediction]:
    """Single digits in ``POST /predict/batch`` requests; ``options`` are
    :func:`predict_batch`'s."""

    predict_batch((), **options)  # a bad option or client_ref fails now, not at the first batch

    def call(uploads: tuple[Upload, ...]) -> Call[BatchPrediction]:
        return predict_batch(uploads, **options)

    def items(answer: BatchPrediction) -> Iterable[tuple[int, Prediction | None, ItemError | None]]:
        for item in answer.results:
            prediction = None
            if item.prediction is not None:
                fields = item.prediction.model_dump()
                prediction = Prediction(**fields, model_version=answer.model_version)
            yield item.index, prediction, item.error

    return Many(as_uploads(images), limits, max_files, call, items)


def many_strings(
    images: Iterable[ImageInput],
    limits: Limits,
    *,
    max_files: int | None,
    **options: Any,
) -> Many[StringBatch, StringReading]:
    """Digit strings in ``POST /recognize/batch`` requests; ``options`` are
    :func:`recognize_batch`'s."""

    recognize_batch((), **options)  # a bad option or client_ref fails now

    def call(uploads: tuple[Upload, ...]) -> Call[StringBatch]:
        return recognize_batch(uploads, **options)

    def items(answer: StringBatch) -> Iterable[tuple[int, StringReading | None, ItemError | None]]:
        return ((item.index, item.reading, item.error) for item in answer.results)

    return Many(as_uploads(images), limits, max_files, call, items)
