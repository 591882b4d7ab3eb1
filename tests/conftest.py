"""Fixtures for every test: the service's own state kept out of the repository.

The service keeps its review queue in ``DIGITS_DATA_DIR`` (``data/`` by default, relative to
the working directory): every app a test builds without a data directory of its own writes it
in a temporary directory of the session instead of the checkout.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

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
