"""A request id for every request: the caller's ``X-Request-ID`` when it is safe, else a new one.

:class:`RequestIdMiddleware` (the outermost middleware) puts the id in a context variable for
the whole request, so every log line written while answering it carries the id (see
:class:`app.core.logging.RequestIdFilter`), uvicorn's own lines included, and echoes it in the
response's ``X-Request-ID`` header. An incoming id that is too long or holds characters outside
a small safe set is replaced by a generated one: it ends up in log lines and headers, where a
newline or a megabyte would do harm.
"""

from __future__ import annotations

import re
import uuid
from contextvars import ContextVar
from typing import Final

from starlette.types import ASGIApp, Message, Receive, Scope, Send

HEADER: Final = "X-Request-ID"
_HEADER_KEY: Final = HEADER.lower().encode("latin-1")
MAX_LENGTH: Final = 128
#: Letters, digits and the punctuation of UUIDs, ULIDs, base64 and common trace ids.
_SAFE: Final = re.compile(rf"[A-Za-z0-9._:/+=@-]{{1,{MAX_LENGTH}}}")

request_id: ContextVar[str | None] = ContextVar("request_id", default=None)


def current_request_id() -> str | None:
    """The id of the request being answered in this context, or None outside a request."""
    return request_id.get()


def new_request_id() -> str:
    """A fresh random id (32 hex digits)."""
    return uuid.uuid4().hex


def accepted_request_id(value: bytes | None) -> str:
    """``value`` when it is a safe request id, else a newly generated one."""
    if value is not None and len(value) <= MAX_LENGTH:
        text = value.decode("latin-1")
        if _SAFE.fullmatch(text):
            return text
    return new_request_id()


class RequestIdMiddleware:
    """Sets the request id of every HTTP request and echoes it in the response headers."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the application with the request id set."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = None
        for key, value in scope["headers"]:
            if key == _HEADER_KEY:
                incoming = value
                break
        rid = accepted_request_id(incoming)
        # Not reset afterwards, on purpose: uvicorn runs every request in a task of its own
        # (a copy of the context), and its lines written after the app returns (an "Exception
        # in ASGI application") still belong to this request.
        request_id.set(rid)
        header = (_HEADER_KEY, rid.encode("latin-1"))

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        await self.app(scope, receive, send_with_id)
