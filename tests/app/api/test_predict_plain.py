"""POST /predict's short cut for plain requests: same answers and the same errors as the route.

A request with no query string, the right API key (or none needed) and a model loaded skips
FastAPI's per-request dependency resolution (``_PredictRoute``); these tests pin that it is
taken, that it answers exactly what the full route answers, and that every request the
dependencies would judge (missing or wrong key, a query parameter, no model) still gets their
error, in their order.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from fastapi import Request
from fastapi.testclient import TestClient

from app.api import deps
from app.main import create_app
from tests.app.api.test_predict import assert_error, digit_png
from tests.app.conftest import ModelsDir, make_settings

KEY = "s3cret-key"


def upload(data: bytes | None = None) -> dict[str, Any]:
    return {"files": {"file": ("d.png", data if data is not None else digit_png(), "image/png")}}


@pytest.fixture
def keyed(models: ModelsDir) -> Iterator[TestClient]:
    models.add(1, digit=1)
    models.add(2, digit=3)
    with TestClient(create_app(make_settings(models.path, api_key=KEY))) as client:
        yield client


def test_plain_request_takes_the_short_cut_with_the_full_routes_answer(
    client: TestClient, plain_calls: list[bool]
) -> None:
    plain = client.post("/predict", **upload())
    assert plain_calls == [True]
    # An explicit default goes through the full route (a query string) and must agree.
    full = client.post("/predict", params={"normalize": "auto"}, **upload())
    assert plain_calls == [True]
    assert plain.status_code == full.status_code == 200
    assert plain.content == full.content
    assert plain.headers["content-type"] == full.headers["content-type"]


def test_the_key_is_checked_before_the_body_on_both_paths(
    keyed: TestClient, plain_calls: list[bool]
) -> None:
    # No key and no file: the key's 401, not the form's 422 (as the dependencies order it).
    assert_error(keyed.post("/predict", data={"x": "1"}), 401, "missing_api_key")
    assert_error(
        keyed.post("/predict", headers={"X-API-Key": ""}, **upload()), 401, "missing_api_key"
    )
    wrong = keyed.post("/predict", headers={"X-API-Key": KEY + "x"}, **upload())
    assert_error(wrong, 401, "invalid_api_key")
    assert plain_calls == []
    right = keyed.post("/predict", headers={"X-API-Key": KEY}, **upload())
    assert right.status_code == 200
    assert right.json()["model_version"] == 2  # the served default: the newest version
    assert plain_calls == [True]


def test_with_the_key_a_bad_form_is_the_same_422(keyed: TestClient) -> None:
    headers = {"X-API-Key": KEY}
    plain = keyed.post("/predict", headers=headers, data={"x": "1"})
    full = keyed.post("/predict", headers=headers, params={"normalize": "auto"}, data={"x": "1"})
    error = assert_error(plain, 422, "invalid_request")
    assert "field 'file'" in str(error["message"])
    assert plain.json() == full.json()
    wrong_field = keyed.post(
        "/predict", headers=headers, files={"image": ("d.png", digit_png(), "image/png")}
    )
    # The same answer, but for the content type it names.
    assert wrong_field.json()["error"]["message"] == plain.json()["error"]["message"]
    assert wrong_field.json()["error"]["details"] == {"content_type": "multipart/form-data"}


def test_query_parameters_are_still_validated_and_honoured(
    keyed: TestClient, plain_calls: list[bool]
) -> None:
    headers = {"X-API-Key": KEY}
    bad = keyed.post("/predict", headers=headers, params={"normalize": "sometimes"}, **upload())
    error = assert_error(bad, 422, "invalid_request")
    assert "'normalize' must be one of: auto, always, never" in str(error["message"])
    assert_error(
        keyed.post("/predict", headers=headers, params={"version": "-1"}, **upload()),
        422,
        "invalid_request",
    )
    assert_error(
        keyed.post("/predict", headers=headers, params={"label": "no such!"}, **upload()),
        422,
        "invalid_request",
    )
    assert_error(
        keyed.post("/predict", headers=headers, params={"version": "9"}, **upload()),
        404,
        "version_not_found",
    )
    named = keyed.post("/predict", headers=headers, params={"version": "2"}, **upload())
    assert named.json()["model_version"] == 2
    forced = keyed.post("/predict", headers=headers, params={"normalize": "always"}, **upload())
    assert forced.json()["normalized"] is True
    assert plain_calls == []


def test_no_model_is_the_503_before_any_form_error(tmp_path: Path, plain_calls: list[bool]) -> None:
    with TestClient(create_app(make_settings(tmp_path / "none", model_poll_seconds=0))) as client:
        for response in (client.post("/predict", **upload()), client.post("/predict")):
            assert_error(response, 503, "model_not_ready")
    assert plain_calls == []


def test_dependency_overrides_are_honoured(models: ModelsDir, plain_calls: list[bool]) -> None:
    models.add(1, digit=1)
    models.add(2, digit=3)
    app = create_app(make_settings(models.path))
    with TestClient(app) as client:

        async def first_version(request: Request) -> deps.Serving:
            state = request.app.state
            return deps.Serving(
                replace(state.store.current, version=41),
                state.worker,
                state.settings,
                state.telemetry,
                state.reviews,
            )

        app.dependency_overrides[deps.get_serving] = first_version
        assert client.post("/predict", **upload()).json()["model_version"] == 41
        app.dependency_overrides.clear()
        assert client.post("/predict", **upload()).json()["model_version"] == 2
    assert plain_calls == [True]


def test_the_documented_operation_is_unchanged(models: ModelsDir) -> None:
    models.add(1, digit=1)
    with TestClient(create_app(make_settings(models.path, api_key="k"))) as client:
        operation = client.get("/openapi.json").json()["paths"]["/predict"]["post"]
    assert operation["operationId"] == "predict_predict_post"
    assert [(p["name"], p["in"], p.get("required", False)) for p in operation["parameters"]] == [
        ("normalize", "query", False),
        ("threshold", "query", False),
        ("queue", "query", False),
        ("version", "query", False),
        ("label", "query", False),
        # Read by the route itself, not declared to FastAPI: a declared header would take
        # every request off the short cut.
        ("X-Client-Ref", "header", False),
    ]
    assert operation["security"] == [{"APIKeyHeader": []}]
    assert {"200", "400", "401", "404", "413", "415", "422", "503"} <= set(operation["responses"])
    assert "multipart/form-data" in operation["requestBody"]["content"]
