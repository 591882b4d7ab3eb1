"""Response models of the API: what each endpoint answers, as documented in OpenAPI."""

from __future__ import annotations

from datetime import datetime
from http import HTTPStatus
from typing import Annotated, Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue

from app.core.errors import ErrorResponse, error_codes
from app.reading.review import ReasonCode

#: One line per review reason code, for the OpenAPI document.
_REASON_TEXT: dict[ReasonCode, str] = {
    ReasonCode.LOW_CONFIDENCE: "a digit was read below the review threshold.",
    ReasonCode.NOT_DIGIT_LIKE: "a digit does not look like a handwritten digit.",
    ReasonCode.LENGTH_MISMATCH: "the number of digits is not `expected_length`.",
    ReasonCode.COUNT_UNCERTAIN: "another number of digits is almost as likely.",
    ReasonCode.CUT_UNCERTAIN: "another cut of the ink into digits is almost as likely.",
    ReasonCode.JOINED_TOO_WIDE: "a digit joined from pieces is wider than a digit.",
    ReasonCode.OFF_THE_LINE: "a digit is above or below the line of the others.",
    ReasonCode.SPANS_THE_IMAGE: "a digit is hairlines across the whole image (ruled lines).",
    ReasonCode.CUT_BY_THE_EDGE: "a digit runs into the edge of the image (a neighbour's ink).",
    ReasonCode.SEVERAL_DIGITS: "an image sent as one digit holds several (`/predict` only).",
}

Probability = Annotated[float, Field(ge=0.0, le=1.0)]
Probabilities = Annotated[
    list[Probability],
    Field(
        min_length=10,
        max_length=10,
        description="Probability of each digit 0-9, in order; they sum to 1.",
    ),
]

_PROBS_EXAMPLE: list[JsonValue] = [
    0.0001,
    0.0002,
    0.0011,
    0.0021,
    0.0,
    0.0003,
    0.0,
    0.9904,
    0.0004,
    0.0054,
]


class ReviewReason(BaseModel):
    """One reason to send a reading to a person."""

    code: ReasonCode = Field(
        description="What kind of reason: a fixed set, for programs (and metrics). "
        + " ".join(f"`{code.value}`: {_REASON_TEXT[code]}" for code in ReasonCode),
        examples=["low_confidence"],
    )
    message: str = Field(
        description="The reason for a person, with the figures that made it.",
        examples=["digit 4 of 5 was read with confidence 0.86, below the threshold 0.90"],
    )
    position: int | None = Field(
        default=None,
        ge=1,
        description="The digit it is about, counted from 1 (null: the whole string).",
        examples=[4],
    )


QueueState = Literal["queued", "audit", "not_queued"]

_REVIEW_ID_DESCRIPTION = (
    "The reading's item in the review queue when it was stored there (`queue` is `queued` or "
    "`audit`): `GET /reviews/{review_id}/result` gives what the reviewers keyed. Null when "
    "it was not stored."
)
_QUEUE_DESCRIPTION = (
    "What became of the reading in the review queue: `queued` (flagged for review and stored "
    "for people to key), `audit` (not flagged, stored as one of the sampled answers whose "
    "keyed results measure the error among accepted answers), `not_queued` (it should have "
    "been stored but the queue's database is unavailable or full; the reading itself is "
    "unaffected), or null (nothing to store: not flagged and not sampled, or storing is off "
    "for this endpoint)."
)


class DigitPrediction(BaseModel):
    """The model's reading of one digit image."""

    digit: int = Field(ge=0, le=9, description="The most probable digit.", examples=[7])
    confidence: Probability = Field(
        description="Probability of that digit (the largest of the ten).", examples=[0.9904]
    )
    probabilities: Probabilities = Field(examples=[_PROBS_EXAMPLE])
    normalized: bool = Field(
        description=(
            "Whether the image was normalized MNIST-style (grayscale, ink made white on black, "
            "cropped, fitted to 20×20 and centred in 28×28) before the model saw it; false when "
            "it already was a 28×28 MNIST-style image."
        ),
        examples=[False],
    )
    needs_review: bool = Field(
        description="True when a person should check the reading: its confidence is below the "
        "review threshold, the image does not look like a handwritten digit, or it holds "
        "several digits side by side (send strings to `/recognize`).",
        examples=[False],
    )
    review_reasons: list[ReviewReason] = Field(
        description="Why the reading needs review, one entry per reason (empty when not).",
        examples=[[]],
    )
    review_id: str | None = Field(default=None, description=_REVIEW_ID_DESCRIPTION, examples=[None])
    queue: QueueState | None = Field(default=None, description=_QUEUE_DESCRIPTION, examples=[None])


class PredictResponse(DigitPrediction):
    """Answer of ``POST /predict``."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "digit": 7,
                    "confidence": 0.9904,
                    "probabilities": _PROBS_EXAMPLE,
                    "model_version": 1,
                    "normalized": False,
                    "needs_review": False,
                    "review_reasons": [],
                    "review_id": None,
                    "queue": None,
                }
            ]
        }
    )

    model_version: int = Field(description="Version of the model that answered.", examples=[1])


class ItemError(BaseModel):
    """Why one file of a batch was not classified."""

    code: str = Field(examples=["not_an_image"])
    message: str = Field(
        examples=["The uploaded file is not an image. Send a PNG, JPEG, BMP, GIF or WebP file."]
    )


class BatchItem(BaseModel):
    """The answer for one file of a batch: a prediction or an error, never both."""

    index: int = Field(ge=0, description="Position of the file in the request, from 0.")
    filename: str | None = Field(description="The file name the client sent, if any.")
    prediction: DigitPrediction | None = None
    error: ItemError | None = None


class BatchResponse(BaseModel):
    """Answer of ``POST /predict/batch``: one entry per file, in the order they were sent."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "model_version": 1,
                    "results": [
                        {
                            "index": 0,
                            "filename": "seven.png",
                            "prediction": {
                                "digit": 7,
                                "confidence": 0.9904,
                                "probabilities": _PROBS_EXAMPLE,
                                "normalized": False,
                                "needs_review": False,
                                "review_reasons": [],
                                "review_id": None,
                                "queue": None,
                            },
                            "error": None,
                        },
                        {
                            "index": 1,
                            "filename": "notes.txt",
                            "prediction": None,
                            "error": {
                                "code": "not_an_image",
                                "message": "The uploaded file is not an image. Send a PNG, "
                                "JPEG, BMP, GIF or WebP file.",
                            },
                        },
                    ],
                }
            ]
        }
    )

    model_version: int = Field(description="Version of the model that answered every item.")
    results: list[BatchItem]


# --- /model --------------------------------------------------------------------------------


_STRING_PROBS_EXAMPLE: list[JsonValue] = [
    0.0002,
    0.0011,
    0.0003,
    0.0004,
    0.0002,
    0.9931,
    0.0012,
    0.0001,
    0.0031,
    0.0003,
]


class BoxModel(BaseModel):
    """Where a digit is, in pixels of the uploaded image (after EXIF rotation)."""

    x: int = Field(ge=0, description="Left edge.", examples=[34])
    y: int = Field(ge=0, description="Top edge.", examples=[20])
    width: int = Field(ge=1, examples=[41])
    height: int = Field(ge=1, examples=[58])


class SegmentReading(BaseModel):
    """One digit of the string: what it was read as, how sure, and where it is."""

    digit: int = Field(ge=0, le=9, description="The most probable digit.", examples=[5])
    confidence: Probability = Field(
        description="Probability of that digit (the largest of the ten).", examples=[0.9931]
    )
    probabilities: Probabilities = Field(examples=[_STRING_PROBS_EXAMPLE])
    box: BoxModel


class IgnoredMark(BaseModel):
    """Something in the image that is not a handwritten digit and was left out of the reading."""

    kind: Literal["margin", "ruled_line", "speck", "stray", "punctuation"] = Field(
        description="`margin`: a dark scan margin or border along an edge; `ruled_line`: a "
        "long thin straight line (of a form or a register, also where it crosses a digit); "
        "`speck`: dust, noise or paper texture; `stray`: ink outside the line of writing (bits "
        "of other text or cells); `punctuation`: a dot, comma, dash or equals sign.",
        examples=["ruled_line"],
    )
    box: BoxModel


class ImageSize(BaseModel):
    """Size of the uploaded image in pixels (after EXIF rotation)."""

    width: int = Field(ge=1, examples=[400])
    height: int = Field(ge=1, examples=[100])


class RecognizeResponse(BaseModel):
    """Answer of ``POST /recognize``."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "digits": "75001",
                    "confidence": 0.8123,
                    "needs_review": True,
                    "review_reasons": [
                        {
                            "code": "low_confidence",
                            "message": "digit 4 of 5 was read with confidence 0.86, below the "
                            "threshold 0.90",
                            "position": 4,
                        }
                    ],
                    "model_version": 1,
                    "image": {"width": 400, "height": 100},
                    "segments": [
                        {
                            "digit": 5,
                            "confidence": 0.9931,
                            "probabilities": _STRING_PROBS_EXAMPLE,
                            "box": {"x": 34, "y": 20, "width": 41, "height": 58},
                        }
                    ],
                    "ignored": [
                        {
                            "kind": "ruled_line",
                            "box": {"x": 0, "y": 81, "width": 400, "height": 3},
                        }
                    ],
                    "review_id": "pXq3v1Kd0mVhQ8lZs2bA9w",
                    "queue": "queued",
                }
            ]
        }
    )

    digits: str = Field(
        pattern=r"^[0-9]+$", description="The digits read, left to right.", examples=["75001"]
    )
    confidence: Probability = Field(
        description="Confidence in the whole string: the product of the digits' confidences.",
        examples=[0.8123],
    )
    needs_review: bool = Field(
        description="True when a person should check the reading: a digit's confidence is "
        "below the threshold, the cut into digits (or their number) is uncertain, or the "
        "string's length is not the expected one."
    )
    review_reasons: list[ReviewReason] = Field(
        description="Why the reading needs review, one entry per reason (empty when not)."
    )
    model_version: int = Field(description="Version of the model that answered.", examples=[1])
    image: ImageSize
    segments: list[SegmentReading] = Field(
        description="One entry per digit, left to right, in the same order as `digits`."
    )
    ignored: list[IgnoredMark] = Field(
        default_factory=list,
        description="What was found in the image and not read as digits, with boxes, so a "
        "page can show it: margins, ruled lines, specks, strays and punctuation.",
    )
    review_id: str | None = Field(default=None, description=_REVIEW_ID_DESCRIPTION)
    queue: QueueState | None = Field(default=None, description=_QUEUE_DESCRIPTION)


class RecognizeBatchItem(BaseModel):
    """The answer for one image of a batch: a reading or an error, never both."""

    index: int = Field(ge=0, description="Position of the file in the request, from 0.")
    filename: str | None = Field(description="The file name the client sent, if any.")
    reading: RecognizeResponse | None = None
    error: ItemError | None = None


class RecognizeBatchResponse(BaseModel):
    """Answer of ``POST /recognize/batch``: one entry per file, in the order they were sent."""

    model_version: int = Field(description="Version of the model that answered.", examples=[2])
    results: list[RecognizeBatchItem]


class TensorSpec(BaseModel):
    """A tensor of the model's signature."""

    name: str = Field(examples=["images"])
    dtype: str = Field(examples=["uint8"])
    shape: list[int | None] = Field(
        description="Dimensions; null is a dimension of any size (the batch).",
        examples=[[None, 28, 28]],
    )


class Signature(BaseModel):
    """The SavedModel signature the service calls."""

    name: str = Field(examples=["serving_default"])
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]


class FailedVersionInfo(BaseModel):
    """A model version on disk that could not be served: it failed to load or its probe check.

    It is tried again when any file inside it changes.
    """

    version: int
    reason: str = Field(
        examples=["probe check failed: 'digit' outside 0..9 on 40 of 42 probe images (e.g. 12)"]
    )
    failed_at: datetime
    attempts: int = Field(default=1, description="Load attempts that failed so far.")


class RealDigitsBaselineInfo(BaseModel):
    """The version served when a version was trained, measured on the same held-out digits."""

    version: int = Field(examples=[3])
    accuracy: float = Field(examples=[0.9507])


class RealDigitsInfo(BaseModel):
    """A version's accuracy on the held-out labelled real digits it was measured on at training
    time (``--extra-data``; its metrics.json's ``real_digits``), beside the then served
    version's on the same digits. What the promotion gate compares."""

    items: int = Field(examples=[1500], description="Held-out labelled real digits measured.")
    accuracy: float = Field(examples=[0.968], description="This version's share read right.")
    baseline: RealDigitsBaselineInfo | None = Field(
        description="The version served then (the newest the promotion gate accepted), on the "
        "same digits; null when there was none to compare with."
    )


#: What ``real_digits`` means wherever /model lists a version.
REAL_DIGITS_DESCRIPTION: Final = (
    "Its accuracy on held-out labelled real digits beside the then served version's, measured "
    "when it was trained with --extra-data; null when its metrics.json has no such figures."
)


class HeldVersionInfo(BaseModel):
    """A newer version the promotion gate keeps from being served (pin it to serve it)."""

    version: int
    reason: str = Field(
        examples=["test accuracy 0.8804 is more than 0.0050 below version 1's 0.9727"]
    )
    held_at: datetime
    test_accuracy: float | None
    real_digits: RealDigitsInfo | None = Field(default=None, description=REAL_DIGITS_DESCRIPTION)


class ServedVersionInfo(BaseModel):
    """A version loaded, warmed, probed and routable (``?version=`` or a label reaches it)."""

    version: int
    labels: list[str] = Field(description="Labels naming this version.")
    default: bool = Field(description="Whether requests naming no version get this one.")
    test_accuracy: float | None = Field(description="From its metrics.json; null if unknown.")
    probe_accuracy: float | None = Field(
        description="Share of the built-in probe digits it read correctly."
    )
    real_digits: RealDigitsInfo | None = Field(default=None, description=REAL_DIGITS_DESCRIPTION)
    loaded_at: datetime


class IgnoredEntryInfo(BaseModel):
    """A directory in the models directory that is not a valid version name."""

    name: str
    reason: str


class VersionPolicyInfo(BaseModel):
    """Which versions are served (DIGITS_VERSION_POLICY and related settings)."""

    kind: str = Field(examples=["latest"], description="'latest' or 'specific'.")
    source: str = Field(
        examples=["settings"],
        description="'settings', or the name of the TF Serving models.config file "
        "(DIGITS_VERSION_CONFIG) it was read from.",
    )
    error: str | None = Field(
        default=None,
        examples=["models.config: a FIFO, not a regular file"],
        description="Why the models.config file is not used now: a syntax error, nesting or a "
        "number past the parser's limits, a file that cannot be read or is not a regular file. "
        "The policy shown stays in force and new versions are still loaded under it; null "
        "when the file is used (or none is configured).",
    )
    latest_versions: int = Field(
        default=1, description="How many gate-passing newest versions 'latest' loads."
    )
    versions: list[int] = Field(description="The pinned versions ('specific').")
    labels: dict[str, int] = Field(description="Configured labels and the versions they name.")
    default_label: str | None
    promotion_tolerance: float
    promotion_min_accuracy: float
    probe_min_accuracy: float


class ReaderCalibrationInfo(BaseModel):
    """What ``/recognize``'s reader and review rule use for the served version."""

    source: Literal["reader.json", "defaults"] = Field(
        description="`reader.json` when the version directory holds a valid calibration, "
        "`defaults` when the service's built-in values are used instead."
    )
    reading_weights: dict[str, float]
    count_margin: float
    reading_margin: float
    review_threshold: float | None = Field(
        description="The version's own review threshold (null: the service's setting)."
    )
    likeness_rank: int | None = Field(
        description="Principal components per digit class in the digit-likeness basis (null: "
        "no likeness check)."
    )
    likeness_threshold: float | None
    notes: list[str] = Field(description="What is not calibrated for this version, and why.")


class ModelResponse(BaseModel):
    """Answer of ``GET /model``: the served version and what is on disk.

    The served-model fields are null while no version is loaded; ``failed_versions`` then says
    why.
    """

    ready: bool = Field(description="Whether a model is loaded, warmed up and serving.")
    version: int | None = Field(examples=[1])
    signature: Signature | None
    recipe: str | None = Field(examples=["default"])
    created_at: str | None = Field(examples=["2025-01-01T12:00:00Z"])
    test_accuracy: float | None = Field(examples=[0.9262])
    loaded_at: datetime | None
    load_seconds: float | None = Field(description="Time to load and warm up this version.")
    versions_on_disk: list[int] = Field(description="Version directories found, newest first.")
    failed_versions: list[FailedVersionInfo]
    served_versions: list[ServedVersionInfo] = Field(
        default_factory=list, description="Loaded, routable versions, newest first."
    )
    held_versions: list[HeldVersionInfo] = Field(
        default_factory=list,
        description="Newer versions the promotion gate keeps from being served ('latest' "
        "policy), with the reason; the served version keeps answering. Pin one "
        "(DIGITS_VERSIONS, or 'specific' in models.config) to serve it anyway.",
    )
    ignored_entries: list[IgnoredEntryInfo] = Field(
        default_factory=list,
        description="Directories whose names are not version numbers (ASCII digits, at most "
        "2^53 - 1).",
    )
    policy: VersionPolicyInfo | None = None
    probe_accuracy: float | None = Field(
        default=None, description="Share of the probe digits the default version read correctly."
    )
    poll_interval_seconds: float = Field(
        description="How often the models directory and models.config are checked "
        "(DIGITS_MODEL_POLL_SECONDS); 0 when polling is off."
    )
    last_checked: datetime | None = Field(description="When the directory was last scanned.")
    reader_calibration: ReaderCalibrationInfo | None = Field(
        default=None, description="The served version's reader calibration (null while none)."
    )
    audit: list[AuditInfo] = Field(
        default_factory=list,
        description="The error among answers not flagged for review, per model version, "
        "estimated from the audit samples reviewers keyed, with its Wilson 95% interval "
        "(empty before any was keyed, or while the review queue is unavailable).",
    )
    review_queue: ReviewQueueInfo | None = Field(
        default=None, description="The review queue's counts, or why it is unavailable."
    )


# --- /reviews ------------------------------------------------------------------------------

ReviewKind = Literal["flagged", "audit"]
ReviewStatus = Literal["pending", "claimed", "done", "expired"]
VerdictName = Literal["digits", "unreadable", "not_digits"]
_REVIEWER = Field(
    min_length=1,
    max_length=64,
    description="Who keys: 1 to 64 letters, digits or `. _ @ + -` (a name or an e-mail "
    "address), recorded with the result.",
    examples=["alice"],
)
_LEASE = Field(
    min_length=1,
    max_length=64,
    description="The lease token the claim gave.",
    examples=["Q2hhbmdlIG1lOiBhIHJhbmRvbSB0b2tlbg-8a"],
)


class StoredReason(BaseModel):
    """A review reason as the stored answer gave it (its code as it was then)."""

    code: str = Field(examples=["low_confidence"])
    message: str
    position: int | None = None


class StoredSegment(BaseModel):
    """One digit of a stored reading (no box for a `/predict` upload: the image is the digit)."""

    digit: int
    confidence: float
    probabilities: list[float]
    box: BoxModel | None = None


class StoredReading(BaseModel):
    """The answer as the service gave it, kept with its item: the fields every item has, and
    every other field of that endpoint's answer as it was (`/recognize`'s `image` and
    `ignored`, `/predict`'s `digit` and `normalized`, `model_version`...)."""

    model_config = ConfigDict(extra="allow")

    digits: str = Field(description="The digits read (one for `/predict`).", examples=["75011"])
    confidence: float
    segments: list[StoredSegment] = Field(
        default_factory=list, description="Per digit, in the order of `digits`."
    )
    review_reasons: list[StoredReason] = Field(default_factory=list)


class ReviewResultInfo(BaseModel):
    """What the reviewer keyed for an item."""

    verdict: VerdictName = Field(
        description="`digits` (the image shows `digits`), `unreadable` (a digit string nobody "
        "can read either) or `not_digits` (not a digit string at all)."
    )
    digits: str | None = Field(
        description="The digit string keyed (null for the other verdicts).", examples=["75011"]
    )
    reading_was_correct: bool = Field(
        description="Whether the service's reading was the string keyed."
    )


class ReviewItemInfo(BaseModel):
    """One item of the review queue: the reading as the service gave it, and its review."""

    review_id: str = Field(
        description="The item's unguessable id.", examples=["pXq3v1Kd0mVhQ8lZs2bA9w"]
    )
    kind: ReviewKind = Field(
        description="`flagged` (the service flagged the reading for review) or `audit` (an "
        "answer it did not flag, sampled to measure the error among accepted answers)."
    )
    endpoint: str = Field(description="Where the reading was made.", examples=["/recognize"])
    status: ReviewStatus = Field(
        description="`pending` (waiting; also when a claim's lease ran out), `claimed` (held "
        "by a reviewer until `lease_expires`), `done` (keyed: see `result`), `expired` (its "
        "image was deleted by retention before anyone keyed it)."
    )
    created_at: datetime
    model_version: int = Field(description="The model version that read it.")
    request_id: str | None = Field(description="The reading's X-Request-ID.")
    client_ref: str | None = Field(description="The client's X-Client-Ref, as sent.")
    expected_length: int | None = Field(description="The `expected_length` the reading was asked.")
    image_type: str = Field(description="The stored image's content type.", examples=["image/png"])
    has_image: bool = Field(description="False once retention deleted the image.")
    reading: StoredReading = Field(
        description="The answer as the service gave it (`/recognize`'s, or `/predict`'s with "
        "`digits` and one entry in `segments` added), so every item has `digits`, "
        "`confidence`, `segments` and `review_reasons`."
    )
    lease_expires: datetime | None = Field(description="Until when a claim holds it.")
    reviewer: str | None = Field(description="Who keyed it.")
    reviewed_at: datetime | None
    result: ReviewResultInfo | None = Field(description="Null until it is keyed.")


class ClaimedItemInfo(ReviewItemInfo):
    """A claimed item: yours to key until ``lease_expires``, with the lease to send back."""

    lease: str = Field(
        description="Send it with the result (`POST /reviews/{review_id}`) or to give the "
        "item back (`POST /reviews/{review_id}/release`)."
    )


class ReviewListResponse(BaseModel):
    """A page of items, oldest first."""

    items: list[ReviewItemInfo]
    next: str | None = Field(
        description="Pass it as `after` for the next page; null on the last page."
    )


class KindCounts(BaseModel):
    """Items of one kind by where they are."""

    waiting: int
    claimed: int
    done: int
    expired: int


class ReviewStatsResponse(KindCounts):
    """How many items wait, are held, were keyed, and expired.

    ``waiting``: to be claimed (pending, or claimed under a lease that ran out); ``claimed``:
    held under a running lease; ``done``: keyed; ``expired``: their image was deleted by
    retention before anyone keyed them.
    """

    by_kind: dict[str, KindCounts] = Field(description="The same counts for `flagged` and `audit`.")
    oldest_waiting_seconds: float | None = Field(
        description="How long the oldest waiting item has waited (null: none waits)."
    )


class ReviewResultResponse(BaseModel):
    """Answer of ``GET /reviews/{review_id}/result``: what became of a reading sent to review."""

    review_id: str
    status: ReviewStatus
    reading: StoredReading = Field(description="The answer as the service gave it.")
    result: ReviewResultInfo | None = Field(description="Null until a reviewer keyed it.")


class ClaimRequest(BaseModel):
    """Body of ``POST /reviews/claim``."""

    model_config = ConfigDict(extra="forbid")

    reviewer: str = _REVIEWER
    kind: ReviewKind | None = Field(
        default=None, description="Claim only this kind (default: the oldest of either)."
    )


class Correction(BaseModel):
    """One digit of the reading to change."""

    model_config = ConfigDict(extra="forbid")

    position: int = Field(
        ge=0,
        le=63,
        description="Which digit of the reading, counted from 0 (its index in `digits` and "
        "`segments`).",
        examples=[2],
    )
    digit: int = Field(ge=0, le=9, description="What it really is.", examples=[7])


class SubmitRequest(BaseModel):
    """Body of ``POST /reviews/{review_id}``: exactly one of ``digits``, ``corrections`` and a
    ``verdict`` of ``unreadable`` or ``not_digits``."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "lease": "Q2hhbmdlIG1lOiBhIHJhbmRvbSB0b2tlbg-8a",
                    "reviewer": "alice",
                    "digits": "75011",
                },
                {
                    "lease": "Q2hhbmdlIG1lOiBhIHJhbmRvbSB0b2tlbg-8a",
                    "reviewer": "alice",
                    "corrections": [{"position": 2, "digit": 7}],
                },
                {
                    "lease": "Q2hhbmdlIG1lOiBhIHJhbmRvbSB0b2tlbg-8a",
                    "reviewer": "alice",
                    "verdict": "unreadable",
                },
            ]
        },
    )

    lease: str | None = Field(
        default=None, min_length=1, max_length=64, description="The lease token the claim gave."
    )
    reviewer: str = _REVIEWER
    digits: str | None = Field(
        default=None,
        max_length=64,
        description="The whole string the image shows, digits 0-9 only (as many as "
        "`expected_length` when the reading was asked for a length).",
        examples=["75011"],
    )
    corrections: list[Correction] = Field(
        default_factory=list,
        max_length=64,
        description="Digits of the reading to change; the others stand. To change the number "
        "of digits, send `digits` instead.",
    )
    verdict: VerdictName | None = Field(
        default=None,
        description="`unreadable` or `not_digits` alone; `digits` only beside `digits` or "
        "`corrections`.",
    )


class ReleaseRequest(BaseModel):
    """Body of ``POST /reviews/{review_id}/release``."""

    model_config = ConfigDict(extra="forbid")

    lease: str = _LEASE


class AuditInfo(BaseModel):
    """How often one model version's accepted answers were wrong, from keyed audit samples."""

    model_version: int
    reviewed: int = Field(description="Audit samples keyed.")
    wrong: int = Field(
        description="Of those, answers the reviewers found wrong (unreadable and not-digits "
        "count as wrong)."
    )
    error_rate: float | None = Field(description="wrong / reviewed (null before any).")
    low: float = Field(description="Low end of the error rate's Wilson 95% interval.")
    high: float = Field(description="High end of the error rate's Wilson 95% interval.")


class ReviewQueueInfo(BaseModel):
    """The review queue: its counts, or why it is unavailable."""

    enabled: bool = Field(description="False when DIGITS_REVIEW_QUEUE is off.")
    available: bool = Field(description="Whether its database answers now.")
    reason: str | None = Field(default=None, description="Why it is unavailable.")
    waiting: int | None = None
    claimed: int | None = None
    done: int | None = None
    expired: int | None = None
    by_kind: dict[str, KindCounts] | None = None
    oldest_waiting_seconds: float | None = None


# --- /metrics ------------------------------------------------------------------------------


class PerClass(BaseModel):
    """Test-set figures for one digit."""

    model_config = ConfigDict(extra="allow")

    digit: int
    precision: float | None = None
    recall: float | None = None
    f1: float | None = None
    support: int | None = None


class EvaluationFigures(BaseModel):
    """The served model's evaluation on the 10,000 MNIST test images (from metrics.json)."""

    model_config = ConfigDict(extra="allow")

    accuracy: float | None = Field(default=None, examples=[0.9262])
    loss: float | None = Field(default=None, examples=[0.2671])
    per_class: list[PerClass] | None = None
    confusion_matrix: list[list[int]] | None = Field(
        default=None, description="Rows: true digit 0-9; columns: predicted digit 0-9."
    )


class ModelEvaluation(BaseModel):
    """The served model and its offline evaluation."""

    version: int
    recipe: str | None = None
    created_at: str | None = None
    test: EvaluationFigures | None = None


class EndpointFigures(BaseModel):
    """Requests answered by one endpoint since start."""

    requests: int
    errors: int = Field(description="Answers with a 4xx or 5xx status.")
    by_status: dict[str, int]
    mean_latency_ms: float


class InferenceFigures(BaseModel):
    """The inference worker's model calls since start."""

    model_calls: int
    images: int
    requests: int
    mean_images_per_call: float
    mean_requests_per_call: float = Field(
        description="Concurrent requests answered by one model call (micro-batching)."
    )
    largest_call: int


class ServiceFigures(BaseModel):
    """Live figures of this replica: its totals over every worker process (``ready``,
    ``started_at`` and ``uptime_seconds`` are the answering worker's)."""

    ready: bool
    started_at: datetime
    uptime_seconds: float
    requests_total: int
    requests_in_progress: int
    endpoints: dict[str, EndpointFigures] = Field(description='Keyed by "METHOD /route/template".')
    errors_by_code: dict[str, int]
    images_predicted: int
    images_by_endpoint: dict[str, int]
    inference: InferenceFigures


class MetricsResponse(BaseModel):
    """Answer of ``GET /metrics`` in JSON (the Prometheus format is chosen by ``Accept``)."""

    model: ModelEvaluation | None = Field(description="Null while no model is loaded.")
    service: ServiceFigures


# --- /health -------------------------------------------------------------------------------


class LiveResponse(BaseModel):
    """The process is up and answering."""

    status: Literal["alive"] = "alive"


class ReadyResponse(BaseModel):
    """A model is loaded and warmed up: predictions will be answered."""

    status: Literal["ready"] = "ready"
    model_version: int = Field(examples=[1])


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for the given error statuses, all in the one error shape."""
    return {
        status: {"model": ErrorResponse, "description": _error_description(status)}
        for status in statuses
    }


def _error_description(status: int) -> str:
    """The OpenAPI description of one error status: the codes answered with it.

    The codes come from the tables in :mod:`app.core.errors`, so the docs cannot drift from
    what the service answers.
    """
    codes = ", ".join(f"`{code}`" for code in error_codes(status))
    return (
        f"{HTTPStatus(status).phrase}. Error codes: {codes}."
        if codes
        else HTTPStatus(status).phrase
    )
