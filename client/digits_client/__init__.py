"""A client of the MNIST digit reader service: typed calls, sized batches, retries, and the
``digits`` command line (:mod:`digits_client.cli`). It needs httpx and pydantic, never
TensorFlow: only ``digits read --local`` (:mod:`digits_client.local`) imports the service.
"""

from digits_client.batching import Limits, Upload
from digits_client.client import AsyncClient, Client, ItemResult, StringResult
from digits_client.endpoints import DEFAULT_URL
from digits_client.errors import ApiError, DigitsError, NoAnswerError
from digits_client.models import (
    AuditEstimate,
    BatchItem,
    BatchPrediction,
    ClaimedReview,
    DigitPrediction,
    ItemError,
    KindCounts,
    ModelInfo,
    Prediction,
    ReviewImage,
    ReviewItem,
    ReviewOutcome,
    ReviewPage,
    ReviewQueueInfo,
    ReviewReason,
    ReviewResult,
    ReviewStats,
    StoredReading,
    StringBatch,
    StringBatchItem,
    StringReading,
)
from digits_client.retry import Retry

__all__ = [
    "DEFAULT_URL",
    "ApiError",
    "AsyncClient",
    "AuditEstimate",
    "BatchItem",
    "BatchPrediction",
    "ClaimedReview",
    "Client",
    "DigitPrediction",
    "DigitsError",
    "ItemError",
    "ItemResult",
    "KindCounts",
    "Limits",
    "ModelInfo",
    "NoAnswerError",
    "Prediction",
    "Retry",
    "ReviewImage",
    "ReviewItem",
    "ReviewOutcome",
    "ReviewPage",
    "ReviewQueueInfo",
    "ReviewReason",
    "ReviewResult",
    "ReviewStats",
    "StoredReading",
    "StringBatch",
    "StringBatchItem",
    "StringReading",
    "StringResult",
    "Upload",
]
