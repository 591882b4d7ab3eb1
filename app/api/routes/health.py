"""``GET /health/live`` and ``GET /health/ready``: for orchestrators and load balancers."""

from __future__ import annotations

from fastapi import APIRouter

from app.api.deps import SettingsDep, StoreDep, not_ready
from app.api.schemas import LiveResponse, ReadyResponse, error_responses

router = APIRouter(prefix="/health", tags=["health"])


@router.get(
    "/live",
    summary="Liveness: the process answers",
    description="200 as long as the process is up, whether or not a model is loaded.",
    response_model=LiveResponse,
)
async def live() -> LiveResponse:
    """Answer that the process is alive."""
    return LiveResponse()


@router.get(
    "/ready",
    summary="Readiness: a model is loaded and warmed up",
    description=(
        "200 with the served model version once a model is loaded and warmed up; 503 until "
        "then (for example while the models directory is empty). The 503 carries Retry-After "
        "only when polling for new versions is on; with polling off its message says a model "
        "and a restart are needed. Route traffic only to ready instances."
    ),
    response_model=ReadyResponse,
    responses=error_responses(503),
)
async def ready(store: StoreDep, settings: SettingsDep) -> ReadyResponse:
    """Answer whether predictions can be served now."""
    model = store.current
    if model is None:
        raise not_ready(store, settings)
    return ReadyResponse(model_version=model.version)
