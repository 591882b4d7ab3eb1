"""GET / and /static: the page and everything it loads come from this service alone.

The page's behaviour is tested in a real browser (tests/browser/); these checks are the fast,
browser-free part: what is served, with which headers, and that nothing points elsewhere.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser

from fastapi.testclient import TestClient

from app.api.routes.web import STATIC_DIR

# Anything that would make a browser reach another host: absolute or protocol-relative URLs,
# and CSS imports. XML namespaces (xmlns="http://www.w3.org/2000/svg") are names, not requests.
EXTERNAL = re.compile(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}|@import", re.I)
XML_NAMESPACE = re.compile(r'xmlns(:\w+)?="[^"]*"')


class _Assets(HTMLParser):
    """Collects every URL the page itself loads or links to."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in {"src", "href"} and value:
                self.urls.append(value)


def test_the_page_is_served_with_a_same_origin_policy(client: TestClient) -> None:
    response = client.get("/")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    policy = response.headers["content-security-policy"]
    assert "default-src 'self'" in policy
    assert "connect-src 'self'" in policy
    assert response.headers["x-content-type-options"] == "nosniff"
    assert "<canvas" in response.text


def test_every_asset_the_page_names_is_served_from_here(client: TestClient) -> None:
    parser = _Assets()
    parser.feed(client.get("/").text)

    assets = [url for url in parser.urls if url.startswith("/static/")]
    assert {"/static/app.js", "/static/style.css", "/static/favicon.svg"} <= set(assets)
    for url in assets:
        assert client.get(url).status_code == 200, url
    others = [url for url in parser.urls if not url.startswith("/static/")]
    assert set(others) <= {"/docs", "/metrics"}


def test_no_static_file_refers_to_another_host() -> None:
    files = sorted(p for p in STATIC_DIR.iterdir() if p.is_file())
    assert files
    for path in files:
        text = XML_NAMESPACE.sub("", path.read_text())
        assert EXTERNAL.search(text) is None, path.name


def test_the_page_is_not_in_the_api_description(client: TestClient) -> None:
    assert "/" not in client.get("/openapi.json").json()["paths"]


def test_a_missing_static_file_is_a_404_in_the_error_shape(client: TestClient) -> None:
    response = client.get("/static/nothing-here.js")

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
