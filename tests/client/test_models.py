"""The client's models are the service's answers: checked against its OpenAPI document.

For every endpoint the client calls, the schema of its 200 answer in ``/openapi.json`` and the
JSON schema of the client's model are reduced to their shape (field names, types, which fields
are required and which may be null, nested objects compared the same way) and must be equal; so
must the error shape, the multipart field, the raw and JSON bodies and the query parameters the
client sends. A field added, renamed or retyped on either side fails here.

The review queue's routes and the fields they add to the readings are compared like every other.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from digits_client import calls
from digits_client.endpoints import (
    ENDPOINTS,
    RAW_IMAGE_TYPES,
    RAW_OTHER_TYPE,
    REVIEW_CLAIM,
    REVIEW_SUBMIT,
    Empty,
    Endpoint,
)
from digits_client.models import DigitPrediction, ErrorAnswer, Prediction
from pydantic import BaseModel, create_model

from app.main import create_app
from app.settings import Settings

Schema = dict[str, Any]

#: The JSON bodies the client sends, every form of them.
JSON_BODIES = {
    REVIEW_CLAIM: [calls.claim_review("alice"), calls.claim_review("alice", kind="audit")],
    REVIEW_SUBMIT: [
        calls.submit_review("id", lease="token", reviewer="alice", digits="75011"),
        calls.submit_review("id", lease="token", reviewer="alice", corrections={2: 7}),
        calls.submit_review("id", lease="token", reviewer="alice", verdict="unreadable"),
    ],
}


@pytest.fixture(scope="module")
def openapi() -> Schema:
    """The service's OpenAPI document (the app is built, not started)."""
    document: Schema = create_app(Settings()).openapi()
    return document


def shape(schema: Schema, definitions: Schema) -> Any:
    """What a JSON schema says of the data's structure, without titles, examples or bounds."""
    if "$ref" in schema:
        return shape(definitions[schema["$ref"].rsplit("/", 1)[-1]], definitions)
    if "allOf" in schema and len(schema["allOf"]) == 1:
        return shape(schema["allOf"][0], definitions)
    if "anyOf" in schema:
        options = [shape(option, definitions) for option in schema["anyOf"]]
        if "null" in options and len(options) == 2:
            return ("nullable", next(option for option in options if option != "null"))
        return ("any of", sorted(map(repr, options)))
    kind = schema.get("type")
    if kind == "object" and "properties" in schema:
        required = set(schema.get("required", []))
        return (
            "object",
            {
                name: (shape(field, definitions), name in required)
                for name, field in schema["properties"].items()
            },
        )
    if kind == "object":
        values = schema.get("additionalProperties", True)
        return ("map", shape(values, definitions) if isinstance(values, dict) else "any")
    if kind == "array":
        return ("array", shape(schema.get("items", {}), definitions))
    if kind == "string":
        return ("string", schema.get("format"))  # an enum of the service is a str here
    if kind in ("integer", "number", "boolean", "null"):
        return kind
    assert not kind, f"a schema type this test does not know: {schema}"
    return "any"


def client_shape(model: type[BaseModel]) -> Any:
    schema = model.model_json_schema()
    return shape(schema, schema.get("$defs", {}))


def differences(mine: Any, theirs: Any, where: str = "") -> list[str]:
    """Where two shapes differ, as readable paths."""
    if (
        isinstance(mine, tuple)
        and isinstance(theirs, tuple)
        and mine[:1] == theirs[:1] == ("object",)
    ):
        found = []
        for name in sorted(set(mine[1]) | set(theirs[1])):
            if name not in theirs[1]:
                found.append(f"{where}.{name}: only in the client")
            elif name not in mine[1]:
                found.append(f"{where}.{name}: only in the service")
            else:
                (mine_field, mine_required), (their_field, their_required) = (
                    mine[1][name],
                    theirs[1][name],
                )
                if mine_required != their_required:
                    found.append(f"{where}.{name}: required {mine_required} vs {their_required}")
                found += differences(mine_field, their_field, f"{where}.{name}")
        return found
    if isinstance(mine, tuple) and isinstance(theirs, tuple) and mine[0] == theirs[0]:
        return [
            f for a, b in zip(mine[1:], theirs[1:], strict=True) for f in differences(a, b, where)
        ]
    return [] if mine == theirs else [f"{where or '.'}: {mine!r} vs {theirs!r}"]


def template(path: str) -> str:
    """A path with its parameters unnamed: ``/reviews/{id}`` and ``/reviews/{review_id}`` match."""
    return re.sub(r"\{[^}]*\}", "{}", path)


def operation(openapi: Schema, endpoint: Endpoint[Any]) -> Schema:
    paths = {template(path): item for path, item in openapi["paths"].items()}
    path = paths.get(template(endpoint.path))
    assert path is not None, f"the service has no {endpoint.path}"
    found: Schema = path[endpoint.method.lower()]
    return found


@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=lambda e: f"{e.method} {e.path}")
def test_each_answer_model_is_the_services_schema(openapi: Schema, endpoint: Endpoint[Any]) -> None:
    responses = operation(openapi, endpoint)["responses"]
    model = endpoint.answer.model
    if model is None:
        # A file (the review image) or nothing (204): no JSON to compare.
        assert ("204" if isinstance(endpoint.answer, Empty) else "200") in responses
        return
    schema = responses["200"]["content"]["application/json"]
    theirs = shape(schema["schema"], openapi["components"]["schemas"])
    assert differences(client_shape(model), theirs) == []


@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=lambda e: f"{e.method} {e.path}")
def test_each_endpoint_takes_the_files_and_query_the_client_sends(
    openapi: Schema, endpoint: Endpoint[Any]
) -> None:
    found = operation(openapi, endpoint)
    parameters = {p["name"] for p in found.get("parameters", []) if p["in"] == "query"}
    assert set(endpoint.query) <= parameters
    if endpoint.json_body:
        schemas = openapi["components"]["schemas"]
        body = found["requestBody"]["content"]["application/json"]["schema"]
        fields = shape(body, schemas)[1]
        for call in JSON_BODIES[endpoint]:
            assert call.json is not None
            assert set(call.json) <= set(fields), f"the service takes {sorted(fields)}"
        return
    if endpoint.upload_field is None:
        assert "requestBody" not in found
        return
    if endpoint.raw_body:
        # The image alone as the body, in each content type the client sends it as.
        raw = set(found["requestBody"]["content"])
        assert {*RAW_IMAGE_TYPES, RAW_OTHER_TYPE} <= raw
    body = found["requestBody"]["content"]["multipart/form-data"]["schema"]
    form = shape(body, openapi["components"]["schemas"])
    assert endpoint.upload_field in form[1]
    # Required in the form, or (where the image may be the body instead) the body is required.
    required = form[1][endpoint.upload_field][1] or found["requestBody"].get("required", False)
    assert required, "the file field is required"


def test_the_error_shape_is_the_services(openapi: Schema) -> None:
    schemas = openapi["components"]["schemas"]
    theirs = shape(schemas["ErrorResponse"], schemas)
    assert differences(client_shape(ErrorAnswer), theirs) == []


def test_the_batch_items_prediction_is_predict_without_the_version(openapi: Schema) -> None:
    schemas = openapi["components"]["schemas"]
    found = differences(client_shape(DigitPrediction), shape(schemas["DigitPrediction"], schemas))
    assert found == []
    assert set(Prediction.model_fields) - set(DigitPrediction.model_fields) == {"model_version"}


def test_a_drifted_model_is_caught(openapi: Schema) -> None:
    schemas = openapi["components"]["schemas"]
    theirs = shape(schemas["PredictResponse"], schemas)
    renamed = create_model(
        "Renamed",
        __base__=DigitPrediction,
        version=(int, ...),
    )
    retyped = create_model("Retyped", __base__=Prediction, digit=(str, ...))
    optional = create_model("Optional", __base__=Prediction, model_version=(int | None, None))
    assert differences(client_shape(renamed), theirs) == [
        ".model_version: only in the service",
        ".version: only in the client",
    ]
    assert differences(client_shape(retyped), theirs) == [".digit: ('string', None) vs 'integer'"]
    assert differences(client_shape(optional), theirs) == [
        ".model_version: required False vs True",
        ".model_version: ('nullable', 'integer') vs 'integer'",
    ]
