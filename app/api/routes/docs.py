"""The API documentation pages, ``/docs`` (Swagger UI) and ``/redoc``, served without a CDN.

FastAPI's default pages load Swagger UI and ReDoc from a public CDN, so on a machine without
internet access (a sorting office, an air-gapped cluster) ``/docs`` would be a blank page. The
same assets ship inside the ``fastapi-offline`` package; they are served from here instead.

Each page carries a Content-Security-Policy that allows its own origin only. Swagger UI starts
from one inline script, allowed by its hash (computed per response, since the script names the
OpenAPI URL, which depends on the proxy's root path); both viewers inject styles at run time and
ReDoc runs its search in a worker made from a blob, so those are allowed too.
"""

from __future__ import annotations

import base64
import hashlib
import re
from importlib.resources import files
from pathlib import Path
from typing import Final

from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS_DIR: Final = Path(str(files("fastapi_offline") / "static"))
"""swagger-ui-bundle.js, swagger-ui.css, redoc.standalone.js and favicon.png."""

ASSETS_PREFIX: Final = "/docs-assets"

_INLINE_SCRIPT: Final = re.compile(rb"<script>(.*?)</script>", re.S)
_POLICY: Final = (
    "default-src 'none'; script-src 'self'{hashes}; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: blob:; font-src 'self' data:; connect-src 'self'; "
    "worker-src 'self' blob:; object-src 'none'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)

router = APIRouter(prefix="", tags=["docs"])


def with_policy(page: HTMLResponse) -> HTMLResponse:
    """The page with a Content-Security-Policy allowing its inline scripts by hash only."""
    hashes = "".join(
        f" 'sha256-{base64.b64encode(hashlib.sha256(script).digest()).decode()}'"
        for script in _INLINE_SCRIPT.findall(bytes(page.body))
    )
    page.headers["Content-Security-Policy"] = _POLICY.format(hashes=hashes)
    return page


def _asset(request: Request, name: str) -> str:
    # root_path keeps the links right behind a proxy that mounts the service under a prefix.
    return f"{request.scope.get('root_path', '')}{ASSETS_PREFIX}/{name}"


@router.get("/docs", include_in_schema=False)
async def swagger_ui(request: Request) -> HTMLResponse:
    """Interactive API documentation (Swagger UI), with every asset served locally."""
    page = get_swagger_ui_html(
        openapi_url=f"{request.scope.get('root_path', '')}{request.app.openapi_url}",
        title=f"{request.app.title} - API documentation",
        swagger_js_url=_asset(request, "swagger-ui-bundle.js"),
        swagger_css_url=_asset(request, "swagger-ui.css"),
        swagger_favicon_url=_asset(request, "favicon.png"),
    )
    return with_policy(page)


@router.get("/redoc", include_in_schema=False)
async def redoc(request: Request) -> HTMLResponse:
    """Reference API documentation (ReDoc), with every asset served locally."""
    page = get_redoc_html(
        openapi_url=f"{request.scope.get('root_path', '')}{request.app.openapi_url}",
        title=f"{request.app.title} - API reference",
        redoc_js_url=_asset(request, "redoc.standalone.js"),
        redoc_favicon_url=_asset(request, "favicon.png"),
        with_google_fonts=False,
    )
    return with_policy(page)


def mount_docs_assets(app: FastAPI) -> None:
    """Serve the documentation pages' scripts and styles under ``/docs-assets``."""
    app.mount(ASSETS_PREFIX, StaticFiles(directory=ASSETS_DIR), name="docs-assets")
