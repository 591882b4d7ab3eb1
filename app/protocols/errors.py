"""Errors in the protocols' own shape, on their routes only: ``{"error": "<message>"}``.

TensorFlow Serving's REST API and the Open Inference Protocol both answer an error as a JSON
object with one string, ``error``; their clients read that, not the service's
``{"error": {"code", "message", "details"}}``. :class:`ProtocolRoute` (the ``route_class`` of
their routers) turns whatever a route or its dependencies raise into that shape, so the rest of
the service keeps its own. A body over the limit is refused by the body-limit middleware before
any route runs, so it keeps the service's shape (413).
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any, Final

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.core.errors import ApiError, ErrorResponse
from app.protocols.common import ProtocolError

#: HTTP status of each canonical code (the mapping TF Serving and Triton use).
HTTP_STATUS: Final = {
    "invalid_argument": 400,
    "unauthenticated": 401,
    "not_found": 404,
    "unsupported_media_type": 415,
    "unavailable": 503,
}


class ProtocolErrorResponse(BaseModel):
    """The error body of TensorFlow Serving's REST API and of the Open Inference Protocol."""

    error: str = Field(
        description="What went wrong, for a person.",
        examples=["Input 'images' must have shape [N, 28, 28] with N ≥ 1, got [1, 784]."],
    )


_DESCRIPTIONS: Final = {
    400: "The request is malformed: not JSON, wrong tensor name, shape, datatype or size.",
    401: "The API key (header X-API-Key) is missing or wrong.",
    404: "No such model, version or label.",
    415: "The request body is compressed (Content-Encoding); send it uncompressed.",
    503: "No model version is loaded yet.",
}


def protocol_error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for a protocol route: its errors in ``{"error": "..."}``.

    ``4XX`` covers any other client error in the same shape (and keeps FastAPI from adding
    its own validation-error schema, which these routes never answer). A body over the limit
    is refused by the middleware in the service's shape, so 413 is documented as that.
    """
    responses: dict[int | str, dict[str, Any]] = {
        status: {"model": ProtocolErrorResponse, "description": _DESCRIPTIONS[status]}
        for status in statuses
    }
    responses["4XX"] = {
        "model": ProtocolErrorResponse,
        "description": "Another client error, in the protocol's error shape.",
    }
    responses[413] = {
        "model": ErrorResponse,
        "description": "The request body is over the service's limit (DIGITS_MAX_UPLOAD_BYTES).",
    }
    return responses


def protocol_error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    """An error answer in the protocols' shape."""
    return JSONResponse({"error": message}, status_code=status, headers=headers)


class ProtocolRoute(APIRoute):
    """A route whose every error is answered as ``{"error": "<message>"}``."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        """The route's handler, wrapped so that errors take the protocol's shape."""
        handler = super().get_route_handler()

        async def guarded(request: Request) -> Response:
            try:
                return await handler(request)
            except ProtocolError as exc:
                status, code, message = HTTP_STATUS.get(exc.code, 400), exc.code, exc.message
                headers = {"Retry-After": "5"} if status == 503 else None
            except ApiError as exc:  # e.g. the API-key check, shared with the service
                status, code, message, headers = (
                    exc.status_code,
                    exc.code,
                    exc.message,
                    exc.headers,
                )
            except RequestValidationError as exc:
                status, code, headers = 400, "invalid_argument", None
                message = "; ".join(
                    f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', 'invalid')}"
                    for e in exc.errors()
                )
            except StarletteHTTPException as exc:
                status, code = exc.status_code, f"http_{exc.status_code}"
                message = exc.detail if isinstance(exc.detail, str) else "Request refused."
                headers = dict(exc.headers) if exc.headers else None
            request.app.state.telemetry.count_error(code)
            return protocol_error(status, message, headers)

        return guarded
