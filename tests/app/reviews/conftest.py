"""The review queue on both databases: every test taking ``database_url`` (in
tests/app/conftest.py) runs on SQLite and on a real PostgreSQL (skipped without one, failed
under ``REQUIRE_POSTGRES=1``)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from app.reviews.db import Database, open_database, upgrade
from app.reviews.queue import ReviewQueue


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
