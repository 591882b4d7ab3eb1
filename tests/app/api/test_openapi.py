"""The OpenAPI document: complete for people, and true to what the service answers."""

from __future__ import annotations

from collections.abc import Iterator
from importlib import metadata
from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from app.main import create_app
from app.reading.review import ReasonCode
from tests.app.conftest import ModelsDir, make_settings

OUR_PATHS = {"/predict", "/predict/batch", "/model", "/metrics", "/health/live", "/health/ready"}


@pytest.fixture
def running_app(models: ModelsDir) -> Iterator[FastAPI]:
    """An app whose lifespan has run (model loaded, worker started)."""
    models.add(1, digit=1)
    app = create_app(make_settings(models.path, max_batch_size=8))
    with TestClient(app):
        yield app


def test_api_conforms_to_its_schema(running_app: FastAPI) -> None:
    """Schemathesis finds no 5xx and no answer outside the documented statuses and schemas.

    Random bytes are valid for a binary file field, yet no image: the service rightly refuses
    them with a documented 4xx, so "schema-valid data must be accepted" does not apply.
    """
    api = schemathesis.openapi.from_asgi("/openapi.json", running_app)
    operations = [result.ok() for result in api.get_all_operations()]
    labels = {op.label for op in operations}
    assert {"POST /predict", "POST /predict/batch", "GET /metrics", "GET /model"} <= labels

    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=25,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def check(case: Any) -> None:
            case.call_and_validate(excluded_checks=[positive_data_acceptance])

        check()


@pytest.fixture
def openapi(client: TestClient) -> dict[str, Any]:
    response = client.get("/openapi.json")
    assert response.status_code == 200
    return response.json()  # type: ignore[no-any-return]


def test_every_endpoint_is_documented(openapi: dict[str, Any]) -> None:
    assert set(openapi["paths"]) >= OUR_PATHS
    for path in OUR_PATHS:
        for method, operation in openapi["paths"][path].items():
            where = f"{method.upper()} {path}"
            assert operation.get("summary"), where
            assert len(operation.get("description", "")) > 40, where
            assert operation.get("tags"), where
            ok = operation["responses"]["200"]["content"]["application/json"]["schema"]
            assert "$ref" in ok, f"{where} has a response model"


def test_errors_are_documented_with_the_one_error_shape(openapi: dict[str, Any]) -> None:
    expected = {
        "/predict": {"400", "401", "413", "415", "422", "503"},
        "/predict/batch": {"400", "401", "413", "422", "503"},
        "/health/ready": {"503"},
    }
    for path, statuses in expected.items():
        responses = openapi["paths"][path][next(iter(openapi["paths"][path]))]["responses"]
        assert statuses <= set(responses), path
        for status in statuses:
            ref = responses[status]["content"]["application/json"]["schema"]["$ref"]
            assert ref.endswith("/ErrorResponse"), (path, status)
    # FastAPI's own validation-error shape is replaced by ours everywhere.
    assert "HTTPValidationError" not in openapi["components"]["schemas"]


def test_examples_and_parameters_are_documented(openapi: dict[str, Any]) -> None:
    schemas = openapi["components"]["schemas"]
    assert schemas["PredictResponse"]["examples"][0]["digit"] == 7
    assert schemas["BatchResponse"]["examples"]
    predict = openapi["paths"]["/predict"]["post"]
    [normalize] = [p for p in predict["parameters"] if p["name"] == "normalize"]
    assert "auto" in normalize["description"]
    assert normalize["schema"]["enum"] == ["auto", "always", "never"]
    body = predict["requestBody"]["content"]["multipart/form-data"]["schema"]["$ref"]
    form = schemas[body.rsplit("/", 1)[1]]
    # The field is optional in the form: the image may be the body itself instead.
    assert set(form["properties"]) == {"file"}
    assert predict["requestBody"]["required"] is True
    assert predict["requestBody"]["content"]["image/png"]["schema"]["format"] == "binary"
    # No key configured for this app: the document must not claim one is needed.
    assert "securitySchemes" not in openapi.get("components", {})
    assert "security" not in predict
    metrics_content = openapi["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    assert {"application/json", "text/plain", "application/openmetrics-text"} <= set(
        metrics_content
    )


def test_docs_page_is_served(client: TestClient) -> None:
    response = client.get("/docs")
    assert response.status_code == 200
    assert "swagger" in response.text.lower()


def test_api_key_is_documented_when_configured(models: ModelsDir) -> None:
    models.add(1, digit=1)
    with TestClient(create_app(make_settings(models.path, api_key="k"))) as client:
        openapi = client.get("/openapi.json").json()
    assert openapi["components"]["securitySchemes"]["APIKeyHeader"]["name"] == "X-API-Key"
    assert openapi["paths"]["/predict"]["post"]["security"] == [{"APIKeyHeader": []}]
    assert openapi["paths"]["/model"]["get"]["security"] == [{"APIKeyHeader": []}]
    for path in ("/metrics", "/health/live", "/health/ready"):
        assert "security" not in openapi["paths"][path]["get"], path


def test_review_reasons_are_documented_as_codes(openapi: dict[str, Any]) -> None:
    schemas = openapi["components"]["schemas"]
    reasons = schemas["RecognizeResponse"]["properties"]["review_reasons"]
    assert reasons["items"] == {"$ref": "#/components/schemas/ReviewReason"}
    reason = schemas["ReviewReason"]
    assert set(reason["required"]) == {"code", "message"}
    code = reason["properties"]["code"]
    enum = schemas[code["$ref"].rsplit("/", 1)[1]]["enum"] if "$ref" in code else code["enum"]
    assert enum == [c.value for c in ReasonCode]
    # Every code is explained to the reader of the document.
    described = reason["properties"]["code"].get("description") or schemas[
        code["$ref"].rsplit("/", 1)[1]
    ].get("description", "")
    for value in enum:
        assert f"`{value}`" in described, value


def test_the_document_reads_in_the_order_a_user_needs(openapi: dict[str, Any]) -> None:
    # One version number: the package's.
    assert openapi["info"]["version"] == metadata.version("mnist-digits")
    tags = [tag["name"] for tag in openapi["tags"]]
    assert tags[:5] == ["predict", "recognize", "model", "metrics", "health"]
    used = {tag for ops in openapi["paths"].values() for op in ops.values() for tag in op["tags"]}
    assert used <= set(tags), used - set(tags)
    assert all(tag.get("description") for tag in openapi["tags"])
    # Every schema has a name a person chose, none generated from an operation id.
    generated = [name for name in openapi["components"]["schemas"] if name.startswith("Body_")]
    assert generated == []
    upload = openapi["paths"]["/predict/batch"]["post"]["requestBody"]["content"]
    assert upload["multipart/form-data"]["schema"] == {"$ref": "#/components/schemas/BatchUpload"}
