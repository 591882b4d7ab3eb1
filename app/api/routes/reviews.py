"""``/reviews``: the review queue over HTTP, for reviewers and for the clients whose readings
went there.

Reviewers claim the oldest waiting item under a lease, look at its image, and key what it
shows (or skip it); every endpoint but a reading's result takes the reviewers' key
(``DIGITS_REVIEWER_API_KEY``). The queue's calls block on its database, so each runs in a
worker thread; a database that is down answers 503 ``review_queue_unavailable`` with
``Retry-After``.
"""

from __future__ import annotations

from typing import Annotated, Final

from fastapi import APIRouter, Path, Query, Response
from starlette.concurrency import run_in_threadpool

from app.api.deps import ResultKeyDep, ReviewerKeyDep, ReviewQueueDep, ReviewsDep
from app.api.schemas import (
    ClaimedItemInfo,
    ClaimRequest,
    ReleaseRequest,
    ReviewItemInfo,
    ReviewKind,
    ReviewListResponse,
    ReviewResultResponse,
    ReviewStatsResponse,
    ReviewStatus,
    SubmitRequest,
    error_responses,
)
from app.reviews.queue import ReviewView, Submission
from app.reviews.tables import Kind, Status, Verdict

router = APIRouter(prefix="/reviews", tags=["reviews"])

ReviewId = Annotated[
    str,
    Path(
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9_-]+$",
        description="The item's id (a reading's `review_id`).",
    ),
]
#: What every reviewer's answer may also be.
_REVIEWER_ERRORS: Final = (401, 403, 422, 503)
IMAGE_HEADERS: Final = {
    # A reading's image is personal data: never kept by a browser or a proxy.
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
}


def _item(view: ReviewView) -> ReviewItemInfo:
    return ReviewItemInfo.model_validate(view.as_dict())


@router.post(
    "/claim",
    summary="Claim the next item to key",
    description=(
        "Hands the oldest waiting item to `reviewer` under a lease of "
        "`DIGITS_REVIEW_LEASE_SECONDS` (300 s by default): nobody else gets it until the lease "
        "runs out, then it waits again. The answer is the item with its `lease`, to send back "
        "with the result. 204 (no body) when nothing waits. Two reviewers, or two replicas "
        "sharing a PostgreSQL, never get the same item."
    ),
    response_model=ClaimedItemInfo,
    responses={
        204: {"description": "Nothing waits for a reviewer."},
        **error_responses(*_REVIEWER_ERRORS),
    },
    dependencies=[ReviewerKeyDep],
)
async def claim(body: ClaimRequest, queue: ReviewQueueDep, reviews: ReviewsDep) -> object:
    """Claim the oldest waiting item."""
    kind = Kind(body.kind) if body.kind is not None else None
    claimed = await run_in_threadpool(queue.claim, body.reviewer, reviews.lease_seconds, kind=kind)
    if claimed is None:
        return Response(status_code=204)
    return ClaimedItemInfo.model_validate({**claimed.item.as_dict(), "lease": claimed.lease})


@router.get(
    "/stats",
    summary="How many items wait",
    description="Items by where they are (waiting, claimed, done, expired), also per kind, and "
    "how long the oldest waiting one has waited.",
    response_model=ReviewStatsResponse,
    responses=error_responses(401, 403, 503),
    dependencies=[ReviewerKeyDep],
)
async def stats(queue: ReviewQueueDep) -> ReviewStatsResponse:
    """Count the items."""
    figures = await run_in_threadpool(queue.stats)
    return ReviewStatsResponse.model_validate(figures.as_dict())


@router.get(
    "",
    summary="List items",
    description="Items oldest first, `limit` at a time; `next` is the `after` of the next page.",
    response_model=ReviewListResponse,
    responses=error_responses(401, 403, 404, 422, 503),
    dependencies=[ReviewerKeyDep],
)
async def list_items(
    queue: ReviewQueueDep,
    status: Annotated[ReviewStatus | None, Query(description="Only items in this status.")] = None,
    kind: Annotated[ReviewKind | None, Query(description="Only items of this kind.")] = None,
    limit: Annotated[int, Query(ge=1, le=500, description="Items per page.")] = 50,
    after: Annotated[
        str | None,
        Query(max_length=64, description="The `next` of the previous page (404 if unknown)."),
    ] = None,
) -> ReviewListResponse:
    """One page of items."""
    views, cursor = await run_in_threadpool(
        lambda: queue.items(
            status=Status(status) if status is not None else None,
            kind=Kind(kind) if kind is not None else None,
            limit=limit,
            after=after,
        )
    )
    return ReviewListResponse(items=[_item(view) for view in views], next=cursor)


@router.get(
    "/{review_id}",
    summary="One item",
    response_model=ReviewItemInfo,
    responses=error_responses(401, 403, 404, 422, 503),
    dependencies=[ReviewerKeyDep],
)
async def get_item(review_id: ReviewId, queue: ReviewQueueDep) -> ReviewItemInfo:
    """The item, without its image."""
    return _item(await run_in_threadpool(queue.get, review_id))


@router.get(
    "/{review_id}/image",
    summary="An item's image",
    description=(
        "The image exactly as it was uploaded, with its content type, never cached. 410 "
        "`review_image_deleted` once retention (`DIGITS_REVIEW_RETENTION_DAYS`) deleted it."
    ),
    response_class=Response,
    responses={
        200: {
            "description": "The uploaded image.",
            "content": {
                media: {"schema": {"type": "string", "format": "binary"}}
                for media in ("image/png", "image/jpeg", "image/gif", "image/bmp", "image/webp")
            },
        },
        **error_responses(401, 403, 404, 410, 422, 503),
    },
    dependencies=[ReviewerKeyDep],
)
async def image(review_id: ReviewId, queue: ReviewQueueDep) -> Response:
    """The stored image's bytes."""
    data, content_type = await run_in_threadpool(queue.image, review_id)
    return Response(data, media_type=content_type, headers=IMAGE_HEADERS)


@router.post(
    "/{review_id}",
    summary="Key an item",
    description=(
        "Send the lease of your claim and exactly one of: `digits` (the whole string the image "
        "shows), `corrections` (digits of the reading to change, by position from 0) or "
        "`verdict` `unreadable` / `not_digits`. The answer is the item, done. Sending the same "
        "result again answers the same; a different one for a keyed item is refused (409 "
        "`already_reviewed`), as is one for an item another reviewer holds "
        "(`review_held_by_another`), one whose lease ran out (`lease_expired`) or one never "
        "claimed (`not_claimed`)."
    ),
    response_model=ReviewItemInfo,
    responses=error_responses(401, 403, 404, 409, 410, 422, 503),
    dependencies=[ReviewerKeyDep],
)
async def submit(review_id: ReviewId, body: SubmitRequest, queue: ReviewQueueDep) -> ReviewItemInfo:
    """Record a reviewer's result."""
    submission = Submission(
        reviewer=body.reviewer,
        lease=body.lease,
        digits=body.digits,
        corrections=[(c.position, c.digit) for c in body.corrections],
        verdict=Verdict(body.verdict) if body.verdict is not None else None,
    )
    return _item(await run_in_threadpool(queue.submit, review_id, submission))


@router.post(
    "/{review_id}/release",
    summary="Give a claimed item back (skip it)",
    description="The item waits again at once, for the next claim. 409 `lease_expired` when "
    "the lease no longer holds it.",
    status_code=204,
    response_class=Response,
    responses=error_responses(401, 403, 404, 409, 422, 503),
    dependencies=[ReviewerKeyDep],
)
async def release(review_id: ReviewId, body: ReleaseRequest, queue: ReviewQueueDep) -> Response:
    """Release a claim."""
    await run_in_threadpool(queue.release, review_id, body.lease)
    return Response(status_code=204)


@router.delete(
    "/{review_id}",
    summary="Delete an item and its image",
    description="For good (e.g. on a data-protection request); its result leaves the audit "
    "figures too.",
    status_code=204,
    response_class=Response,
    responses=error_responses(401, 403, 404, 422, 503),
    dependencies=[ReviewerKeyDep],
)
async def delete_item(review_id: ReviewId, queue: ReviewQueueDep) -> Response:
    """Delete an item."""
    await run_in_threadpool(queue.delete, review_id)
    return Response(status_code=204)


@router.get(
    "/{review_id}/result",
    summary="What reviewers keyed for a reading",
    description=(
        "For the client that got `review_id` in a reading's answer: the item's status and, "
        "once keyed, the result. Takes the client API key (or the reviewers')."
    ),
    response_model=ReviewResultResponse,
    responses=error_responses(401, 404, 422, 503),
    dependencies=[ResultKeyDep],
)
async def result(review_id: ReviewId, queue: ReviewQueueDep) -> ReviewResultResponse:
    """A reading's review result."""
    view = await run_in_threadpool(queue.get, review_id)
    return ReviewResultResponse.model_validate(
        {
            "review_id": view.review_id,
            "status": view.status,
            "reading": view.reading,
            "result": view.result,
        }
    )
