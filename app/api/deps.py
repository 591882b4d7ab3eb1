"""Dependencies the routes declare: settings, the served model, the inference worker, the
review queue, the API keys.

Everything heavy is created once by ``create_app`` and its lifespan and kept on ``app.state``;
these functions only hand it to the routes (``Annotated[..., Depends(...)]`` aliases below).
They are ``async`` on purpose: FastAPI runs a plain ``def`` dependency in the thread pool, a
thread hop per dependency per request for what is an attribute lookup.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Final

from fastapi import Depends, Query, Request, Security
from pydantic import SecretStr

from app.api.review_intake import ReviewIntake
from app.core.errors import ApiError, DomainError, api_error
from app.core.security import (
    API_KEY_HEADER,
    api_key_dependency,
    api_key_scheme,
    check_api_key_values,
    key_matches,
    passes_api_key,
)
from app.reviews.queue import ReviewQueue
from app.serving.loaded import LoadedModel
from app.serving.policy import LABEL_PATTERN, MAX_VERSION
from app.serving.store import ModelNotReadyError, ModelStore
from app.serving.worker import InferenceWorker
from app.settings import Settings
from app.telemetry import Telemetry


async def get_app_settings(request: Request) -> Settings:
    """The settings this app was created with."""
    settings: Settings = request.app.state.settings
    return settings


async def get_store(request: Request) -> ModelStore:
    """The model store (served version, versions on disk)."""
    store: ModelStore = request.app.state.store
    return store


async def get_telemetry(request: Request) -> Telemetry:
    """The app's metrics."""
    telemetry: Telemetry = request.app.state.telemetry
    return telemetry


@dataclass(frozen=True, slots=True)
class Serving:
    """What a prediction route needs, gathered by ONE dependency (:func:`get_serving`)."""

    model: LoadedModel
    """The model version this request uses from start to end."""
    worker: InferenceWorker
    settings: Settings
    telemetry: Telemetry
    reviews: ReviewIntake
    """Where readings go for review."""


async def get_serving(
    request: Request,
    version: Annotated[
        int | None,
        Query(
            ge=0,
            le=MAX_VERSION,
            description="Answer with this model version (one of the served versions listed by "
            "GET /model). Default: the version the policy serves by default.",
        ),
    ] = None,
    label: Annotated[
        str | None,
        Query(
            max_length=32,
            pattern=f"^{LABEL_PATTERN.pattern}$",
            description="Answer with the version this label names (e.g. `stable`, `canary`; "
            "set by DIGITS_VERSION_LABELS).",
        ),
    ] = None,
) -> Serving:
    """The model, worker, settings and metrics at once; 503 while no model is loaded.

    One dependency instead of four (five with the store) on the prediction routes: each
    dependency FastAPI resolves costs event-loop time on every request, and these are only
    attribute lookups. ``?version=`` or ``?label=`` choose a served version (404
    ``version_not_found`` for one that is not served).
    """
    if version is None and label is None:
        return current_serving(request)
    state = request.app.state
    store: ModelStore = state.store
    try:
        model = store.get(version, label)
    except ModelNotReadyError:
        raise not_ready(store, state.settings) from None
    except DomainError as exc:
        raise api_error(exc) from None
    return Serving(model, state.worker, state.settings, state.telemetry, state.reviews)


def not_ready(store: ModelStore, settings: Settings) -> ApiError:
    """The 503 answered while no model version is loaded.

    With polling on, a version that appears is loaded without a restart, so the client is told
    to retry (``Retry-After``). With polling off nothing will change until the service is
    restarted, so the answer says what an operator must do instead of inviting retries.
    """
    where = f"No model is loaded: no servable version in {store.models_dir}."
    failures = " GET /model lists the versions found and why any failed to load."
    poll = settings.model_poll_seconds
    if poll > 0:
        return ApiError(
            503,
            "model_not_ready",
            f"{where} The directory is checked every {poll:g} s and a new version is served "
            f"as soon as it loads: try again shortly.{failures}",
            headers={"Retry-After": str(max(1, math.ceil(poll)))},
        )
    return ApiError(
        503,
        "model_not_ready",
        f"{where} Polling is off (DIGITS_MODEL_POLL_SECONDS=0), so none will load by itself: "
        "put a version there (python -m training) and restart the service, or start it with "
        f"DIGITS_MODEL_POLL_SECONDS set to pick new versions up without a restart.{failures}",
    )


def configured_api_key(request: Request) -> SecretStr | None:
    """The API key this app was started with (None: no key is required)."""
    key: SecretStr | None = request.app.state.settings.api_key
    return key


#: The API-key check (:func:`app.core.security.check_api_key`) on the X-API-Key header.
require_api_key = api_key_dependency(configured_api_key)


def passes_default_checks(request: Request) -> bool:
    """Whether ``request`` passes :func:`require_api_key` and :func:`get_serving` as it is.

    True only for a request with no query string (``version`` and ``label`` at their defaults),
    the configured API key in its header (or none configured) and a model loaded: the case in
    which those dependencies would let it through and answer with the current version. Anything
    else is for them to judge, with their own errors (see ``app.api.routes.predict``).
    """
    if request.scope.get("query_string"):
        return False
    state = request.app.state
    if state.store.current is None:
        return False
    expected: SecretStr | None = state.settings.api_key
    # The rule every door applies: exactly one non-empty value, the right one.
    return passes_api_key(request.headers.getlist(API_KEY_HEADER), expected)


def current_serving(request: Request) -> Serving:
    """What :func:`get_serving` gives without ``version`` or ``label``; 503 with no model."""
    state = request.app.state
    model = state.store.current
    if model is None:
        raise not_ready(state.store, state.settings)
    return Serving(model, state.worker, state.settings, state.telemetry, state.reviews)


async def get_reviews(request: Request) -> ReviewIntake:
    """The app's side of the review queue (what readings are stored, and the queue's life)."""
    intake: ReviewIntake = request.app.state.reviews
    return intake


async def get_review_queue(request: Request) -> ReviewQueue:
    """The review queue; 503 while its database is not open, or when it is off."""
    intake: ReviewIntake = request.app.state.reviews
    return intake.require()


_WHERE: Final = f"{API_KEY_HEADER} header"


async def require_reviewer_key(
    request: Request, api_key: Annotated[str | None, Security(api_key_scheme)] = None
) -> None:
    """The reviewers' key (``DIGITS_REVIEWER_API_KEY``) on the reviewers' endpoints.

    With no key configured at all, they are open like the rest (a service on loopback). With
    a client key but no reviewer key they are closed: the client key must never open them.

    Raises:
        ApiError: 401 ``missing_api_key`` / ``invalid_api_key``; 403 ``reviews_closed`` (no
            reviewer key configured, a client key is), 403 ``reviewer_key_required`` (the
            client key was sent).
    """
    settings: Settings = request.app.state.settings
    reviewer, client = settings.reviewer_api_key, settings.api_key
    if reviewer is None:
        if client is None:
            return
        raise ApiError(
            403,
            "reviews_closed",
            "The review endpoints are closed on this service: it has a client API key "
            "(DIGITS_API_KEY) but no reviewers' key. Set DIGITS_REVIEWER_API_KEY and send it "
            f"in the {_WHERE}.",
        )
    values = request.headers.getlist(API_KEY_HEADER)
    if (
        client is not None
        and len(values) == 1
        and key_matches(values[0], client)
        and not key_matches(values[0], reviewer)
    ):
        raise ApiError(
            403,
            "reviewer_key_required",
            "This is a review endpoint: it takes the reviewers' key (DIGITS_REVIEWER_API_KEY), "
            "not the client API key.",
        )
    check_api_key_values(values, reviewer, _WHERE)


async def require_result_key(
    request: Request, api_key: Annotated[str | None, Security(api_key_scheme)] = None
) -> None:
    """The client key (or the reviewers' key) on a reading's review result.

    Raises:
        ApiError: 401 ``missing_api_key`` / ``invalid_api_key``.
    """
    settings: Settings = request.app.state.settings
    reviewer, client = settings.reviewer_api_key, settings.api_key
    values = request.headers.getlist(API_KEY_HEADER)
    if reviewer is not None and len(values) == 1 and key_matches(values[0], reviewer):
        return
    check_api_key_values(values, client, _WHERE)


SettingsDep = Annotated[Settings, Depends(get_app_settings)]
StoreDep = Annotated[ModelStore, Depends(get_store)]
TelemetryDep = Annotated[Telemetry, Depends(get_telemetry)]
ServingDep = Annotated[Serving, Depends(get_serving)]
ApiKeyDep = Depends(require_api_key)
ReviewsDep = Annotated[ReviewIntake, Depends(get_reviews)]
ReviewQueueDep = Annotated[ReviewQueue, Depends(get_review_queue)]
ReviewerKeyDep = Depends(require_reviewer_key)
ResultKeyDep = Depends(require_result_key)
