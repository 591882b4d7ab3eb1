"""What the service measures about itself: Prometheus metrics and the live figures of /metrics.

Every app gets its own :class:`Telemetry` with its own ``CollectorRegistry`` (tests build many
apps in one process). :class:`RequestTelemetryMiddleware` times every request, counts it by
route template and status, writes the access log line, and turns any unhandled exception into
a logged traceback and a generic 500 in the service's error shape.

**Several worker processes.** A replica run by the launcher with several workers
(``WEB_CONCURRENCY``) answers each scrape from whichever worker accepts the connection, so each
worker's own counts would make the figures jump between scrapes. The launcher then sets
``PROMETHEUS_MULTIPROC_DIR`` to a fresh private directory before the workers start
(prometheus_client's multiprocess mode): every counter, histogram and the in-progress gauge is
kept in a file per worker there, and a scrape (Prometheus text and the JSON figures alike) adds
up every worker's files, those of workers that have ended included, so a count never goes down
while the replica runs. What describes the served model (version, info, readiness, versions by
state, probe accuracy) is computed at each scrape from the answering worker's store: every
worker serves the same models directory. ``process_*`` then covers the launcher and all its
processes. Without the variable (one worker, the tests' in-process apps) everything is this
process's, as in any prometheus_client registry.

**The review queue's figures** (the audit estimate per model version, the queue's counts) come
from its database, which every worker and replica shares: :class:`ReviewFigures` reads them at
scrape time (at most every 10 s) on the registry a scrape answers from, so they are reported
once, by the worker that answers, and never added up over workers.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import multiprocessing
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.openmetrics.exposition import (
    CONTENT_TYPE_LATEST as OPENMETRICS_CONTENT_TYPE,
)
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core.errors import ApiError
from app.reading.review import ReasonCode
from app.reviews.audit import AuditEstimate
from app.reviews.queue import QueueStats
from app.reviews.tables import Kind

if TYPE_CHECKING:
    from app.serving.loaded import LoadedModel
    from app.serving.store import StoreStatus

logger = logging.getLogger("app.access")
error_logger = logging.getLogger("app.errors")
figures_logger = logging.getLogger("app.telemetry.reviews")

#: prometheus_client's multiprocess directory: set by the launcher for several workers.
MULTIPROCESS_DIR_ENV: Final = "PROMETHEUS_MULTIPROC_DIR"
PROMETHEUS_CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
_LATENCY_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_BATCH_BUCKETS: Final = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)
# Fine near 1, where the review threshold (0.98 by default) and most answers lie.
_CONFIDENCE_BUCKETS: Final = (
    0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999, 0.9999, 1.0,
)  # fmt: skip
#: Why /recognize flagged an answer for review, as metric labels: the review reason codes.
REVIEW_REASONS: Final = tuple(code.value for code in ReasonCode)
#: Why a reading is in the review queue, and why one that should be is not: metric labels.
REVIEW_KINDS: Final = tuple(kind.value for kind in Kind)
NOT_QUEUED_REASONS: Final = ("unavailable", "full")
#: How long the review queue's figures (read from its database) serve scrapes.
REVIEW_FIGURES_SECONDS: Final = 10.0
UNMATCHED: Final = "unmatched"
_MAX_VERSION_SERIES: Final = 10
_METHODS: Final = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})


def multiprocess_dir() -> str | None:
    """The directory this replica's worker processes keep their metrics in, if they share one.

    The same test prometheus_client makes when it is imported to choose file-backed values.
    """
    return os.environ.get(MULTIPROCESS_DIR_ENV) or None


class Telemetry:
    """The service's metrics, in one per-app registry (added up over the replica's worker
    processes when they share a multiprocess directory, see the module's docstring)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.started_at = datetime.now(UTC)
        self._started = time.monotonic()
        self._lock = threading.Lock()
        self._shared_dir = multiprocess_dir()
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
            "digits_http_requests_in_progress",
            "Requests being answered now.",
            registry=r,
            multiprocess_mode="livesum",
        )
        self._in_flight = 0
        if self._shared_dir is None:
            # Read at scrape time: nothing to write per request.
            self.in_progress.set_function(lambda: self._in_flight)
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
        self.batched_requests = Counter(
            "digits_inference_requests",
            "Requests whose images went through a model call (one call serves several when "
            "they are batched).",
            registry=r,
        )
        self.largest_batch = Gauge(
            "digits_inference_largest_batch_images",
            "Images in the largest model call since the service started.",
            registry=r,
            multiprocess_mode="max",
        )
        self._largest_batch = 0
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
        self.review_queued = Counter(
            "digits_review_queued",
            "Readings stored in the review queue, by kind: flagged (the service flagged them "
            "for review) or audit (a sample of the answers it did not flag).",
            ["kind"],
            registry=r,
        )
        self.review_not_queued = Counter(
            "digits_review_not_queued",
            "Readings that should have been stored for review and were not (they were still "
            "answered), by reason: unavailable (the database is not open or failed) or full "
            "(DIGITS_REVIEW_MAX_ITEMS).",
            ["reason"],
            registry=r,
        )
        #: What is served, as this process sees it: published at each scrape.
        self.served = ServedState()
        r.register(self.served)
        # Bounded label sets exist from the start, at 0, so rates over them are defined.
        self._reviewed = {
            flag: self.recognize_answers.labels(str(flag).lower()) for flag in (True, False)
        }
        self._reason_counters = {code: self.review_reasons.labels(code) for code in REVIEW_REASONS}
        self._queued = {kind: self.review_queued.labels(kind) for kind in REVIEW_KINDS}
        self._not_queued = {
            reason: self.review_not_queued.labels(reason) for reason in NOT_QUEUED_REASONS
        }
        self._answer_children: dict[tuple[str, int], tuple[Any, Any]] = {}
        self._children: dict[tuple[str, str, str], tuple[Any, Any]] = {}
        #: The metrics the JSON figures are made of (this process's, without a shared dir).
        self._counted = (
            self.requests,
            self.latency,
            self.in_progress,
            self.errors,
            self.images,
            self.batch_size,
            self.batched_requests,
            self.largest_batch,
        )
        self._workers: MultiProcessCollector | None = None
        if self._shared_dir is None:
            ProcessCollector(registry=r)
            #: What a scrape answers.
            self.exposed = r
        else:
            self._workers = MultiProcessCollector(None, self._shared_dir)  # type: ignore[no-untyped-call]
            self.exposed = CollectorRegistry()
            self.exposed.register(self._workers)
            self.exposed.register(self.served)
            # The launcher, whose worker this process is (itself when it serves alone).
            launcher = multiprocessing.parent_process()
            root = launcher.pid if launcher is not None and launcher.pid else os.getpid()
            self.exposed.register(ReplicaProcessCollector(root))

    @property
    def in_flight(self) -> int:
        """Requests being answered now (HTTP and gRPC) by this process.

        Kept by the event loop, read by the inference worker on every hand-over; with a
        shared multiprocess directory each change is also written for the other workers.
        """
        return self._in_flight

    @in_flight.setter
    def in_flight(self, value: int) -> None:
        self._in_flight = value
        if self._shared_dir is not None:
            self.in_progress.set(value)

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

    def count_queued(self, kind: str) -> None:
        """Count one reading stored for review (``flagged`` or ``audit``)."""
        self._queued[kind].inc()

    def count_not_queued(self, reason: str, count: int = 1) -> None:
        """Count readings that should have been stored for review and were not."""
        self._not_queued[reason].inc(count)

    def watch_reviews(self, source: ReviewSource) -> ReviewFigures:
        """Export the review queue's figures, read through ``source`` at scrape time.

        Registered on the registry a scrape answers from, and only there: the figures come
        from the database every worker process shares, so they are reported once per scrape
        by the worker that answers it, never added up over workers.
        """
        figures = ReviewFigures(source)
        self.exposed.register(figures)
        return figures

    def set_probe_accuracy(self, version: int, accuracy: float) -> None:
        """Publish a model version's accuracy on the probe set checked when it was loaded."""
        self.served.set_probe_accuracy(version, accuracy)

    def observe_batch(self, images: int, requests: int, seconds: float) -> None:
        """Record one model call of the inference worker."""
        self.batch_size.observe(images)
        self.batch_seconds.observe(seconds)
        self.batched_requests.inc(requests)
        with self._lock:
            if images > self._largest_batch:
                self._largest_batch = images
                self.largest_batch.set(images)

    def set_model(self, model: LoadedModel) -> None:
        """Publish the default served model (called after every swap)."""
        self.served.set_model(model)

    def load_failed(self, version: int, reason: str) -> None:
        """Count one failed attempt to load a model version."""
        self.load_failures.inc()

    def version_held(self, version: int, reason: str) -> None:
        """Count one version held back by the promotion gate."""
        self.versions_held.inc()

    def serving_changed(self, status: StoreStatus) -> None:
        """Publish the served, held and failed versions and the labels."""
        self.served.serving_changed(status)

    # --- reading ---------------------------------------------------------------------------

    def prometheus(self, accept: str) -> tuple[bytes, str]:
        """The metrics in the format the ``Accept`` header asks for, and its content type."""
        if "application/openmetrics-text" in accept:
            body: bytes = generate_openmetrics(self.exposed)  # type: ignore[no-untyped-call]
            return body, OPENMETRICS_CONTENT_TYPE
        return generate_latest(self.exposed), PROMETHEUS_CONTENT_TYPE

    def _counted_families(self) -> dict[str, Metric]:
        """The metrics the JSON figures are made of, by name: every worker's added up."""
        if self._workers is not None:
            families: Iterable[Metric] = self._workers.collect()  # type: ignore[no-untyped-call]
        else:
            families = (family for metric in self._counted for family in metric.collect())
        return {family.name: family for family in families}

    def live_figures(self) -> dict[str, Any]:
        """Counts since start, for the JSON form of /metrics.

        With several worker processes every count is the replica's (all workers added up);
        ``started_at`` and ``uptime_seconds`` are those of the worker that answered.
        """
        families = self._counted_families()

        def samples(name: str, suffix: str = "_total") -> Iterator[tuple[dict[str, str], float]]:
            family = families.get(name)
            for sample in family.samples if family is not None else ():
                if sample.name == name + suffix:
                    yield sample.labels, sample.value

        endpoints: dict[str, dict[str, Any]] = {}
        for labels, value in samples("digits_http_requests"):
            entry = endpoints.setdefault(
                f"{labels['method']} {labels['endpoint']}",
                {"requests": 0, "errors": 0, "by_status": {}, "mean_latency_ms": 0.0},
            )
            count = int(value)
            entry["requests"] += count
            entry["by_status"][labels["status"]] = (
                entry["by_status"].get(labels["status"], 0) + count
            )
            if labels["status"] >= "400":
                entry["errors"] += count
        latency_sum: dict[str, float] = {}
        for labels, value in samples("digits_http_request_duration_seconds", "_sum"):
            key = f"{labels['method']} {labels['endpoint']}"
            latency_sum[key] = latency_sum.get(key, 0.0) + value
        for key, entry in endpoints.items():
            if entry["requests"]:
                mean = latency_sum.get(key, 0.0) / entry["requests"]
                entry["mean_latency_ms"] = round(1000 * mean, 3)
        errors = {labels["code"]: int(value) for labels, value in samples("digits_errors")}
        images = {
            labels["endpoint"]: int(value) for labels, value in samples("digits_images_predicted")
        }

        def total(name: str, suffix: str = "_total") -> float:
            return sum(value for _, value in samples(name, suffix))

        batches = int(total("digits_inference_batch_images", "_count"))
        batched = int(total("digits_inference_batch_images", "_sum"))
        requests = int(total("digits_inference_requests"))
        return {
            "started_at": self.started_at,
            "uptime_seconds": round(time.monotonic() - self._started, 3),
            "requests_total": sum(e["requests"] for e in endpoints.values()),
            "requests_in_progress": int(total("digits_http_requests_in_progress", "")),
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
                "largest_call": int(total("digits_inference_largest_batch_images", "")),
            },
        }


class ServedState:
    """What is served (the default version, its report, versions by state, labels, probe
    figures) as this process's store last published it, exported at each scrape.

    Not file-backed gauges: they describe the models directory, which every worker process
    serves alike, and a retired version's series must disappear, which prometheus_client's
    multiprocess mode cannot do.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._model: dict[str, str] = {}
        self._version = 0
        self._accuracy = 0.0
        self._ready = False
        self._counts: dict[str, int] = {}
        self._states: list[tuple[str, str]] = []
        self._labels: dict[str, int] = {}
        self._probes: dict[str, float] = {}

    def set_model(self, model: LoadedModel) -> None:
        """Publish the default served model."""
        report = model.report
        accuracy = model.test_accuracy
        with self._lock:
            self._version = model.version
            self._model = {
                "version": str(model.version),
                "recipe": (report.recipe if report else None) or "",
                "created_at": (report.created_at if report else None) or "",
            }
            # Unknown, not the previous version's figure: NaN is Prometheus's "no value".
            self._accuracy = accuracy if accuracy is not None else math.nan
            self._ready = True

    def set_probe_accuracy(self, version: int, accuracy: float) -> None:
        """Publish a model version's accuracy on its probe set."""
        with self._lock:
            self._probes[str(version)] = accuracy

    def serving_changed(self, status: StoreStatus) -> None:
        """Publish the served, held and failed versions and the labels."""
        states = {
            "served": [m.version for m in status.served],
            "held": [h.version for h in status.held],
            "failed": [f.version for f in status.failed],
        }
        with self._lock:
            self._counts = {state: len(versions) for state, versions in states.items()}
            self._counts["ignored"] = len(status.ignored)
            # Newest first and capped: the series stay few however many versions accumulate.
            self._states = [
                (str(version), state)
                for state, versions in states.items()
                for version in versions[:_MAX_VERSION_SERIES]
            ]
            self._labels = dict(status.labels)
            # Only the versions served now: a retired version's probe figure would mislead.
            self._probes = {
                str(model.version): model.probe.accuracy
                for model in status.served[:_MAX_VERSION_SERIES]
                if model.probe is not None
            }

    def collect(self) -> list[Metric]:
        """The served state's metric families."""
        with self._lock:
            model, version, accuracy, ready = (
                self._model,
                self._version,
                self._accuracy,
                self._ready,
            )
            counts, states = dict(self._counts), list(self._states)
            labels, probes = dict(self._labels), dict(self._probes)
        versions = GaugeMetricFamily(
            "digits_model_versions",
            "Model versions by state: served (loaded and routable), held, failed, ignored "
            "(a directory name that is not a version number).",
            labels=["state"],
        )
        for state, count in counts.items():
            versions.add_metric([state], count)
        version_state = GaugeMetricFamily(
            "digits_model_version_state",
            f"1 for each of the newest {_MAX_VERSION_SERIES} versions per state (served, held, "
            "failed).",
            labels=["version", "state"],
        )
        for number, state in states:
            version_state.add_metric([number, state], 1)
        label_version = GaugeMetricFamily(
            "digits_model_label_version",
            "The version each configured label names, while that version is served.",
            labels=["label"],
        )
        for label, labelled in labels.items():
            label_version.add_metric([label], labelled)
        probe_accuracy = GaugeMetricFamily(
            "digits_model_probe_accuracy",
            "Accuracy of a model version on the probe set it answered before being served.",
            labels=["version"],
        )
        for number, figure in probes.items():
            probe_accuracy.add_metric([number], figure)
        return [
            GaugeMetricFamily(
                "digits_model_test_accuracy",
                "Accuracy of the served model on the 10,000 MNIST test images (from metrics.json).",
                value=accuracy,
            ),
            GaugeMetricFamily(
                "digits_model_version", "Version number of the served model.", value=version
            ),
            InfoMetricFamily("digits_model", "The served model.", value=model),
            GaugeMetricFamily(
                "digits_ready", "1 when a model is loaded and warmed up, else 0.", value=int(ready)
            ),
            versions,
            version_state,
            label_version,
            probe_accuracy,
        ]


#: Reads the review queue's audit estimates and counts (blocking; raises when it cannot).
ReviewSource = Callable[[], tuple[list[AuditEstimate], QueueStats]]


class ReviewFigures:
    """The review queue's figures, read from its database at scrape time.

    The audit estimate per model version (reviewed, wrong, the error rate and its Wilson 95%
    interval) and the queue's counts. A read serves the scrapes of the next
    :data:`REVIEW_FIGURES_SECONDS` (a failed one too), so scrapes cost the database little; a
    database that is down never fails a scrape: ``digits_review_queue_available`` says 0 and
    the other families carry no sample.
    """

    def __init__(self, source: ReviewSource, max_age: float = REVIEW_FIGURES_SECONDS) -> None:
        self.source = source
        self.max_age = max_age
        self._lock = threading.Lock()
        self._read_at = -math.inf
        self._figures: tuple[list[AuditEstimate], QueueStats] | None = None

    def figures(self) -> tuple[list[AuditEstimate], QueueStats] | None:
        """The figures, read again when older than ``max_age``; None when unavailable."""
        with self._lock:
            if time.monotonic() - self._read_at >= self.max_age:
                try:
                    self._figures = self.source()
                except Exception as exc:  # a scrape must never fail for the queue
                    figures_logger.debug("review figures unavailable: %s", type(exc).__name__)
                    self._figures = None
                self._read_at = time.monotonic()
            return self._figures

    def collect(self) -> list[Metric]:
        """The review queue's metric families (empty ones while it is unavailable)."""
        figures = self.figures()
        available = GaugeMetricFamily(
            "digits_review_queue_available",
            "1 when the review queue's database answered the last read of these figures, else 0.",
            value=int(figures is not None),
        )
        reviewed = GaugeMetricFamily(
            "digits_audit_reviewed",
            "Audit samples (answers not flagged for review, sampled) keyed by reviewers, by "
            "model version.",
            labels=["version"],
        )
        wrong = GaugeMetricFamily(
            "digits_audit_wrong",
            "Of those, the answers the reviewers found wrong (unreadable and not-digits count "
            "as wrong), by model version.",
            labels=["version"],
        )
        rate = GaugeMetricFamily(
            "digits_audit_error_rate",
            "The error among answers not flagged for review, estimated from keyed audit "
            "samples, by model version: bound=estimate (wrong / reviewed), low and high (its "
            "Wilson 95% interval).",
            labels=["version", "bound"],
        )
        items = GaugeMetricFamily(
            "digits_review_queue_items",
            "Items in the review queue by status: waiting (to be claimed), claimed (held "
            "under a running lease), done (keyed), expired (deleted by retention unkeyed).",
            labels=["status"],
        )
        oldest = GaugeMetricFamily(
            "digits_review_queue_oldest_waiting_seconds",
            "Age of the oldest item waiting for a reviewer (0 when none waits).",
        )
        if figures is not None:
            estimates, stats = figures
            for estimate in estimates[-_MAX_VERSION_SERIES:]:
                version = str(estimate.model_version)
                reviewed.add_metric([version], estimate.reviewed)
                wrong.add_metric([version], estimate.wrong)
                if estimate.error_rate is not None:
                    low, high = estimate.interval
                    rate.add_metric([version, "estimate"], estimate.error_rate)
                    rate.add_metric([version, "low"], low)
                    rate.add_metric([version, "high"], high)
            for status, count in (
                ("waiting", stats.waiting),
                ("claimed", stats.claimed),
                ("done", stats.done),
                ("expired", stats.expired),
            ):
                items.add_metric([status], count)
            oldest.add_metric([], stats.oldest_waiting_seconds or 0.0)
        return [available, reviewed, wrong, rate, items, oldest]


class ReplicaProcessCollector:
    """``process_*`` of a replica run as several processes: ``root`` (the launcher) and every
    process under it.

    Memory and descriptors are added up; CPU time adds the launcher's ended children (the
    kernel adds a child's time to its parent when it is reaped), so it never goes down when a
    worker is replaced; the start time is the launcher's, the descriptor limit this process's.
    """

    def __init__(self, root: int, proc: str = "/proc") -> None:
        self._root = root
        self._proc = Path(proc)
        self._ticks = os.sysconf("SC_CLK_TCK")
        self._page = os.sysconf("SC_PAGE_SIZE")

    def _tree(self, pid: int) -> list[int]:
        found = [pid]
        try:
            tasks = list((self._proc / str(pid) / "task").iterdir())
        except OSError:
            return found
        for task in tasks:
            try:
                children = (task / "children").read_text().split()
            except OSError:
                continue
            for child in children:
                found.extend(self._tree(int(child)))
        return found

    def _stat(self, pid: int) -> list[bytes] | None:
        try:
            text = (self._proc / str(pid) / "stat").read_bytes()
        except OSError:
            return None
        # The command name may hold spaces; the fields after its closing parenthesis do not.
        return text[text.rindex(b")") + 2 :].split()

    def collect(self) -> Iterator[Metric]:
        """The replica's process metrics (none where /proc cannot be read)."""
        root = self._stat(self._root)
        if root is None:
            return
        virtual = resident = descriptors = 0
        # Fields 14-17 of /proc/<pid>/stat: utime, stime, and for the root cutime, cstime.
        ticks = int(root[13]) + int(root[14])
        for pid in self._tree(self._root):
            fields = self._stat(pid)
            if fields is None:
                continue  # ended in between
            virtual += int(fields[20])
            resident += int(fields[21]) * self._page
            ticks += int(fields[11]) + int(fields[12])
            with contextlib.suppress(OSError):  # ended in between
                descriptors += len(os.listdir(self._proc / str(pid) / "fd"))
        boot = next(
            float(line.split()[1])
            for line in (self._proc / "stat").read_text().splitlines()
            if line.startswith("btime ")
        )
        yield GaugeMetricFamily(
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes (every process of the replica).",
            value=virtual,
        )
        yield GaugeMetricFamily(
            "process_resident_memory_bytes",
            "Resident memory size in bytes (every process of the replica).",
            value=resident,
        )
        yield GaugeMetricFamily(
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds (the launcher's).",
            value=boot + int(root[19]) / self._ticks,
        )
        yield CounterMetricFamily(
            "process_cpu_seconds_total",
            "Total user and system CPU time spent in seconds (every process of the replica, "
            "ended ones included).",
            value=ticks / self._ticks,
        )
        yield GaugeMetricFamily(
            "process_open_fds",
            "Number of open file descriptors (every process of the replica).",
            value=descriptors,
        )
        for line in (self._proc / "self" / "limits").read_text().splitlines():
            if line.startswith("Max open files"):
                yield GaugeMetricFamily(
                    "process_max_fds",
                    "Maximum number of open file descriptors (of one process).",
                    value=float(line.split()[3]),
                )


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
