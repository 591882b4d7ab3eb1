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


def is_setting(field: str) -> bool:
    """Whether ``field`` (lower case, without the ``DIGITS_`` prefix) is a setting of the
    service."""
    return field in Settings.model_fields


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
