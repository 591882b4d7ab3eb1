"""GET /, GET /review and /static: the pages and everything they load come from this service
alone.

The page's behaviour is tested in a real browser (tests/browser/); these checks are the fast,
browser-free part: what is served, with which headers, and that nothing points elsewhere.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser

import pytest
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
        self.inline: list[str] = []
        """Inline scripts, style elements, style attributes and event handlers: what the
        pages' policy (no 'unsafe-inline') would make the browser refuse."""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        names = {name for name, _ in attrs}
        if tag == "style" or (tag == "script" and "src" not in names):
            self.inline.append(f"<{tag}>")
        for name, value in attrs:
            if name in {"src", "href"} and value:
                self.urls.append(value)
            if name == "style" or name.startswith("on"):
                self.inline.append(f"<{tag} {name}=...>")


# Each page: a text it must hold, the assets it must load, the other pages it may link to.
PAGES = {
    "/": (
        "<canvas",
        {"/static/service.js", "/static/app.js", "/static/style.css"},
        {"/docs", "/metrics", "/review"},
    ),
    "/review": (
        'id="answer"',
        {"/static/service.js", "/static/review.js", "/static/review.css", "/static/style.css"},
        {"/", "/docs"},
    ),
}


@pytest.mark.parametrize("path", sorted(PAGES))
def test_the_page_is_served_with_a_same_origin_policy(client: TestClient, path: str) -> None:
    response = client.get(path)

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    policy = response.headers["content-security-policy"]
    assert "default-src 'self'" in policy
    assert "connect-src 'self'" in policy
    # The review page shows the queue's images through blob: URLs, fetched with the key.
    assert "img-src 'self' blob:" in policy
    assert "unsafe-inline" not in policy
    assert response.headers["x-content-type-options"] == "nosniff"
    assert PAGES[path][0] in response.text


@pytest.mark.parametrize("path", sorted(PAGES))
def test_every_asset_the_page_names_is_served_from_here(client: TestClient, path: str) -> None:
    _, wanted, links = PAGES[path]
    parser = _Assets()
    parser.feed(client.get(path).text)

    assets = [url for url in parser.urls if url.startswith("/static/")]
    assert {*wanted, "/static/favicon.svg"} <= set(assets)
    for url in assets:
        assert client.get(url).status_code == 200, url
    others = [url for url in parser.urls if not url.startswith("/static/")]
    assert set(others) <= links
    assert parser.inline == [], "the policy forbids inline scripts and styles"


def test_no_static_file_refers_to_another_host() -> None:
    files = sorted(p for p in STATIC_DIR.iterdir() if p.is_file())
    assert files
    for path in files:
        text = XML_NAMESPACE.sub("", path.read_text())
        assert EXTERNAL.search(text) is None, path.name


def test_the_pages_are_not_in_the_api_description(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert "/" not in paths
    assert "/review" not in paths


def test_a_missing_static_file_is_a_404_in_the_error_shape(client: TestClient) -> None:
    response = client.get("/static/nothing-here.js")

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
