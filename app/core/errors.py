"""One error shape for every error the service returns.

Every 4xx/5xx answer is ``{"error": {"code": ..., "message": ..., "details": ...}}`` so a client
needs one parser, and ``message`` always tells a person what to do about it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, Field


class ErrorBody(BaseModel):
    """What went wrong, for a program (``code``) and for a person (``message``)."""

    code: str = Field(examples=["not_an_image"])
    message: str = Field(
        examples=["The uploaded file is not an image. Send a PNG, JPEG, BMP, GIF or WebP file."]
    )
    details: dict[str, Any] | None = None


class ErrorResponse(BaseModel):
    """The body of every error answer."""

    error: ErrorBody


class DomainError(Exception):
    """An error of the service's own domain, which knows no HTTP: a code and a message.

    Subclasses set ``code`` (or pass ``code=``); :data:`DOMAIN_ERRORS` maps the code to the HTTP
    status and :func:`api_error` turns one into an :class:`ApiError`. ``retry_after`` (seconds)
    overrides the table's hint for this one error.
    """

    code: str = "domain_error"

    def __init__(
        self,
        message: str,
        details: dict[str, Any] | None = None,
        *,
        code: str | None = None,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        self.message = message
        self.details = details
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True)
class ErrorSpec:
    """How the service answers one domain error code: its status and, if any, a retry hint."""

    status: int
    retry_after: int | None = None


#: Every domain error code (raised by imaging, segmentation, the model store and the deadline),
#: with its HTTP status. The one place that knows; the OpenAPI docs are built from it.
DOMAIN_ERRORS: dict[str, ErrorSpec] = {
    "empty_file": ErrorSpec(400),
    "not_an_image": ErrorSpec(400),
    "truncated_image": ErrorSpec(400),
    "version_not_found": ErrorSpec(404),
    "image_too_large": ErrorSpec(413),
    "unsupported_format": ErrorSpec(415),
    "too_many_jpeg_scans": ErrorSpec(422),
    "no_digit_found": ErrorSpec(422),
    "wrong_size": ErrorSpec(422),
    "no_digits_found": ErrorSpec(422),
    "too_many_digits": ErrorSpec(422),
    "model_not_ready": ErrorSpec(503, retry_after=5),
    "model_output_invalid": ErrorSpec(503, retry_after=5),
    "deadline_exceeded": ErrorSpec(503, retry_after=1),
    # The review queue (app/reviews/).
    "review_not_found": ErrorSpec(404),
    "review_image_deleted": ErrorSpec(410),
    "lease_expired": ErrorSpec(409),
    "review_held_by_another": ErrorSpec(409),
    "already_reviewed": ErrorSpec(409),
    "not_claimed": ErrorSpec(409),
    "invalid_review": ErrorSpec(422),
    "review_queue_unavailable": ErrorSpec(503, retry_after=5),
    "review_queue_full": ErrorSpec(503, retry_after=60),
}

#: The HTTP status of each domain error code.
DOMAIN_STATUS: dict[str, int] = {code: spec.status for code, spec in DOMAIN_ERRORS.items()}


class ApiError(Exception):
    """An error with an HTTP status that the handlers turn into an :class:`ErrorResponse`."""

    def __init__(
        self,
        status_code: int,
        code: str,
        message: str,
        details: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.code = code
        self.message = message
        self.details = details
        self.headers = headers

    def body(self) -> dict[str, Any]:
        """The JSON body for this error."""
        return ErrorResponse(
            error=ErrorBody(code=self.code, message=self.message, details=self.details)
        ).model_dump(exclude_none=True)


def api_error(exc: DomainError) -> ApiError:
    """The HTTP answer for a domain error (500 for a code missing from the table)."""
    spec = DOMAIN_ERRORS.get(exc.code, ErrorSpec(500))
    retry_after = exc.retry_after if exc.retry_after is not None else spec.retry_after
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    return ApiError(spec.status, exc.code, exc.message, details=exc.details, headers=headers)


#: The codes the HTTP layer itself answers with (routes, dependencies, limits), listed beside
#: the domain's in the OpenAPI docs; a test checks them against the ``ApiError`` calls in app/.
HTTP_ERRORS: dict[str, int] = {
    "missing_api_key": 401,
    "invalid_api_key": 401,
    "reviews_closed": 403,
    "reviewer_key_required": 403,
    "payload_too_large": 413,
    "too_many_pixels": 413,
    "too_many_files": 413,
    "invalid_request": 422,
    "model_not_ready": 503,
    "review_queue_off": 503,
}


def error_codes(status: int) -> list[str]:
    """Every code answered with ``status``: the domain's (in the table's order), then the HTTP
    layer's."""
    codes = [code for code, spec in DOMAIN_ERRORS.items() if spec.status == status]
    codes += [code for code, got in HTTP_ERRORS.items() if got == status and code not in codes]
    return codes


def domain_error(
    code: str,
    message: str,
    details: dict[str, Any] | None = None,
    *,
    retry_after: int | None = None,
) -> DomainError:
    """A :class:`DomainError` with the given code (listed in :data:`DOMAIN_ERRORS`)."""
    return DomainError(message, details, code=code, retry_after=retry_after)
