"""The service's answers, typed: one model per schema of its OpenAPI document.

They mirror ``app/api/schemas.py`` field for field (names, types, which are required and which
may be null); ``tests/client/test_models.py`` compares them with the service's ``/openapi.json``
so the two cannot drift. Enumerations of the service (review reason codes, mark kinds) are
plain strings here: a code added to the service must not make an older client fail to parse an
answer. Unknown fields are ignored for the same reason.

The review queue's answers (:class:`ReviewItem` and the rest) follow the service's review-queue
contract; a reading's ``review_id`` and ``queue`` default to None so that the answers of a
service without a queue parse as they did.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class _Answer(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


# --- /predict, /predict/batch --------------------------------------------------------------


class ReviewReason(_Answer):
    """One reason to send a reading to a person; ``code`` is for programs."""

    code: str
    message: str
    position: int | None = None


class DigitPrediction(_Answer):
    """The model's reading of one digit image, judged for review as the service judges it."""

    digit: int
    confidence: float
    probabilities: list[float] = Field(description="Probability of each digit 0-9, in order.")
    normalized: bool
    needs_review: bool
    review_reasons: list[ReviewReason]
    review_id: str | None = None
    """The review queue's id of this reading, when the service stored it (flagged or audit)."""
    queue: str | None = None
    """``queued`` (flagged and stored), ``audit`` (stored as an audit sample), ``not_queued``
    (should have been stored but the queue failed or is full), None (nothing to store)."""


class Prediction(DigitPrediction):
    """Answer of ``POST /predict``."""

    model_version: int


class ItemError(_Answer):
    """Why one file of a batch was not read."""

    code: str
    message: str


class BatchItem(_Answer):
    """The answer for one file of a batch: a prediction or an error, never both."""

    index: int
    filename: str | None
    prediction: DigitPrediction | None = None
    error: ItemError | None = None


class BatchPrediction(_Answer):
    """Answer of ``POST /predict/batch``."""

    model_version: int
    results: list[BatchItem]


# --- /recognize ----------------------------------------------------------------------------


class Box(_Answer):
    """Where a digit or a mark is, in pixels of the uploaded image."""

    x: int
    y: int
    width: int
    height: int


class ImageSize(_Answer):
    """Size of the uploaded image in pixels (after EXIF rotation)."""

    width: int
    height: int


class Segment(_Answer):
    """One digit of a string."""

    digit: int
    confidence: float
    probabilities: list[float]
    box: Box


class IgnoredMark(_Answer):
    """A mark left out of the reading: margin, ruled_line, speck, stray or punctuation."""

    kind: str
    box: Box


class StringReading(_Answer):
    """Answer of ``POST /recognize``."""

    digits: str
    confidence: float
    needs_review: bool
    review_reasons: list[ReviewReason]
    model_version: int
    image: ImageSize
    segments: list[Segment]
    ignored: list[IgnoredMark] = Field(default_factory=list)
    review_id: str | None = None
    """The review queue's id of this reading, when the service stored it (flagged or audit)."""
    queue: str | None = None
    """``queued``, ``audit``, ``not_queued`` or None, as for :class:`DigitPrediction`."""


class StringBatchItem(_Answer):
    """The answer for one image of ``POST /recognize/batch``: a reading or an error."""

    index: int
    filename: str | None
    reading: StringReading | None = None
    error: ItemError | None = None


class StringBatch(_Answer):
    """Answer of ``POST /recognize/batch``."""

    model_version: int
    results: list[StringBatchItem]


# --- /model --------------------------------------------------------------------------------


class TensorSpec(_Answer):
    """A tensor of the model's signature."""

    name: str
    dtype: str
    shape: list[int | None]


class Signature(_Answer):
    """The SavedModel signature the service calls."""

    name: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]


class FailedVersion(_Answer):
    """A version on disk that could not be served, and why."""

    version: int
    reason: str
    failed_at: datetime
    attempts: int = 1


class RealDigitsBaseline(_Answer):
    """The version served when a version was trained, on the same held-out real digits."""

    version: int
    accuracy: float


class RealDigits(_Answer):
    """A version's accuracy on held-out labelled real digits (training's ``--extra-data``)
    beside the then served version's: what the promotion gate compared."""

    items: int
    accuracy: float
    baseline: RealDigitsBaseline | None


class HeldVersion(_Answer):
    """A newer version the promotion gate keeps from being served."""

    version: int
    reason: str
    held_at: datetime
    test_accuracy: float | None
    real_digits: RealDigits | None = None


class ServedVersion(_Answer):
    """A version loaded and routable."""

    version: int
    labels: list[str]
    default: bool
    test_accuracy: float | None
    probe_accuracy: float | None
    loaded_at: datetime
    real_digits: RealDigits | None = None


class IgnoredEntry(_Answer):
    """A directory of the models directory that is not a version."""

    name: str
    reason: str


class VersionPolicy(_Answer):
    """Which versions the service serves."""

    kind: str
    source: str
    error: str | None = None
    latest_versions: int = 1
    versions: list[int]
    labels: dict[str, int]
    default_label: str | None
    promotion_tolerance: float
    promotion_min_accuracy: float
    probe_min_accuracy: float


class ReaderCalibration(_Answer):
    """What ``/recognize``'s reader and review rule use for the served version."""

    source: str
    reading_weights: dict[str, float]
    count_margin: float
    reading_margin: float
    review_threshold: float | None
    likeness_rank: int | None
    likeness_threshold: float | None
    notes: list[str]


class KindCounts(_Answer):
    """Items of one kind by where they are."""

    waiting: int
    claimed: int
    done: int
    expired: int


class AuditEstimate(_Answer):
    """How often one version's accepted answers were wrong, with its Wilson 95% interval."""

    model_version: int
    reviewed: int
    wrong: int
    error_rate: float | None
    low: float
    high: float


class ReviewQueueInfo(_Answer):
    """The review queue's counts in ``GET /model``, or why it is unavailable."""

    enabled: bool
    available: bool
    reason: str | None = None
    waiting: int | None = None
    claimed: int | None = None
    done: int | None = None
    expired: int | None = None
    by_kind: dict[str, KindCounts] | None = None
    oldest_waiting_seconds: float | None = None


class ModelInfo(_Answer):
    """Answer of ``GET /model``: the served version and what is on disk."""

    ready: bool
    version: int | None
    signature: Signature | None
    recipe: str | None
    created_at: str | None
    test_accuracy: float | None
    loaded_at: datetime | None
    load_seconds: float | None
    versions_on_disk: list[int]
    failed_versions: list[FailedVersion]
    served_versions: list[ServedVersion] = Field(default_factory=list)
    held_versions: list[HeldVersion] = Field(default_factory=list)
    ignored_entries: list[IgnoredEntry] = Field(default_factory=list)
    policy: VersionPolicy | None = None
    probe_accuracy: float | None = None
    poll_interval_seconds: float
    last_checked: datetime | None
    reader_calibration: ReaderCalibration | None = None
    audit: list[AuditEstimate] = Field(default_factory=list)
    """The error among accepted answers per version, from keyed audit samples."""
    review_queue: ReviewQueueInfo | None = None


# --- /reviews -----------------------------------------------------------------------------


class StoredSegment(_Answer):
    """One digit of a stored reading."""

    digit: int
    confidence: float
    probabilities: list[float]
    box: Box | None = None


class StoredReading(_Answer):
    """A reading as the service answered it, kept with its review item."""

    digits: str
    confidence: float
    segments: list[StoredSegment] = Field(default_factory=list)
    review_reasons: list[ReviewReason] = Field(default_factory=list)


class ReviewResult(_Answer):
    """What a person keyed: the digits, or that the image is unreadable or not digits."""

    verdict: str
    """``digits``, ``unreadable`` or ``not_digits``."""
    digits: str | None
    reading_was_correct: bool


class ReviewItem(_Answer):
    """One item of the review queue: a stored reading, its image's state and its review."""

    review_id: str
    kind: str
    """``flagged`` or ``audit``."""
    endpoint: str
    """``/recognize`` or ``/predict``."""
    status: str
    """``pending``, ``claimed``, ``done`` or ``expired``."""
    created_at: datetime
    model_version: int
    request_id: str | None
    client_ref: str | None
    expected_length: int | None
    image_type: str
    has_image: bool
    reading: StoredReading
    lease_expires: datetime | None
    reviewer: str | None
    reviewed_at: datetime | None
    result: ReviewResult | None


class ClaimedReview(ReviewItem):
    """Answer of ``POST /reviews/claim``: an item held for one reviewer until ``lease_expires``;
    ``lease`` goes with the answer (:meth:`~digits_client.Client.submit_review`)."""

    lease: str


class ReviewPage(_Answer):
    """Answer of ``GET /reviews``: items in id order; ``next`` is the ``after`` of the next page."""

    items: list[ReviewItem]
    next: str | None


class ReviewStats(KindCounts):
    """Answer of ``GET /reviews/stats``: items ``waiting`` (to be claimed: pending, or claimed
    under a lease that ran out), ``claimed``, ``done`` and ``expired``, the same by kind, and
    how long the oldest waiting one has waited."""

    by_kind: dict[str, KindCounts]
    oldest_waiting_seconds: float | None


class ReviewOutcome(_Answer):
    """Answer of ``GET /reviews/{id}/result`` (the client's key): the reading and its review."""

    review_id: str
    status: str
    reading: StoredReading
    result: ReviewResult | None


class ReviewImage(_Answer):
    """Answer of ``GET /reviews/{id}/image``: the stored bytes with their content type."""

    data: bytes
    content_type: str


# --- /health, errors -----------------------------------------------------------------------


class Live(_Answer):
    """Answer of ``GET /health/live``."""

    status: str = "alive"


class Ready(_Answer):
    """Answer of ``GET /health/ready`` when a model is loaded and warmed up."""

    status: str = "ready"
    model_version: int


class ErrorBody(_Answer):
    """What went wrong: ``code`` for a program, ``message`` for a person."""

    code: str
    message: str
    details: dict[str, Any] | None = None


class ErrorAnswer(_Answer):
    """The body of every error answer."""

    error: ErrorBody
