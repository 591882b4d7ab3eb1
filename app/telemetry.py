"""What the service measures about itself: Prometheus metrics and the live figures of /metrics.

Every app gets its own :class:`Telemetry` with its own ``CollectorRegistry`` (tests build many
apps in one process). :class:`RequestTelemetryMiddleware` times every request, counts it by
route template and status, writes the access log line, and turns any unhandled exception into
a logged traceback and a generic 500 in the service's error shape.
"""

from __future__ import annotations

import json
import logging
import math
import re
import threading
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.openmetrics.exposition import (
    CONTENT_TYPE_LATEST as OPENMETRICS_CONTENT_TYPE,
)
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core.errors import ApiError
from app.reading.review import ReasonCode

if TYPE_CHECKING:
    from app.serving.loaded import LoadedModel
    from app.serving.store import StoreStatus

logger = logging.getLogger("app.access")
error_logger = logging.getLogger("app.errors")

PROMETHEUS_CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
_LATENCY_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_BATCH_BUCKETS: Final = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)
# Fine near 1, where the review threshold (0.98 by default) and most answers lie.
_CONFIDENCE_BUCKETS: Final = (
    0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999, 0.9999, 1.0,
)  # fmt: skip
#: Why /recognize flagged an answer for review, as metric labels: the review reason codes.
REVIEW_REASONS: Final = tuple(code.value for code in ReasonCode)
UNMATCHED: Final = "unmatched"
_MAX_VERSION_SERIES: Final = 10
_METHODS: Final = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})


class Telemetry:
    """The service's metrics, in one per-app registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.started_at = datetime.now(UTC)
        self._started = time.monotonic()
        r = self.registry
        self.requests = Counter(
            "digits_http_requests",
            "HTTP requests answered, by route template, method and status.",
            ["endpoint", "method", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "digits_http_request_duration_seconds",
            "Time from request start to the end of the response, by route and status.",
            ["endpoint", "method", "status"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.in_progress = Gauge(
            "digits_http_requests_in_progress", "Requests being answered now.", registry=r
        )
        #: Requests being answered now (HTTP and gRPC): a plain number kept by the event loop,
        #: read by the gauge at scrape time and by the inference worker on every hand-over.
        self.in_flight = 0
        self.in_progress.set_function(lambda: self.in_flight)
        self.errors = Counter(
            "digits_errors",
            "Errors returned, by error code (batch items included).",
            ["code"],
            registry=r,
        )
        self.images = Counter(
            "digits_images_predicted",
            "Images classified by the model, by endpoint.",
            ["endpoint"],
            registry=r,
        )
        self.batch_size = Histogram(
            "digits_inference_batch_images",
            "Images per model call (concurrent requests are batched into one call).",
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.batch_seconds = Histogram(
            "digits_inference_call_duration_seconds",
            "Duration of one model call.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.model_accuracy = Gauge(
            "digits_model_test_accuracy",
            "Accuracy of the served model on the 10,000 MNIST test images (from metrics.json).",
            registry=r,
        )
        self.model_version = Gauge(
            "digits_model_version", "Version number of the served model.", registry=r
        )
        self.model_info = Info("digits_model", "The served model.", registry=r)
        self.ready = Gauge(
            "digits_ready", "1 when a model is loaded and warmed up, else 0.", registry=r
        )
        self.load_failures = Counter(
            "digits_model_load_failures",
            "Attempts to load a model version that failed (load, warm-up or probe check).",
            registry=r,
        )
        self.versions_held = Counter(
            "digits_model_versions_held",
            "Times the promotion gate held a newer model version back.",
            registry=r,
        )
        self.versions = Gauge(
            "digits_model_versions",
            "Model versions by state: served (loaded and routable), held, failed, ignored "
            "(a directory name that is not a version number).",
            ["state"],
            registry=r,
        )
        self.version_state = Gauge(
            "digits_model_version_state",
            f"1 for each of the newest {_MAX_VERSION_SERIES} versions per state (served, held, "
            "failed).",
            ["version", "state"],
            registry=r,
        )
        self.label_version = Gauge(
            "digits_model_label_version",
            "The version each configured label names, while that version is served.",
            ["label"],
            registry=r,
        )
        self.confidence = Histogram(
            "digits_answer_confidence",
            "Confidence of every digit answered (its probability, the largest of the ten), "
            "by endpoint.",
            ["endpoint"],
            buckets=_CONFIDENCE_BUCKETS,
            registry=r,
        )
        self.digits = Counter(
            "digits_answered_digits",
            "Digits answered, by endpoint and digit value.",
            ["endpoint", "digit"],
            registry=r,
        )
        self.recognize_answers = Counter(
            "digits_recognize_answers",
            "Readings answered by /recognize, by whether they were flagged for review.",
            ["needs_review"],
            registry=r,
        )
        self.review_reasons = Counter(
            "digits_recognize_reviews",
            "Readings /recognize flagged for review, by reason (a reading with several "
            "reasons counts once under each).",
            ["reason"],
            registry=r,
        )
        self.probe_accuracy = Gauge(
            "digits_model_probe_accuracy",
            "Accuracy of a model version on the probe set it answered before being served.",
            ["version"],
            registry=r,
        )
        ProcessCollector(registry=r)
        # Bounded label sets exist from the start, at 0, so rates over them are defined.
        self._reviewed = {
            flag: self.recognize_answers.labels(str(flag).lower()) for flag in (True, False)
        }
        self._reason_counters = {code: self.review_reasons.labels(code) for code in REVIEW_REASONS}
        self._answer_children: dict[tuple[str, int], tuple[Any, Any]] = {}
        self._lock = threading.Lock()
        self._batches = 0
        self._batched_images = 0
        self._batched_requests = 0
        self._largest_batch = 0
        self._children: dict[tuple[str, str, str], tuple[Any, Any]] = {}

    # --- recording -------------------------------------------------------------------------

    def observe_request(self, endpoint: str, method: str, status: int, seconds: float) -> None:
        """Count one answered request and its latency."""
        # Clients choose the method token: unknown ones share one label value, so a stream of
        # made-up methods cannot grow the metrics without bound.
        key = (endpoint, method if method in _METHODS else "OTHER", str(status))
        children = self._children.get(key)
        if children is None:
            children = (self.requests.labels(*key), self.latency.labels(*key))
            self._children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def count_error(self, code: str) -> None:
        """Count one error answer (or one failed batch item) by its code."""
        self.errors.labels(code).inc()

    def count_images(self, endpoint: str, count: int) -> None:
        """Count images the model classified for an endpoint."""
        if count:
            self.images.labels(endpoint).inc(count)

    def observe_answer(self, endpoint: str, digit: int, confidence: float) -> None:
        """Count one digit answered and its confidence."""
        children = self._answer_children.get((endpoint, digit))
        if children is None:
            children = (self.confidence.labels(endpoint), self.digits.labels(endpoint, str(digit)))
            self._answer_children[(endpoint, digit)] = children
        children[0].observe(confidence)
        children[1].inc()

    def observe_review(self, codes: Iterable[ReasonCode]) -> None:
        """Count one /recognize reading: flagged for review (by reason code) or not."""
        codes = set(codes)
        self._reviewed[bool(codes)].inc()
        for code in codes:
            self._reason_counters[code].inc()

    def set_probe_accuracy(self, version: int, accuracy: float) -> None:
        """Publish a model version's accuracy on the probe set checked when it was loaded."""
        self.probe_accuracy.labels(str(version)).set(accuracy)

    def observe_batch(self, images: int, requests: int, seconds: float) -> None:
        """Record one model call of the inference worker."""
        self.batch_size.observe(images)
        self.batch_seconds.observe(seconds)
        with self._lock:
            self._batches += 1
            self._batched_images += images
            self._batched_requests += requests
            self._largest_batch = max(self._largest_batch, images)

    def set_model(self, model: LoadedModel) -> None:
        """Publish the default served model (called after every swap)."""
        report = model.report
        self.model_version.set(model.version)
        self.model_info.info(
            {
                "version": str(model.version),
                "recipe": (report.recipe if report else None) or "",
                "created_at": (report.created_at if report else None) or "",
            }
        )
        accuracy = model.test_accuracy
        # Unknown, not the previous version's figure: NaN is Prometheus's "no value".
        self.model_accuracy.set(accuracy if accuracy is not None else math.nan)
        self.ready.set(1)

    def load_failed(self, version: int, reason: str) -> None:
        """Count one failed attempt to load a model version."""
        self.load_failures.inc()

    def version_held(self, version: int, reason: str) -> None:
        """Count one version held back by the promotion gate."""
        self.versions_held.inc()

    def serving_changed(self, status: StoreStatus) -> None:
        """Publish the served, held and failed versions and the labels."""
        states = {
            "served": [m.version for m in status.served],
            "held": [h.version for h in status.held],
            "failed": [f.version for f in status.failed],
        }
        with self._lock:
            for state, versions in states.items():
                self.versions.labels(state).set(len(versions))
            self.versions.labels("ignored").set(len(status.ignored))
            # Newest first and capped: the series stay few however many versions accumulate.
            self.version_state.clear()
            for state, versions in states.items():
                for version in versions[:_MAX_VERSION_SERIES]:
                    self.version_state.labels(str(version), state).set(1)
            self.label_version.clear()
            for label, version in status.labels.items():
                self.label_version.labels(label).set(version)
            # Only the versions served now: a retired version's probe figure would mislead.
            self.probe_accuracy.clear()
            for model in status.served[:_MAX_VERSION_SERIES]:
                if model.probe is not None:
                    self.probe_accuracy.labels(str(model.version)).set(model.probe.accuracy)

    # --- reading ---------------------------------------------------------------------------

    def prometheus(self, accept: str) -> tuple[bytes, str]:
        """The registry in the format the ``Accept`` header asks for, and its content type."""
        if "application/openmetrics-text" in accept:
            body: bytes = generate_openmetrics(self.registry)  # type: ignore[no-untyped-call]
            return body, OPENMETRICS_CONTENT_TYPE
        return generate_latest(self.registry), PROMETHEUS_CONTENT_TYPE

    def live_figures(self) -> dict[str, Any]:
        """Counters since start, for the JSON form of /metrics."""
        endpoints: dict[str, dict[str, Any]] = {}
        latency_sum: dict[str, float] = {}
        for metric in self.requests.collect():
            for sample in metric.samples:
                if not sample.name.endswith("_total"):
                    continue
                labels = sample.labels
                entry = endpoints.setdefault(
                    f"{labels['method']} {labels['endpoint']}",
                    {"requests": 0, "errors": 0, "by_status": {}, "mean_latency_ms": 0.0},
                )
                count = int(sample.value)
                entry["requests"] += count
                entry["by_status"][labels["status"]] = (
                    entry["by_status"].get(labels["status"], 0) + count
                )
                if labels["status"] >= "400":
                    entry["errors"] += count
        for metric in self.latency.collect():
            for sample in metric.samples:
                if sample.name.endswith("_sum"):
                    key = f"{sample.labels['method']} {sample.labels['endpoint']}"
                    latency_sum[key] = latency_sum.get(key, 0.0) + sample.value
        for key, entry in endpoints.items():
            if entry["requests"]:
                mean = latency_sum.get(key, 0.0) / entry["requests"]
                entry["mean_latency_ms"] = round(1000 * mean, 3)
        errors = {
            s.labels["code"]: int(s.value)
            for m in self.errors.collect()
            for s in m.samples
            if s.name.endswith("_total")
        }
        images = {
            s.labels["endpoint"]: int(s.value)
            for m in self.images.collect()
            for s in m.samples
            if s.name.endswith("_total")
        }
        with self._lock:
            batches, batched, requests = self._batches, self._batched_images, self._batched_requests
            largest = self._largest_batch
        return {
            "started_at": self.started_at,
            "uptime_seconds": round(time.monotonic() - self._started, 3),
            "requests_total": sum(e["requests"] for e in endpoints.values()),
            "requests_in_progress": int(
                self.registry.get_sample_value("digits_http_requests_in_progress") or 0
            ),
            "endpoints": dict(sorted(endpoints.items())),
            "errors_by_code": dict(sorted(errors.items())),
            "images_predicted": sum(images.values()),
            "images_by_endpoint": dict(sorted(images.items())),
            "inference": {
                "model_calls": batches,
                "images": batched,
                "requests": requests,
                "mean_images_per_call": round(batched / batches, 3) if batches else 0.0,
                "mean_requests_per_call": round(requests / batches, 3) if batches else 0.0,
                "largest_call": largest,
            },
        }


_INTERNAL = ApiError(
    500,
    "internal_error",
    "The server failed to process this request. It has been logged; try again, and report it "
    "if it persists.",
)
_INTERNAL_BODY: Final = json.dumps(_INTERNAL.body()).encode()


class RequestTelemetryMiddleware:
    """Times and counts every request, logs one access line, and hides crashes behind a 500.

    ``routes`` lists (path regex, path template) of the app's routes, to name requests that
    were answered before routing.
    """

    def __init__(
        self, app: ASGIApp, telemetry: Telemetry, routes: list[tuple[re.Pattern[str], str]]
    ) -> None:
        self.app = app
        self.telemetry = telemetry
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the application, observing its answer."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        response_started = False

        async def observed_send(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status = message["status"]
                response_started = True
            await send(message)

        telemetry = self.telemetry
        telemetry.in_flight += 1
        try:
            await self.app(scope, receive, observed_send)
        except Exception:
            error_logger.exception(
                "unhandled error in %s %s", scope.get("method"), scope.get("path")
            )
            telemetry.count_error(_INTERNAL.code)
            if not response_started:
                status = 500
                await send(
                    {
                        "type": "http.response.start",
                        "status": 500,
                        "headers": [
                            (b"content-type", b"application/json"),
                            (b"content-length", str(len(_INTERNAL_BODY)).encode()),
                        ],
                    }
                )
                await send({"type": "http.response.body", "body": _INTERNAL_BODY})
        finally:
            telemetry.in_flight -= 1
            seconds = time.perf_counter() - started
            endpoint = _route_template(scope, self.routes)
            method = scope.get("method", "")
            telemetry.observe_request(endpoint, method, status, seconds)
            if logger.isEnabledFor(logging.INFO):
                client = scope.get("client")
                logger.info(
                    '%s "%s %s" %d %.1fms',
                    f"{client[0]}:{client[1]}" if client else "-",
                    method,
                    scope.get("path", ""),
                    status,
                    seconds * 1000,
                    extra={
                        "method": method,
                        "path": scope.get("path", ""),
                        "endpoint": endpoint,
                        "status": status,
                        "duration_ms": round(seconds * 1000, 3),
                    },
                )


def _route_template(scope: Scope, known: list[tuple[re.Pattern[str], str]]) -> str:
    """The matched route's path template, so metrics never carry raw, unbounded paths."""
    path = getattr(scope.get("route"), "path", None)
    if isinstance(path, str):
        return path
    # Refused before routing (e.g. a body over the limit): find the route it was meant for.
    raw = scope.get("path", "")
    for pattern, template in known:
        if pattern.match(raw):
            return template
    return UNMATCHED
