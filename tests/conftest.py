"""Fixtures for every test: the service's own state kept out of the repository.

The service keeps its review queue in ``DIGITS_DATA_DIR`` (``data/`` by default, relative to
the working directory): every app a test builds without a data directory of its own writes it
in a temporary directory of the session instead of the checkout. :func:`postgres_server` is the
test PostgreSQL for the suites that use one.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from harness import postgres

DATA_DIR_ENV = "DIGITS_DATA_DIR"


@pytest.fixture(scope="session", autouse=True)
def _service_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    if os.environ.get(DATA_DIR_ENV):
        yield
        return
    os.environ[DATA_DIR_ENV] = str(tmp_path_factory.mktemp("service-data"))
    try:
        yield
    finally:
        os.environ.pop(DATA_DIR_ENV, None)


def postgres_server() -> str:
    """The test PostgreSQL's URL; skips (or fails, when required) without one."""
    url, reason = postgres.admin_url()
    if url is None:
        if postgres.required():
            pytest.fail(f"{postgres.REQUIRE_ENV}=1 but {reason}")
        pytest.skip(reason)
    return url
