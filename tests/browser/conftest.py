"""Fixtures for the browser tests: a real uvicorn server with the bundled model, headless chromium.

The server is the service as it ships (``app.main:create_app`` under uvicorn, in its own
process), so the page is tested against the real ``/predict``, ``/recognize`` and ``/metrics``.
The browser is Debian's ``/usr/bin/chromium`` driven by the Python ``playwright`` package:
``playwright install`` downloads a browser from the internet, which CI cannot reach, so
``.ci/install-browser.sh`` installs the distribution's chromium instead.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from playwright.sync_api import Browser, expect, sync_playwright

from harness.mnist import MISSING, mnist_dir, read_test_set
from harness.servers import RunningServer
from tests.browser.support import REPO_ROOT, PageRecord, open_page

SERVER_LOG = REPO_ROOT / "artifacts" / "browser-server.log"
CHROMIUM = Path("/usr/bin/chromium")
# Flags for a quiet, reproducible headless run: no sandbox (CI runs as root), no GPU, and none
# of chromium's own background traffic (updates, sync, safe browsing) so every request the
# tests see comes from the page.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
# Loading TensorFlow and warming the model takes seconds on a 2-core machine; this is only a
# bound on how long to wait before giving up with the server's log, not a speed check.
READY_WAIT_SECONDS = 180.0
# How long an expectation waits for the page to catch up (a bound, not a speed check): a busy
# 2-core CI machine can take more than playwright's default 5 s to answer its first request.
expect.set_options(timeout=20_000)


def _model_versions(models_dir: Path) -> list[int]:
    if not models_dir.is_dir():
        return []
    return sorted(
        int(child.name)
        for child in models_dir.iterdir()
        if child.is_dir() and child.name.isdigit() and (child / "saved_model.pb").is_file()
    )


@pytest.fixture(scope="package")
def models_dir() -> Path:
    """The bundled model's directory (or DIGITS_MODELS_DIR), holding at least one version."""
    found = Path(os.environ.get("DIGITS_MODELS_DIR", REPO_ROOT / "models" / "mnist"))
    if not found.is_absolute():
        found = REPO_ROOT / found
    if not _model_versions(found):
        pytest.fail(
            f"No model version in {found}: the browser tests need the bundled model "
            "models/mnist/<n>/ (train one with `make train`)."
        )
    return found


@pytest.fixture(scope="package")
def server_url(models_dir: Path) -> Iterator[str]:
    """Base URL of the real service under uvicorn, serving the bundled model, once ready."""
    # The page is tried as a visitor without a key would; the key itself is the API's business:
    # the server's environment carries no DIGITS_* setting but the models directory.
    server = RunningServer.start(models_dir, SERVER_LOG, ready_timeout=READY_WAIT_SECONDS)
    try:
        yield server.url
    finally:
        server.stop()


# Package scope, not session: Playwright's sync API runs an event loop on the main thread while
# it is open, and tests elsewhere that call asyncio.run() must not find it still running.
@pytest.fixture(scope="package")
def browser() -> Iterator[Browser]:
    """Headless Debian chromium; the tests skip only when it is not installed at all."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is not installed: run `bash .ci/install-browser.sh` (as root)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def desktop(browser: Browser) -> Iterator[PageRecord]:
    """A fresh browser tab the size of a laptop screen."""
    yield from open_page(browser, 1280, 900)


@pytest.fixture
def phone(browser: Browser) -> Iterator[PageRecord]:
    """A fresh browser tab on a small touch-screen phone held upright."""
    yield from open_page(browser, 375, 740, touch=True)


@pytest.fixture(scope="session")
def mnist_test_digits() -> tuple[np.ndarray, np.ndarray]:
    """The 10,000 MNIST **test** images (uint8 [N,28,28]) and labels, via ``training.data``."""
    directory = mnist_dir()
    if directory is None:
        pytest.skip(MISSING)
    return read_test_set(directory)
