"""A request body size limit, enforced while the body arrives (pure ASGI middleware).

A declared ``Content-Length`` over the limit is refused before the application runs. A body
without one (chunked transfer encoding) is counted as it is received: the moment it crosses the
limit the middleware answers 413 itself, tells the application the client has gone, and drops
anything the application still tries to send. Memory stays bounded by the limit and the refusal
does not wait for the rest of the upload.

The connection is kept open after a 413 so that the client can read it: most HTTP clients
(httpx, requests) send the whole body before they read the answer, and closing a socket with
unread data makes the kernel reset the connection, so the client would see a reset instead of
the 413 (on a real uvicorn server, 86 of 100 chunked uploads over the limit got a reset, and
uploads with a Content-Length did too under concurrent load). uvicorn reads and discards the
rest of a body whose response is complete. Only a declared body far over the limit
(more than ``DRAIN_FACTOR`` times it) gets ``Connection: close``, so nobody makes the server read
gigabytes. A chunked body declares no length, so the launcher (:mod:`app.serve`) bounds the
discarding instead: after ``DRAIN_FACTOR`` times the limit, or the header timeout, the
connection is closed (uvicorn alone read an endless one for as long as it came).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Final

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core.errors import ApiError

ErrorObserver = Callable[[str], None]

#: A refused body declared up to this many times the limit is still read (and discarded).
DRAIN_FACTOR: Final = 4


def _too_large(max_bytes: int) -> ApiError:
    return ApiError(
        413,
        "payload_too_large",
        f"The request body is larger than the limit of {max_bytes:,} bytes "
        f"({max_bytes / 1048576:.1f} MiB). Send a smaller image or fewer files.",
        details={"max_bytes": max_bytes},
    )


class BodySizeLimitMiddleware:
    """Refuse request bodies larger than ``max_bytes`` with 413 in the service's error shape."""

    def __init__(
        self, app: ASGIApp, max_bytes: int, on_reject: ErrorObserver | None = None
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.on_reject = on_reject
        error = _too_large(max_bytes)
        self._body = json.dumps(error.body()).encode()
        self._code = error.code

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the application with a receive channel that stops at the limit."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None:
            if declared > self.max_bytes:
                await self._reject(send, close=declared > self.max_bytes * DRAIN_FACTOR)
            else:
                # The server delivers no more body than the declared length (HTTP/1.1 framing;
                # a head with both a length and chunked encoding is refused by the parser), so
                # there is nothing to count.
                await self.app(scope, receive, send)
            return

        received = 0
        rejected = False
        started = False

        async def limited_receive() -> Message:
            nonlocal received, rejected, started
            if rejected:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    rejected = True
                    if not started:
                        started = True
                        await self._reject(send, close=False)
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if rejected:
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            # Reading a body we cut off makes some applications fail; the 413 is already sent.
            if not rejected:
                raise

    async def _reject(self, send: Send, *, close: bool) -> None:
        if self.on_reject is not None:
            self.on_reject(self._code)
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(self._body)).encode()),
        ]
        if close:
            headers.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": self._body})


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
