"""One error shape for every error the service returns.

Every 4xx/5xx answer is ``{"error": {"code": ..., "message": ..., "details": ...}}`` so a client
needs one parser, and ``message`` always tells a person what to do about it.
"""

from __future__ import annotations

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

    Subclasses set ``code``; :data:`DOMAIN_STATUS` maps the code to the HTTP status and
    :func:`api_error` turns one into an :class:`ApiError`.
    """

    code: str = "domain_error"

    def __init__(self, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


#: The HTTP status of each domain error code.
DOMAIN_STATUS: dict[str, int] = {
    "version_not_found": 404,
    "model_not_ready": 503,
    "model_output_invalid": 503,
}


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
    status = DOMAIN_STATUS.get(exc.code, 500)
    headers = {"Retry-After": "5"} if status == 503 else None
    return ApiError(status, exc.code, exc.message, details=exc.details, headers=headers)
