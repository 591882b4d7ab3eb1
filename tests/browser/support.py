"""What the browser tests share besides fixtures: where artifacts go, and a recorded page."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from playwright.sync_api import Browser, ConsoleMessage, Page, Request

REPO_ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS_DIR = REPO_ROOT / "artifacts" / "screenshots"
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}


@dataclass
class PageRecord:
    """A page plus what it did: console errors, uncaught exceptions, every request it made."""

    page: Page
    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)

    def external_requests(self) -> list[str]:
        """Requests to anything but this machine (data: and blob: URLs never leave the page)."""
        return [
            url
            for url in self.requests
            if urlsplit(url).scheme not in {"data", "blob"}
            and urlsplit(url).hostname not in LOCAL_HOSTS
        ]

    def screenshot(self, name: str) -> Path:
        """Save a full-page screenshot as a test artifact and return its path."""
        SCREENSHOTS_DIR.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS_DIR / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path


def open_page(
    browser: Browser, width: int, height: int, *, touch: bool = False
) -> Iterator[PageRecord]:
    """A fresh browser context and tab of that size, recording what the page does; closed after.

    A generator for fixtures to ``yield from``; each call is a context of its own (its own
    cookies and session storage), so two of them are two people.
    """
    context = browser.new_context(
        viewport={"width": width, "height": height}, has_touch=touch, is_mobile=touch
    )
    page = context.new_page()
    record = PageRecord(page)

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            record.console_errors.append(message.text)

    def on_request(request: Request) -> None:
        record.requests.append(request.url)

    page.on("console", on_console)
    page.on("pageerror", lambda error: record.page_errors.append(str(error)))
    page.on("request", on_request)
    try:
        yield record
    finally:
        context.close()
