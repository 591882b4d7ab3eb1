"""Dropping the work of a request whose client has gone away.

A route doing long work checks between its steps (between a batch's images, before the model
call) whether the client is still there; once it is gone, nobody will read the answer, so the
remaining work is skipped and the request ends with 499 ``client_closed_request`` (nginx's
code for it), which only the access log and the metrics ever see.
"""

from __future__ import annotations

from fastapi import Request

from app.core.errors import ApiError

__all__ = ["client_closed", "stop_if_client_gone"]


def client_closed() -> ApiError:
    """The error ending a request whose client disconnected before the answer was ready."""
    return ApiError(
        499,
        "client_closed_request",
        "The client closed the connection before the answer was ready; the work was stopped.",
    )


async def stop_if_client_gone(request: Request) -> None:
    """Raise :func:`client_closed` when the client has disconnected (never waits)."""
    if await request.is_disconnected():
        raise client_closed()
