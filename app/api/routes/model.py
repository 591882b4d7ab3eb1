"""``GET /model``: which model version is served, its signature, and what is on disk."""

from __future__ import annotations

from fastapi import APIRouter

from app.api.deps import SettingsDep, StoreDep
from app.calibration import calibration_for
from app.model_store import SIGNATURE, versions_on_disk
from app.schemas import (
    FailedVersionInfo,
    ModelResponse,
    ReaderCalibrationInfo,
    Signature,
    TensorSpec,
)

router = APIRouter(prefix="/model", tags=["model"])


@router.get(
    "",
    summary="The served model version",
    description=(
        "The model version being served (null fields while none is loaded), its SavedModel "
        "signature with input and output tensors, recipe, creation time and test accuracy; "
        "the versions present in the models directory, and any that failed to load with the "
        "reason. A new version directory is picked up without restart when polling is on "
        "(`DIGITS_MODEL_POLL_SECONDS`)."
    ),
    response_model=ModelResponse,
)
async def model_info(store: StoreDep, settings: SettingsDep) -> ModelResponse:
    """Describe the served model and the versions on disk."""
    model = store.current
    metrics = (model.metrics or {}) if model is not None else {}
    signature = None
    if model is not None:
        signature = Signature(
            name=SIGNATURE,
            inputs=[TensorSpec(name=t.name, dtype=t.dtype, shape=t.shape) for t in model.inputs],
            outputs=[TensorSpec(name=t.name, dtype=t.dtype, shape=t.shape) for t in model.outputs],
        )
    recipe = metrics.get("recipe")
    created_at = metrics.get("created_at")
    return ModelResponse(
        ready=model is not None,
        version=model.version if model is not None else None,
        signature=signature,
        recipe=str(recipe) if recipe is not None else None,
        created_at=str(created_at) if created_at is not None else None,
        test_accuracy=model.test_accuracy if model is not None else None,
        loaded_at=model.loaded_at if model is not None else None,
        load_seconds=round(model.load_seconds, 3) if model is not None else None,
        versions_on_disk=versions_on_disk(store.models_dir),
        failed_versions=[
            FailedVersionInfo(version=f.version, reason=f.reason, failed_at=f.failed_at)
            for f in store.failed
        ],
        poll_interval_seconds=settings.model_poll_seconds,
        last_checked=store.last_checked,
        reader_calibration=(
            ReaderCalibrationInfo.model_validate(calibration_for(model).describe())
            if model is not None
            else None
        ),
    )
