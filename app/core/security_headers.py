"""Security headers on every response (pure ASGI middleware).

The web page sets its own policy (:mod:`app.api.routes.web`), the documentation pages theirs
(:mod:`app.api.routes.docs`); every other answer (JSON, errors, Prometheus text, static files)
gets the defaults below. A header the response already carries is left as it is, so a route
can always say something more specific.

The defaults forbid everything a JSON answer never needs: no script, no frame, no MIME
sniffing, no referrer. They are static bytes appended to the header list, so the cost per
response is a scan of a handful of header names.
"""

from __future__ import annotations

from typing import Final

from starlette.types import ASGIApp, Message, Receive, Scope, Send

DEFAULT_HEADERS: Final[tuple[tuple[bytes, bytes], ...]] = (
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    # frame-ancestors for current browsers, X-Frame-Options for the ones before it.
    (b"x-frame-options", b"DENY"),
    (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'"),
)
"""Lower-case names (as ASGI carries them) and values added when a response lacks them."""


class SecurityHeadersMiddleware:
    """Add :data:`DEFAULT_HEADERS` to every HTTP response that does not set them itself."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the application, completing the header list of its response start."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", ()))
                present = {name.lower() for name, _ in headers}
                headers.extend(item for item in DEFAULT_HEADERS if item[0] not in present)
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)
