"""The storing benchmark's configurations set what their rows say (benchmarks/bench_storing.py).

The service ignores a ``DIGITS_*`` name it does not know, so a misspelt setting would leave a
row measuring another configuration without a word: each configuration's environment is read
here by the service's own settings, and its readings sorted by the service's own rule.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from app.api.review_intake import ReviewIntake
from app.reviews.db import default_url
from app.reviews.tables import Kind
from app.settings import Settings
from app.telemetry import Telemetry
from benchmarks.bench_storing import STORES, Store

POSTGRES_URL = "postgresql+psycopg://bench@db.example:5432/bench_storing_x"
DRAWS = 1000  # the audit share is a random draw per reading


def settings_of(store: Store, data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The settings the service reads from the configuration's environment (and only it)."""
    for name in os.environ:
        if name.startswith("DIGITS_"):
            monkeypatch.delenv(name)
    url = POSTGRES_URL if store.database == "postgresql" else None
    for name, value in store.env(data_dir, url).items():
        monkeypatch.setenv(name, value)
    return Settings()


def stored_kinds(settings: Settings, *, flagged: bool) -> set[Kind | None]:
    """How the service would store /predict readings, flagged or not, over many draws."""
    reviews = ReviewIntake(settings, Telemetry())
    return {reviews.kind_for(flagged, settings.review_queue_predict) for _ in range(DRAWS)}


@pytest.mark.parametrize("store", STORES, ids=[s.key for s in STORES])
def test_each_configuration_stores_what_its_row_says(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = settings_of(store, tmp_path, monkeypatch)
    if store.database is None:
        assert not settings.review_queue
        assert stored_kinds(settings, flagged=False) == {None}
        assert stored_kinds(settings, flagged=True) == {None}
        return
    assert settings.review_queue
    expected_url = POSTGRES_URL if store.database == "postgresql" else default_url(tmp_path)
    assert settings.review_database() == expected_url
    if store.every:
        assert stored_kinds(settings, flagged=True) == {Kind.FLAGGED}
        assert stored_kinds(settings, flagged=False) == {Kind.AUDIT}
    else:
        assert "2% audit" in store.name
        assert settings.review_audit_share == 0.02
        assert stored_kinds(settings, flagged=True) == {None}
        assert stored_kinds(settings, flagged=False) == {Kind.AUDIT, None}


def test_a_postgresql_configuration_needs_a_url(tmp_path: Path) -> None:
    (store,) = [s for s in STORES if s.key == "pg-every"]
    with pytest.raises(ValueError, match="PostgreSQL URL"):
        store.env(tmp_path)
