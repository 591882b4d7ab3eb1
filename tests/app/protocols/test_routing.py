"""Routes registered from a table (app.protocols.routing): each path its own explicit operation.

A verb is written once and registered at the model's, a version's and a label's path. What a
client generator reads must still be one operation per path with its own id, summary and path
parameters, and the verb's description, body, answer and errors, as a decorated function gives.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from fastapi import APIRouter, FastAPI, Request
from fastapi.testclient import TestClient
from pydantic import BaseModel

from app.main import create_app
from app.protocols.common import ModelRef
from app.protocols.routing import Operation, Verb, add_routes
from tests.app.conftest import make_settings

# The operations the two protocol routers register from their tables: (method, path) -> the
# endpoint name FastAPI makes the operationId from. These ids are the public contract of a
# generated client: they must never change.
TABLE_OPERATIONS = {
    ("get", "/v1/models/{model_name}"): "model_status",
    ("get", "/v1/models/{model_name}/versions/{version}"): "version_status",
    ("get", "/v1/models/{model_name}/labels/{label}"): "label_status",
    ("get", "/v1/models/{model_name}/metadata"): "model_metadata",
    ("get", "/v1/models/{model_name}/versions/{version}/metadata"): "version_metadata",
    ("get", "/v1/models/{model_name}/labels/{label}/metadata"): "label_metadata",
    ("post", "/v1/models/{model_name}:predict"): "predict",
    ("post", "/v1/models/{model_name}/versions/{version}:predict"): "predict_version",
    ("post", "/v1/models/{model_name}/labels/{label}:predict"): "predict_label",
    ("get", "/v2/models/{model_name}"): "get_model_metadata",
    ("get", "/v2/models/{model_name}/versions/{version}"): "get_version_metadata",
    ("get", "/v2/models/{model_name}/ready"): "model_ready",
    ("get", "/v2/models/{model_name}/versions/{version}/ready"): "version_ready",
    ("post", "/v2/models/{model_name}/infer"): "infer",
    ("post", "/v2/models/{model_name}/versions/{version}/infer"): "infer_version",
}
# Each verb's paths, by what they differ in: the model's, a version's, a label's.
VERBS = {
    "TF Serving status": ["model_status", "version_status", "label_status"],
    "TF Serving metadata": ["model_metadata", "version_metadata", "label_metadata"],
    "TF Serving predict": ["predict", "predict_version", "predict_label"],
    "v2 metadata": ["get_model_metadata", "get_version_metadata"],
    "v2 ready": ["model_ready", "version_ready"],
    "v2 infer": ["infer", "infer_version"],
}
INFERENCE = {"predict", "predict_version", "predict_label", "infer", "infer_version"}


def openapi_of(tmp_path: Path, **settings: Any) -> dict[str, Any]:
    """The app's OpenAPI document (no lifespan needed to build it)."""
    document: dict[str, Any] = create_app(make_settings(tmp_path, **settings)).openapi()
    return document


def operations_by_name(document: dict[str, Any]) -> dict[str, tuple[str, str, dict[str, Any]]]:
    by_name: dict[str, tuple[str, str, dict[str, Any]]] = {}
    for (method, path), name in TABLE_OPERATIONS.items():
        by_name[name] = (method, path, document["paths"][path][method])
    return by_name


def test_each_path_is_an_operation_with_its_own_id_and_summary(tmp_path: Path) -> None:
    document = openapi_of(tmp_path)
    summaries = set()
    for (method, path), name in TABLE_OPERATIONS.items():
        operation = document["paths"][path][method]
        # FastAPI's unique id: the endpoint's name, the path with non-word characters as "_",
        # and the method.
        flat_path = re.sub(r"\W", "_", path)
        assert operation["operationId"] == f"{name}{flat_path}_{method}"
        summaries.add(operation["summary"])
    assert len(summaries) == len(TABLE_OPERATIONS), "every path says which version it names"


@pytest.mark.parametrize("names", VERBS.values(), ids=VERBS.keys())
def test_the_paths_of_one_verb_document_the_same_verb(tmp_path: Path, names: list[str]) -> None:
    by_name = operations_by_name(openapi_of(tmp_path))
    operations = [by_name[name][2] for name in names]
    first = operations[0]
    assert len(first["description"]) > 40
    for operation in operations[1:]:
        assert operation["description"] == first["description"]
        assert operation["tags"] == first["tags"]
        assert operation.get("requestBody") == first.get("requestBody")
        assert operation["responses"]["200"] == first["responses"]["200"]
    ok = first["responses"]["200"]["content"]["application/json"]["schema"]
    assert "$ref" in ok, "a response model"


def test_path_parameters_are_documented_per_path(tmp_path: Path) -> None:
    for method, path, operation in operations_by_name(openapi_of(tmp_path)).values():
        parameters = {p["name"]: p for p in operation.get("parameters", []) if p["in"] == "path"}
        assert list(parameters) == re.findall(r"\{(\w+)\}", path), path
        for parameter in parameters.values():
            assert parameter["required"] is True
            assert parameter["schema"]["type"] == "string"
            assert parameter["description"], (method, path, parameter["name"])
            assert parameter["schema"]["examples"], (method, path, parameter["name"])
        assert parameters["model_name"]["schema"]["examples"] == ["mnist"]


def test_errors_are_documented_as_each_table_says(tmp_path: Path) -> None:
    by_name = operations_by_name(openapi_of(tmp_path))

    def errors(name: str) -> set[str]:
        return {s for s in by_name[name][2]["responses"] if s[0] in "45" and s[1:] != "XX"}

    # A status request names no version: no 503 for it, only for a label, which is resolved.
    assert errors("model_status") == errors("version_status") == {"404", "413"}
    assert errors("label_status") == {"404", "413", "503"}
    for name in ("model_metadata", "label_metadata", "get_version_metadata", "version_ready"):
        assert errors(name) == {"404", "413", "503"}, name
    assert errors("predict_label") == {"400", "401", "404", "413", "503"}
    assert errors("infer_version") == {"400", "401", "404", "413", "415", "503"}
    for name in INFERENCE:
        schema = by_name[name][2]["responses"]["400"]["content"]["application/json"]["schema"]
        assert schema["$ref"].endswith("/ProtocolErrorResponse"), name


def test_only_inference_asks_for_the_api_key(tmp_path: Path) -> None:
    document = openapi_of(tmp_path, api_key="k")
    for name, (_, path, operation) in operations_by_name(document).items():
        expected = [{"APIKeyHeader": []}] if name in INFERENCE else None
        assert operation.get("security") == expected, path
    # The same scheme as the service's own routes: one in the document.
    assert list(document["components"]["securitySchemes"]) == ["APIKeyHeader"]
    assert document["paths"]["/predict"]["post"]["security"] == [{"APIKeyHeader": []}]


# --- the table machinery on a router of its own -----------------------------------------------


class Echo(BaseModel):
    name: str
    version: str | None
    label: str | None


async def echo(request: Request, ref: ModelRef) -> Echo:
    return Echo(name=ref.name, version=ref.version, label=ref.label)


def test_each_path_hands_the_handler_the_model_it_names() -> None:
    router = APIRouter(prefix="/m")
    add_routes(
        router,
        Verb("GET", ":echo", echo, "Echo the model a path names, for this test.", Echo, (404,)),
        [
            Operation("model", "echo_model", "Echo: the model"),
            Operation("version", "echo_version", "Echo: one version"),
            Operation("label", "echo_label", "Echo: a label", (404, 503)),
        ],
        base="/base",
    )
    app = FastAPI()
    app.include_router(router)
    client = TestClient(app)
    assert client.get("/m/base/a:echo").json() == {"name": "a", "version": None, "label": None}
    assert client.get("/m/base/a/versions/7:echo").json() == {
        "name": "a",
        "version": "7",
        "label": None,
    }
    assert client.get("/m/base/a/labels/stable:echo").json() == {
        "name": "a",
        "version": None,
        "label": "stable",
    }
    paths = app.openapi()["paths"]
    assert list(paths) == [
        "/m/base/{model_name}:echo",
        "/m/base/{model_name}/versions/{version}:echo",
        "/m/base/{model_name}/labels/{label}:echo",
    ]
    label = paths["/m/base/{model_name}/labels/{label}:echo"]["get"]
    assert label["summary"] == "Echo: a label"
    assert label["operationId"].startswith("echo_label_")
    assert "503" in label["responses"]
    assert "503" not in paths["/m/base/{model_name}:echo"]["get"]["responses"]
