"""/docs and /redoc work offline: every script, style and icon they name is served here."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

ASSET = re.compile(r"""(?:src|href)=["']([^"']+)["']""")
SCRIPT_URL = re.compile(r"""(?:url|spec-url)\s*[:=]\s*["']([^"']+)["']""")


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_page_loads_only_local_assets(client: TestClient, page: str) -> None:
    response = client.get(page)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assets = ASSET.findall(response.text)
    assert assets, f"{page} names no script or stylesheet"
    for url in assets:
        assert url.startswith("/"), f"{page} loads {url} from another host"
        asset = client.get(url)
        assert asset.status_code == 200, url
        assert len(asset.content) > 1000, f"{url} is suspiciously small"
    # The page fetches the OpenAPI document of this service, not of any other.
    spec_urls = [u for u in SCRIPT_URL.findall(response.text) if "openapi" in u]
    assert spec_urls == ["/openapi.json"]


def test_swagger_ui_understands_openapi_3_1(client: TestClient) -> None:
    """FastAPI writes OpenAPI 3.1, which Swagger UI renders only from version 5 on."""
    assert client.get("/openapi.json").json()["openapi"].startswith("3.1")
    page = client.get("/docs").text
    script = next(u for u in ASSET.findall(page) if u.endswith("swagger-ui-bundle.js"))
    bundle = client.get(script).text
    assert re.search(r'"5\.\d+\.\d+"', bundle), "the bundled Swagger UI is older than 5.x"


def test_docs_pages_are_not_in_the_schema(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert not {"/docs", "/redoc", "/docs-assets"} & set(paths)
