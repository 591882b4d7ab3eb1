"""The review queue on both databases: every test taking ``database_url`` runs on SQLite and on
a real PostgreSQL (skipped without one, failed under ``REQUIRE_POSTGRES=1``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from app.reviews.db import Database, default_url, open_database, upgrade
from app.reviews.queue import ReviewQueue
from harness import postgres


def postgres_server() -> str:
    """The test server's URL; skips (or fails, when required) without one."""
    url, reason = postgres.admin_url()
    if url is None:
        if postgres.required():
            pytest.fail(f"{postgres.REQUIRE_ENV}=1 but {reason}")
        pytest.skip(reason)
    return url


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database of each kind."""
    if request.param == "sqlite":
        yield default_url(tmp_path / "data")
        return
    with postgres.fresh_database(postgres_server()) as url:
        yield url


@pytest.fixture
def database(database_url: str) -> Iterator[Database]:
    """The database, migrated."""
    db = open_database(database_url)
    upgrade(db)
    yield db
    db.dispose()


@pytest.fixture
def queue(database: Database) -> ReviewQueue:
    """A queue over the migrated database."""
    return ReviewQueue(database)
