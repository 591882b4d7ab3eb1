"""FastAPI's private route context (app/api/fastapi_compat.py): used as pinned, fallback exercised.

The ``POST /predict`` short cut learns the dependencies of its route as included through
``fastapi.routing._effective_route_context_var``. These tests fail when an upgrade of FastAPI
moves or reshapes it (the service would silently lose the short cut), and check that the
public fallback, the full route for every request, answers as the short cut does.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

import fastapi
import fastapi.routing
import pytest
from fastapi import Depends, FastAPI
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from app.api import fastapi_compat
from app.api.routes import predict as predict_module
from app.main import create_app
from tests.app.api.test_predict import assert_error, digit_png
from tests.app.conftest import ModelsDir, make_settings

KEY = "s3cret-key"
UPGRADE = (
    f"FastAPI {fastapi.__version__} no longer hands the route as included to get_route_handler "
    "through fastapi.routing._effective_route_context_var: POST /predict has lost its short cut "
    "(+19% at c16). Adapt app/api/fastapi_compat.py to this FastAPI, or accept the fallback."
)


def upload() -> dict[str, Any]:
    return {"files": {"file": ("d.png", digit_png(), "image/png")}}


@pytest.fixture
def seen_routes(monkeypatch: pytest.MonkeyPatch) -> list[tuple[APIRoute, object]]:
    """What route_as_included answered the short cut, for each handler FastAPI built."""
    seen: list[tuple[APIRoute, object]] = []
    real = fastapi_compat.route_as_included

    def spy(route: APIRoute) -> object:
        answer = real(route)
        seen.append((route, answer))
        return answer

    monkeypatch.setattr(predict_module, "route_as_included", spy)
    return seen


def _keyed_client(models: ModelsDir) -> Iterator[TestClient]:
    models.add(1, digit=1)
    models.add(2, digit=3)
    with TestClient(create_app(make_settings(models.path, api_key=KEY))) as client:
        yield client


def _answers_as_the_full_route(client: TestClient, plain_calls: list[bool], taken: bool) -> None:
    """Plain requests answer what the full route answers; ``taken``: through the short cut."""
    headers = {"X-API-Key": KEY}
    plain = client.post("/predict", headers=headers, **upload())
    full = client.post("/predict", headers=headers, params={"normalize": "auto"}, **upload())
    assert plain.status_code == full.status_code == 200
    assert plain.content == full.content
    assert plain.json()["model_version"] == 2
    assert_error(client.post("/predict", data={"x": "1"}), 401, "missing_api_key")
    assert_error(client.post("/predict", headers=headers, data={"x": "1"}), 422, "invalid_request")
    assert plain_calls == ([True] if taken else [])


# --- the pinned FastAPI takes the private path ------------------------------------------------


def test_the_installed_fastapi_has_the_route_context(
    models: ModelsDir, plain_calls: list[bool], seen_routes: list[tuple[APIRoute, object]]
) -> None:
    assert fastapi_compat.route_context_var() is not None, UPGRADE
    for client in _keyed_client(models):
        _answers_as_the_full_route(client, plain_calls, taken=True)
    # The handler that served was built from the inclusion's record of the route, not from
    # the route itself (which would miss what the inclusion adds) nor from nothing (fallback).
    included = [
        answer
        for route, answer in seen_routes
        if answer is not None and answer is not route and route.path == "/predict"
    ]
    assert included, UPGRADE
    assert all(getattr(answer, "original_route", None) is not None for answer in included)
    assert all(answer is not None for _, answer in seen_routes), UPGRADE


def test_a_dependency_added_at_inclusion_is_never_skipped(
    models: ModelsDir, monkeypatch: pytest.MonkeyPatch, plain_calls: list[bool]
) -> None:
    """What the private context buys: the short cut sees the route as included."""
    checked: list[bool] = []

    async def audit() -> None:
        checked.append(True)

    real_include = FastAPI.include_router

    def include(self: FastAPI, router: Any, **options: Any) -> None:
        if router is predict_module.router:
            options["dependencies"] = [Depends(audit)]
        real_include(self, router, **options)

    monkeypatch.setattr(FastAPI, "include_router", include)
    models.add(2, digit=3)
    with TestClient(create_app(make_settings(models.path))) as client:
        assert client.post("/predict", **upload()).status_code == 200
    assert checked == [True], UPGRADE
    assert plain_calls == []


# --- the public fallback: the full route ------------------------------------------------------


def test_without_the_private_name_every_request_takes_the_full_route(
    models: ModelsDir, monkeypatch: pytest.MonkeyPatch, plain_calls: list[bool]
) -> None:
    monkeypatch.setattr(fastapi_compat, "ROUTE_CONTEXT_VAR", "_no_such_context_var")
    assert fastapi_compat.route_context_var() is None
    for client in _keyed_client(models):
        _answers_as_the_full_route(client, plain_calls, taken=False)


def test_a_route_context_of_another_shape_takes_the_full_route(
    models: ModelsDir, monkeypatch: pytest.MonkeyPatch, plain_calls: list[bool]
) -> None:
    # A FastAPI whose context variable holds something without the fields the short cut reads.
    reshaped: ContextVar[str] = ContextVar("reshaped", default="another shape")
    monkeypatch.setattr(fastapi.routing, "_reshaped_route_context", reshaped, raising=False)
    monkeypatch.setattr(fastapi_compat, "ROUTE_CONTEXT_VAR", "_reshaped_route_context")
    assert fastapi_compat.route_as_included(APIRoute("/x", lambda: None)) is None
    for client in _keyed_client(models):
        _answers_as_the_full_route(client, plain_calls, taken=False)
