"""One API-key check (app.core.security) behind every door: HTTP header and gRPC metadata alike.

The check itself is tested here without an app, and through the three protocol doors, which
must give the same verdict with the same message (only where the key belongs differs).
"""

from __future__ import annotations

import json
from typing import Any

import grpc
import pytest
from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.testclient import TestClient
from PIL import Image
from pydantic import SecretStr
from tritonclient.grpc import service_pb2

import app.core.security as security
from app.core.errors import ApiError
from app.core.security import (
    API_KEY_HEADER,
    api_key_dependency,
    check_api_key,
    check_api_key_values,
    key_matches,
    passes_api_key,
)
from tests.app.conftest import encode
from tests.app.protocols.conftest import KEY, Doors

EMPTY = [[0] * 28 for _ in range(28)]


# --- the check ---------------------------------------------------------------------------------


def test_no_configured_key_lets_everything_through() -> None:
    check_api_key(None, None, "header")
    check_api_key("anything", None, "header")


@pytest.mark.parametrize(
    ("given", "code", "message"),
    [
        (None, "missing_api_key", "This service requires an API key: send it in the where."),
        ("wrong", "invalid_api_key", "The API key in the where is not valid."),
        (KEY + "x", "invalid_api_key", "The API key in the where is not valid."),
        (KEY[:-1], "invalid_api_key", "The API key in the where is not valid."),
    ],
)
def test_a_missing_or_wrong_key_is_a_401(given: str | None, code: str, message: str) -> None:
    with pytest.raises(ApiError) as refused:
        check_api_key(given, SecretStr(KEY), "where")
    assert (refused.value.status_code, refused.value.code) == (401, code)
    assert refused.value.message == message


@pytest.mark.parametrize(
    "values",
    [[KEY, KEY], [KEY, "wrong"], ["wrong", KEY], ["", KEY], [KEY, KEY, KEY]],
    ids=["twice", "right first", "right last", "empty first", "thrice"],
)
def test_a_key_sent_more_than_once_is_refused(values: list[str]) -> None:
    with pytest.raises(ApiError) as refused:
        check_api_key_values(values, SecretStr(KEY), "where")
    assert (refused.value.status_code, refused.value.code) == (401, "invalid_api_key")
    assert refused.value.message == (
        f"The where was sent {len(values)} times: send exactly one API key."
    )
    assert not passes_api_key(values, SecretStr(KEY))
    check_api_key_values(values, None, "where")  # no key configured: nothing is checked
    assert passes_api_key(values, None)


def test_one_value_is_checked_as_the_key() -> None:
    check_api_key_values([KEY], SecretStr(KEY), "where")
    assert passes_api_key([KEY], SecretStr(KEY))
    missing, wrong = "missing_api_key", "invalid_api_key"
    for values, code in (([], missing), ([""], missing), (["no"], wrong)):
        with pytest.raises(ApiError) as refused:
            check_api_key_values(values, SecretStr(KEY), "where")
        assert refused.value.code == code
        assert not passes_api_key(values, SecretStr(KEY))


def test_the_right_key_passes() -> None:
    check_api_key(KEY, SecretStr(KEY), "where")
    assert key_matches("ключ", SecretStr("ключ"))
    assert not key_matches("ключ", SecretStr("ключи"))


def test_keys_are_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """The comparison is secrets.compare_digest's, never ``==`` (whose time leaks the prefix)."""
    calls: list[tuple[bytes, bytes]] = []

    def compare_digest(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return a == b

    monkeypatch.setattr(security.secrets, "compare_digest", compare_digest)
    assert key_matches("abc", SecretStr("abc"))
    assert calls == [(b"abc", b"abc")]


def test_the_dependency_reads_the_key_through_the_function_it_is_given() -> None:
    """Core knows no settings: the app says where its key is."""
    app = FastAPI()
    app.state.key = SecretStr(KEY)

    def expected(request: Request) -> SecretStr | None:
        key: SecretStr | None = request.app.state.key
        return key

    @app.exception_handler(ApiError)
    async def as_json(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status_code)

    @app.get("/guarded", dependencies=[Depends(api_key_dependency(expected))])
    async def guarded() -> dict[str, bool]:
        return {"ok": True}

    client = TestClient(app)
    assert client.get("/guarded").json()["error"]["code"] == "missing_api_key"
    assert client.get("/guarded", headers={API_KEY_HEADER: ""}).status_code == 401
    assert client.get("/guarded", headers={API_KEY_HEADER: "no"}).json()["error"]["code"] == (
        "invalid_api_key"
    )
    assert client.get("/guarded", headers={API_KEY_HEADER: KEY}).json() == {"ok": True}
    app.state.key = None
    assert client.get("/guarded").json() == {"ok": True}


# --- the doors ---------------------------------------------------------------------------------


Headers = dict[str, str] | list[tuple[str, str]]


def tfserving(doors: Doors, headers: Headers) -> tuple[int, str]:
    response = doors.rest.post(
        "/v1/models/mnist:predict", json={"instances": [EMPTY]}, headers=headers
    )
    return response.status_code, response.json().get("error", "")


def v2_rest(doors: Doors, headers: Headers) -> tuple[int, str]:
    body = {
        "inputs": [{"name": "images", "datatype": "UINT8", "shape": [1, 28, 28], "data": EMPTY}]
    }
    response = doors.rest.post("/v2/models/mnist/infer", content=json.dumps(body), headers=headers)
    return response.status_code, response.json().get("error", "")


def v2_grpc(doors: Doors, headers: Headers) -> tuple[Any, str]:
    request = service_pb2.ModelInferRequest(model_name="mnist")
    request.inputs.add(name="images", datatype="UINT8", shape=[1, 28, 28])
    request.raw_input_contents.append(bytes(784))
    pairs = headers.items() if isinstance(headers, dict) else headers
    metadata = tuple((name.lower(), value) for name, value in pairs)
    try:
        doors.grpc.ModelInfer(request, metadata=metadata)
    except grpc.RpcError as error:
        return error.code(), error.details()
    return grpc.StatusCode.OK, ""


@pytest.mark.parametrize(
    ("headers", "code"),
    [({}, "missing_api_key"), ({API_KEY_HEADER: "wrong"}, "invalid_api_key")],
    ids=["missing", "wrong"],
)
def test_every_door_refuses_the_same_way(doors: Doors, headers: dict[str, str], code: str) -> None:
    with pytest.raises(ApiError) as expected:
        check_api_key(headers.get(API_KEY_HEADER), SecretStr(KEY), f"{API_KEY_HEADER} header")
    assert expected.value.code == code
    http = expected.value.message
    assert tfserving(doors, headers) == (401, http)
    assert v2_rest(doors, headers) == (401, http)
    grpc_message = http.replace("X-API-Key header", "x-api-key metadata")
    assert v2_grpc(doors, headers) == (grpc.StatusCode.UNAUTHENTICATED, grpc_message)


def test_every_door_lets_the_right_key_through(doors: Doors) -> None:
    headers = {API_KEY_HEADER: KEY}
    assert tfserving(doors, headers)[0] == 200
    assert v2_rest(doors, headers)[0] == 200
    assert v2_grpc(doors, headers)[0] == grpc.StatusCode.OK


def model_route(doors: Doors, headers: Headers) -> tuple[int, str]:
    """The service's own API: ``GET /model`` needs the key too (in the service's error shape)."""
    response = doors.rest.get("/model", headers=headers)
    error = response.json().get("error", {}) if response.status_code != 200 else {}
    return response.status_code, error.get("message", "")


@pytest.mark.parametrize(
    "values",
    [[KEY, KEY], [KEY, "wrong"], ["wrong", KEY]],
    ids=["twice", "right first", "right last"],
)
def test_every_door_refuses_a_key_sent_twice(doors: Doors, values: list[str]) -> None:
    """One rule: HTTP read the first value and gRPC the last, so each let a different pair in."""
    headers = [(API_KEY_HEADER, value) for value in values]
    http = "The X-API-Key header was sent 2 times: send exactly one API key."
    assert tfserving(doors, headers) == (401, http)
    assert v2_rest(doors, headers) == (401, http)
    assert model_route(doors, headers) == (401, http)
    grpc_message = "The x-api-key metadata was sent 2 times: send exactly one API key."
    assert v2_grpc(doors, headers) == (grpc.StatusCode.UNAUTHENTICATED, grpc_message)


def test_predicts_short_cut_refuses_a_key_sent_twice(doors: Doors) -> None:
    one = Image.new("L", (28, 28))
    one.paste(255, (12, 4, 16, 24))  # white ink on black: a "1"
    response = doors.rest.post(
        "/predict",
        files={"file": ("d.png", encode(one), "image/png")},
        headers=[(API_KEY_HEADER, KEY), (API_KEY_HEADER, "wrong")],
    )
    assert response.status_code == 401, response.text  # today: 200, the key let through
