"""``GET /metrics``: the model's test evaluation and live figures, as JSON or for Prometheus.

One URL for people and scrapers: a Prometheus scraper sends ``Accept: text/plain`` or
``application/openmetrics-text`` and gets that format; anything else gets JSON. Under several
worker processes both forms count the whole replica, whichever worker answers
(:mod:`app.telemetry`).
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, Request, Response
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from app.api.deps import StoreDep, TelemetryDep
from app.api.schemas import EvaluationFigures, MetricsResponse, ModelEvaluation, ServiceFigures
from app.serving.loaded import LoadedModel

router = APIRouter(prefix="/metrics", tags=["metrics"])
logger = logging.getLogger(__name__)

_PROMETHEUS_EXAMPLE = (
    "# HELP digits_http_requests_total HTTP requests answered, by route template, method and "
    "status.\n# TYPE digits_http_requests_total counter\n"
    'digits_http_requests_total{endpoint="/predict",method="POST",status="200"} 42.0\n'
)


def wants_prometheus(accept: str) -> bool:
    """Whether an Accept header asks for a Prometheus text format rather than JSON."""
    accept = accept.lower()
    if "application/openmetrics-text" in accept:
        return True
    return "text/plain" in accept and "application/json" not in accept


def _evaluation(model: LoadedModel) -> ModelEvaluation:
    report = model.report
    test: EvaluationFigures | None = None
    raw_test = report.test if report is not None else None
    if raw_test is not None:
        try:
            test = EvaluationFigures.model_validate(dict(raw_test))
        except ValidationError as exc:
            # A report in an unexpected shape must not break /metrics; say what is missing.
            logger.warning("model %d: metrics.json 'test' not understood: %s", model.version, exc)
            test = EvaluationFigures(accuracy=model.test_accuracy)
    return ModelEvaluation(
        version=model.version,
        recipe=report.recipe if report is not None else None,
        created_at=report.created_at if report is not None else None,
        test=test,
    )


@router.get(
    "",
    summary="Model evaluation and live service figures",
    description=(
        "JSON by default: the served model's evaluation on the 10,000 MNIST test images "
        "(accuracy, loss, per-class precision/recall/F1, confusion matrix, from the model's "
        "metrics.json) and live figures since the service started (requests, latencies, "
        "errors by code, images predicted, model calls), added up over all its worker "
        "processes; `started_at` and `uptime_seconds` are those of the worker process that "
        "answered, and the model is the one it serves. With `Accept: text/plain` or "
        "`Accept: application/openmetrics-text` (what a Prometheus scraper sends) the same "
        "endpoint answers in that text format: request counts and latency histograms by "
        "endpoint and status, error counts, images predicted, model test accuracy (gauge) and "
        "model version (info), and the review queue's figures: readings queued and not "
        "queued, items by status, and the audit estimate of the error among accepted answers "
        "per model version."
    ),
    response_model=MetricsResponse,
    responses={
        200: {
            "content": {
                "text/plain": {"schema": {"type": "string"}, "example": _PROMETHEUS_EXAMPLE},
                "application/openmetrics-text": {"schema": {"type": "string"}},
            }
        }
    },
)
async def metrics(request: Request, store: StoreDep, telemetry: TelemetryDep) -> Any:
    """Answer with the metrics in the format the client asked for."""
    accept = request.headers.get("accept", "")
    if wants_prometheus(accept):
        # In a thread: the review queue's figures are read from its database (at most every
        # 10 s), which must not hold the event loop.
        body, content_type = await run_in_threadpool(telemetry.prometheus, accept)
        return Response(content=body, media_type=content_type)
    model = store.current
    return MetricsResponse(
        model=_evaluation(model) if model is not None else None,
        service=ServiceFigures(ready=model is not None, **telemetry.live_figures()),
    )
