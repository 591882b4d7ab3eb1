"""``GET /model``: the served model versions, the policy, and what is on disk."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from app.api.deps import ApiKeyDep, ReviewsDep, SettingsDep, StoreDep
from app.api.review_intake import ReviewIntake
from app.api.schemas import (
    AuditInfo,
    FailedVersionInfo,
    HeldVersionInfo,
    IgnoredEntryInfo,
    ModelResponse,
    ReaderCalibrationInfo,
    RealDigitsInfo,
    ReviewQueueInfo,
    ServedVersionInfo,
    Signature,
    TensorSpec,
    VersionPolicyInfo,
    error_responses,
)
from app.reading.calibration import calibration_for
from app.reviews.queue import QueueUnavailableError
from app.serving.report import RealDigitsFigures
from app.serving.runtime import SIGNATURE

# Behind the API key like the prediction routes: it lists the models directory's contents and
# why versions failed, which is for operators and the service's clients, not for anyone.
router = APIRouter(prefix="/model", tags=["model"], dependencies=[ApiKeyDep])


@router.get(
    "",
    summary="The served model versions",
    description=(
        "The version answering requests by default (null fields while none is loaded): its "
        "SavedModel signature, recipe, creation time, test accuracy and probe result. Then "
        "every served version (with its labels; `?version=` or `?label=` on the prediction "
        "endpoints reaches it), the versions the promotion gate holds and why (a held version "
        "is not served; pin it to serve it anyway), the versions that failed to load or failed "
        "the probe check and why, directory names that are not versions, and the version "
        "policy, with `policy.error` saying why a `models.config` (`DIGITS_VERSION_CONFIG`) is "
        "not used. New version directories and edits of `models.config` are picked up without "
        "restart: polling is on by default (`DIGITS_MODEL_POLL_SECONDS`, 0 turns it off).\n\n"
        "Each served and held version carries `real_digits` when it was trained with labelled "
        "real digits (`--extra-data`): its accuracy on their held-out part beside the then "
        "served version's on the same digits, what the promotion gate compares.\n\n"
        "`audit` gives, per model version, the error among the answers the service did not "
        "flag, as reviewers found it on the sampled audit items, with its Wilson 95% "
        "interval; `review_queue` the queue's counts (or why it is unavailable)."
    ),
    response_model=ModelResponse,
    responses=error_responses(401),
)
async def model_info(store: StoreDep, settings: SettingsDep, reviews: ReviewsDep) -> ModelResponse:
    """Describe the served versions and the versions on disk."""
    audit, review_queue = await _reviews(reviews)
    status = store.status()
    model = status.default
    report = model.report if model is not None else None
    signature = None
    if model is not None:
        signature = Signature(
            name=SIGNATURE,
            inputs=[TensorSpec(name=t.name, dtype=t.dtype, shape=t.shape) for t in model.inputs],
            outputs=[TensorSpec(name=t.name, dtype=t.dtype, shape=t.shape) for t in model.outputs],
        )
    policy = status.policy
    labels_of: dict[int, list[str]] = {}
    for label, version in status.labels.items():
        labels_of.setdefault(version, []).append(label)
    return ModelResponse(
        ready=model is not None,
        version=model.version if model is not None else None,
        signature=signature,
        recipe=report.recipe if report is not None else None,
        created_at=report.created_at if report is not None else None,
        test_accuracy=model.test_accuracy if model is not None else None,
        loaded_at=model.loaded_at if model is not None else None,
        load_seconds=round(model.load_seconds, 3) if model is not None else None,
        probe_accuracy=model.probe.accuracy if model is not None and model.probe else None,
        versions_on_disk=status.on_disk,
        served_versions=[
            ServedVersionInfo(
                version=m.version,
                labels=sorted(labels_of.get(m.version, [])),
                default=m is model,
                test_accuracy=m.test_accuracy,
                probe_accuracy=m.probe.accuracy if m.probe is not None else None,
                real_digits=_real_digits(m.report.real_digits if m.report is not None else None),
                loaded_at=m.loaded_at,
            )
            for m in status.served
        ],
        held_versions=[
            HeldVersionInfo(
                version=h.version,
                reason=h.reason,
                held_at=h.held_at,
                test_accuracy=h.test_accuracy,
                real_digits=_real_digits(h.real_digits),
            )
            for h in status.held
        ],
        failed_versions=[
            FailedVersionInfo(
                version=f.version, reason=f.reason, failed_at=f.failed_at, attempts=f.attempts
            )
            for f in status.failed
        ],
        ignored_entries=[IgnoredEntryInfo(name=e.name, reason=e.reason) for e in status.ignored],
        policy=VersionPolicyInfo(
            kind=policy.kind,
            source=store.policy_source,
            error=store.policy_error,
            latest_versions=policy.latest_versions,
            versions=list(policy.versions),
            labels=dict(policy.labels),
            default_label=policy.default_label,
            promotion_tolerance=policy.gate.tolerance,
            promotion_min_accuracy=policy.gate.min_accuracy,
            probe_min_accuracy=store.probe_min_accuracy,
        ),
        poll_interval_seconds=settings.model_poll_seconds,
        last_checked=status.last_checked,
        reader_calibration=(
            ReaderCalibrationInfo.model_validate(calibration_for(model).describe())
            if model is not None
            else None
        ),
        audit=audit,
        review_queue=review_queue,
    )


def _real_digits(figures: RealDigitsFigures | None) -> RealDigitsInfo | None:
    return RealDigitsInfo.model_validate(figures.as_dict()) if figures is not None else None


async def _reviews(reviews: ReviewIntake) -> tuple[list[AuditInfo], ReviewQueueInfo]:
    """The audit estimates and the queue's counts, read from its database in a thread."""
    if not reviews.enabled:
        return [], ReviewQueueInfo(
            enabled=False, available=False, reason="off (DIGITS_REVIEW_QUEUE=false)"
        )
    try:
        estimates, stats = await run_in_threadpool(reviews.figures)
    except QueueUnavailableError:
        reason = f"its database is not available ({reviews.problem_type or 'it failed'})"
        return [], ReviewQueueInfo(enabled=True, available=False, reason=reason)
    return (
        [AuditInfo.model_validate(estimate.as_dict()) for estimate in estimates],
        ReviewQueueInfo.model_validate({"enabled": True, "available": True, **stats.as_dict()}),
    )
