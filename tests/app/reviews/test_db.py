"""Migrations and concurrency on both databases: migrations agree with the model and are safe
to run twice and at once; claims from many processes at once never hand out one item twice."""

from __future__ import annotations

import multiprocessing
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from app.reviews.__main__ import main as reviews_main
from app.reviews.db import (
    current_revision,
    default_url,
    head_revision,
    open_database,
    redacted,
    upgrade,
)
from app.reviews.queue import NewItem, ReviewQueue
from app.reviews.tables import Base, Kind

#: Processes claiming at once: the replicas' worth the queue must keep apart.
CLAIMERS = 8
ITEMS = 120


def _upgrade_in_process(url: str) -> str:
    database = open_database(url)
    try:
        return upgrade(database)
    finally:
        database.dispose()


def _claim_all(url: str, reviewer: str, start: Any) -> list[str]:
    database = open_database(url)
    queue = ReviewQueue(database)
    taken = []
    queue.stats()  # connected before the start, so the claims begin together
    start.wait()
    try:
        while (claimed := queue.claim(reviewer, 600)) is not None:
            taken.append(claimed.item.review_id)
    finally:
        database.dispose()
    return taken


def _pool(workers: int) -> ProcessPoolExecutor:
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))


def test_a_fresh_database_is_migrated_to_the_head(database_url: str) -> None:
    database = open_database(database_url)
    assert current_revision(database) is None
    assert upgrade(database) == head_revision()
    assert "review_items" in inspect(database.engine).get_table_names()
    database.dispose()


def test_the_migrations_build_exactly_the_schema_the_model_declares(database_url: str) -> None:
    database = open_database(database_url)
    upgrade(database)
    with database.engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        differences = compare_metadata(context, Base.metadata)
    database.dispose()
    assert differences == []


def test_migrations_run_twice_or_at_once_are_harmless(database_url: str) -> None:
    database = open_database(database_url)
    upgrade(database)
    queue = ReviewQueue(database)
    kept = queue.enqueue(
        NewItem(Kind.FLAGGED, "/recognize", 1, b"img", "image/png", {"digits": "1"}, "1")
    )
    assert upgrade(database) == head_revision()
    assert queue.get(kept).reading == {"digits": "1"}
    database.dispose()
    with _pool(4) as pool:
        revisions = list(pool.map(_upgrade_in_process, [database_url] * 4))
    assert revisions == [head_revision()] * 4


def test_four_processes_migrating_a_fresh_database_at_once_all_succeed(database_url: str) -> None:
    with _pool(4) as pool:
        revisions = list(pool.map(_upgrade_in_process, [database_url] * 4))
    assert revisions == [head_revision()] * 4


def test_eight_processes_claiming_at_once_never_get_the_same_item(database_url: str) -> None:
    database = open_database(database_url)
    upgrade(database)
    queue = ReviewQueue(database)
    ids = {
        queue.enqueue(
            NewItem(Kind.FLAGGED, "/recognize", 1, b"img", "image/png", {"digits": "1"}, "1")
        )
        for _ in range(ITEMS)
    }
    database.dispose()
    with _pool(CLAIMERS) as pool, multiprocessing.get_context("spawn").Manager() as manager:
        start = manager.Barrier(CLAIMERS)
        results = list(
            pool.map(
                _claim_all,
                [database_url] * CLAIMERS,
                [f"r{i}" for i in range(CLAIMERS)],
                [start] * CLAIMERS,
            )
        )
    handed = Counter(review_id for taken in results for review_id in taken)
    assert set(handed) == ids, "every item handed out"
    assert max(handed.values()) == 1, "no item handed out twice"
    assert sum(1 for taken in results if taken) > 1, "the claims really ran side by side"


def test_the_command_line_upgrades_and_hides_the_password(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = default_url(tmp_path)
    assert reviews_main(["upgrade", url]) == 0
    assert head_revision() in capsys.readouterr().out
    assert "secret" not in redacted("postgresql+psycopg://me:secret@db/x")


def test_an_unknown_database_is_refused_with_the_setting_to_change() -> None:
    with pytest.raises(ValueError, match="DIGITS_REVIEW_DATABASE_URL"):
        open_database("mysql://me@db/x")
