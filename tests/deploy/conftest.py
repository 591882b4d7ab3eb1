"""Fixtures for the deployment tests: the parsed Dockerfile, Compose file and nginx config."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from app.settings import Settings
from tests.deploy.formats import Dockerfile, NginxBlock, parse_dockerfile, parse_nginx

REPO = Path(__file__).resolve().parents[2]

#: Settings of the review queue's contract (``DIGITS_DATA_DIR``, ``DIGITS_REVIEW_DATABASE_URL``,
#: ``DIGITS_REVIEWER_API_KEY``, ``DIGITS_REVIEW_QUEUE``) that the deployment files set before
#: app/settings.py has them. The deployment tests accept these names as settings while the
#: class lacks them, and test_compose.py's test_pending_settings_are_not_settings_yet fails
#: once they land: then empty this set.
PENDING_SETTINGS = frozenset(
    {"data_dir", "review_database_url", "reviewer_api_key", "review_queue"}
)


def is_setting(field: str) -> bool:
    """Whether ``field`` (lower case, without the ``DIGITS_`` prefix) is a setting of the
    service, or one of the review queue's that has not landed yet."""
    return field in Settings.model_fields or field in PENDING_SETTINGS


@pytest.fixture(scope="session")
def dockerfile() -> Dockerfile:
    """The repository's Dockerfile, parsed."""
    return parse_dockerfile((REPO / "Dockerfile").read_text())


@pytest.fixture(scope="session")
def compose() -> dict[str, Any]:
    """docker-compose.yml as plain data (before variable interpolation)."""
    document = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    assert isinstance(document, dict)
    return document


@pytest.fixture(scope="session")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The Compose services by name."""
    result = compose["services"]
    assert isinstance(result, dict)
    return result


@pytest.fixture(scope="session")
def nginx() -> NginxBlock:
    """deploy/nginx.conf, parsed."""
    return parse_nginx((REPO / "deploy" / "nginx.conf").read_text())


@pytest.fixture(scope="session")
def app_routes() -> dict[str, set[str]]:
    """Path → HTTP methods the service answers (the app is built, not started).

    Read from the OpenAPI document, which lists every operation of the included routers, plus
    the routes registered directly on the app (/docs, /openapi.json, static mounts).
    """
    from app.main import create_app

    app = create_app()
    routes: dict[str, set[str]] = {}
    for path, operations in app.openapi()["paths"].items():
        routes.setdefault(path, set()).update(method.upper() for method in operations)
    for route in app.routes:
        path = getattr(route, "path", None)
        if isinstance(path, str):
            routes.setdefault(path, set()).update(getattr(route, "methods", None) or set())
    return routes


@pytest.fixture(scope="session")
def trainer_cli() -> Callable[[list[str]], argparse.Namespace]:
    """The trainer's own argument parser; an argument list it rejects fails the test.

    Importing it loads TensorFlow, so only the tests that check trainer arguments ask for it.
    """
    from training.train import parse_args

    def parse(argv: list[str]) -> argparse.Namespace:
        try:
            return parse_args(argv)
        except SystemExit as exit_:
            raise AssertionError(f"the trainer rejects {argv}") from exit_

    return parse
