"""The API documentation pages, ``/docs`` (Swagger UI) and ``/redoc``, served without a CDN.

FastAPI's default pages load Swagger UI and ReDoc from a public CDN, so on a machine without
internet access (a sorting office, an air-gapped cluster) ``/docs`` would be a blank page. The
same assets ship inside the ``fastapi-offline`` package; they are served from here instead.
"""

from __future__ import annotations

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

router = APIRouter(prefix="", tags=["docs"])


def _asset(request: Request, name: str) -> str:
    # root_path keeps the links right behind a proxy that mounts the service under a prefix.
    return f"{request.scope.get('root_path', '')}{ASSETS_PREFIX}/{name}"


@router.get("/docs", include_in_schema=False)
async def swagger_ui(request: Request) -> HTMLResponse:
    """Interactive API documentation (Swagger UI), with every asset served locally."""
    return get_swagger_ui_html(
        openapi_url=f"{request.scope.get('root_path', '')}{request.app.openapi_url}",
        title=f"{request.app.title} - API documentation",
        swagger_js_url=_asset(request, "swagger-ui-bundle.js"),
        swagger_css_url=_asset(request, "swagger-ui.css"),
        swagger_favicon_url=_asset(request, "favicon.png"),
    )


@router.get("/redoc", include_in_schema=False)
async def redoc(request: Request) -> HTMLResponse:
    """Reference API documentation (ReDoc), with every asset served locally."""
    return get_redoc_html(
        openapi_url=f"{request.scope.get('root_path', '')}{request.app.openapi_url}",
        title=f"{request.app.title} - API reference",
        redoc_js_url=_asset(request, "redoc.standalone.js"),
        redoc_favicon_url=_asset(request, "favicon.png"),
        with_google_fonts=False,
    )


def mount_docs_assets(app: FastAPI) -> None:
    """Serve the documentation pages' scripts and styles under ``/docs-assets``."""
    app.mount(ASSETS_PREFIX, StaticFiles(directory=ASSETS_DIR), name="docs-assets")
