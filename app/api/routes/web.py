"""The web pages: ``GET /`` (the reader), ``GET /review`` (the reviewers' queue) and their
static files under ``/static``.

The page is plain HTML, CSS and JavaScript that only talks to this service, so it works offline
and behind any proxy that forwards the API.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).resolve().parents[2] / "static"
"""Where index.html, review.html and their scripts and styles live (package data of ``app``)."""

# The page loads nothing from any other origin; saying so in a policy makes the browser enforce
# it, so a stray external font or script fails loudly in development instead of silently
# needing the network in production.
CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'self'",
        "img-src 'self' blob: data:",
        "style-src 'self'",
        "script-src 'self'",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)

PAGE_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # The page is tiny and changes with each release; revalidating costs one 304.
    "Cache-Control": "no-cache",
}

router = APIRouter(prefix="", tags=["web"])


@router.get("/", include_in_schema=False)
def index() -> FileResponse:
    """Serve the page where a person draws a digit or uploads a photo of a postal code."""
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html", headers=PAGE_HEADERS)


@router.get("/review", include_in_schema=False)
def review() -> FileResponse:
    """Serve the page where reviewers key the readings of the review queue.

    The page itself is public, like ``/``: everything it shows comes from the ``/reviews``
    endpoints, which ask for the reviewer key the page sends.
    """
    return FileResponse(STATIC_DIR / "review.html", media_type="text/html", headers=PAGE_HEADERS)


def mount_static(app: FastAPI) -> None:
    """Serve the page's assets (scripts, styles, icon) under ``/static``."""
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
