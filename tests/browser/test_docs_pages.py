"""The API documentation pages render in a real chromium under their Content-Security-Policy.

The policy (app/api/routes/docs.py) allows the pages' own files and Swagger UI's inline start-up
script by hash; a policy too strict would leave a blank page, which only a browser shows.
"""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from tests.browser.support import PageRecord

pytestmark = pytest.mark.browser

# ReDoc's "API docs by Redocly" badge is an image on the vendor's CDN: blocking it is the policy
# working (the pages load nothing from other hosts), not a fault of the page.
REDOC_BADGE = "cdn.redoc.ly"


@pytest.mark.parametrize("path", ["/docs", "/redoc"])
def test_docs_page_renders_the_api_under_its_policy(
    server_url: str, desktop: PageRecord, path: str
) -> None:
    response = desktop.page.goto(f"{server_url}{path}")
    assert response is not None
    assert "script-src 'self'" in response.headers["content-security-policy"]
    # Both viewers list the operations from /openapi.json once their scripts have run.
    expect(desktop.page.get_by_text("/predict/batch").first).to_be_attached()
    expect(desktop.page.get_by_text("/recognize").first).to_be_attached()
    violations = [
        text
        for text in desktop.console_errors
        if "Content Security Policy" in text and REDOC_BADGE not in text
    ]
    assert violations == []
    assert desktop.page_errors == []
    desktop.screenshot(f"docs-{path.strip('/')}")
