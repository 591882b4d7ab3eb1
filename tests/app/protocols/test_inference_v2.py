"""The Open Inference Protocol (KServe v2) over REST, request by request as the spec writes them.

JSON tensors and the binary tensor data extension are built here by hand from the protocol's
documents (the real ``tritonclient`` drives a real server in tests/ops/test_protocols.py). With
the committed model and MNIST's test images, the outputs must be the SavedModel signature's own.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from fastapi.testclient import TestClient
from tritonclient.grpc import service_pb2, service_pb2_grpc

from app.main import create_app
from harness.servers import free_port
from tests.app.conftest import ModelsDir, make_settings

MNIST = tuple[np.ndarray, np.ndarray]
COUNT = 32
HEADER = "Inference-Header-Content-Length"
EMPTY_IMAGE = [[0] * 28 for _ in range(28)]


@pytest.fixture(scope="module")
def signature_answers(
    bundled_model_dir: Path, mnist_test: MNIST
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """MNIST test images and the SavedModel's own answers on them: (images, probs, digits)."""
    import tensorflow as tf

    signature = tf.saved_model.load(str(bundled_model_dir)).signatures["serving_default"]
    images = mnist_test[0][:COUNT]
    result = signature(images=tf.constant(images))
    return images, np.asarray(result["probabilities"]), np.asarray(result["digit"])


def images_input(images: np.ndarray, **extra: Any) -> dict[str, Any]:
    """The ``images`` input tensor with its data as a flat JSON list."""
    return {
        "name": "images",
        "shape": list(images.shape),
        "datatype": "UINT8",
        "data": images.reshape(-1).tolist(),
        **extra,
    }


def assert_v2_error(response: Any, status: int, *words: str) -> None:
    """The protocol's error shape: ``{"error": "<message>"}`` with the expected status."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}, body
    assert isinstance(body["error"], str), body
    for word in words:
        assert word in body["error"], body


def split_binary(response: Any) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """A binary-extension answer: its JSON and each binary output as an array."""
    length = int(response.headers[HEADER])
    answer = json.loads(response.content[:length])
    dtypes = {"FP32": "<f4", "INT64": "<i8"}
    arrays: dict[str, np.ndarray] = {}
    offset = length
    for output in answer["outputs"]:
        size = output["parameters"]["binary_data_size"]
        chunk = response.content[offset : offset + size]
        arrays[output["name"]] = np.frombuffer(chunk, dtypes[output["datatype"]]).reshape(
            output["shape"]
        )
        offset += size
    assert offset == len(response.content), "nothing may follow the last output"
    return answer, arrays


# --- health and metadata ---------------------------------------------------------------------


def test_server_health_and_metadata(client: TestClient) -> None:
    assert client.get("/v2/health/live").json() == {"live": True}
    ready = client.get("/v2/health/ready")
    assert (ready.status_code, ready.json()) == (200, {"ready": True})
    server = client.get("/v2").json()
    assert server["name"]
    assert server["version"]
    assert "binary_tensor_data" in server["extensions"]


def test_model_metadata_and_readiness(client: TestClient) -> None:
    expected = {
        "name": "mnist",
        "versions": ["1"],
        "platform": "tensorflow_savedmodel",
        "inputs": [{"name": "images", "datatype": "UINT8", "shape": [-1, 28, 28]}],
        "outputs": [
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]},
            {"name": "digit", "datatype": "INT64", "shape": [-1]},
        ],
    }
    assert client.get("/v2/models/mnist").json() == expected
    assert client.get("/v2/models/mnist/versions/1").json() == expected
    for path in ("/v2/models/mnist/ready", "/v2/models/mnist/versions/1/ready"):
        response = client.get(path)
        assert (response.status_code, response.json()) == (200, {"name": "mnist", "ready": True})


@pytest.mark.parametrize(
    "path",
    [
        "/v2/models/mnist/versions/2",
        "/v2/models/mnist/versions/2/ready",
        "/v2/models/mnist/versions/one",
        "/v2/models/fashion",
        "/v2/models/fashion/ready",
    ],
)
def test_unknown_model_or_version_is_404(client: TestClient, path: str) -> None:
    assert_v2_error(client.get(path), 404)


def test_nothing_is_ready_while_no_version_is_loaded(models: ModelsDir) -> None:
    with TestClient(create_app(make_settings(models.path))) as client:
        assert client.get("/v2/health/live").status_code == 200
        ready = client.get("/v2/health/ready")
        assert (ready.status_code, ready.json()) == (503, {"ready": False})
        assert_v2_error(client.get("/v2/models/mnist/ready"), 503)
        infer = client.post(
            "/v2/models/mnist/infer",
            json={"inputs": [images_input(np.zeros((1, 28, 28), np.uint8))]},
        )
        assert_v2_error(infer, 503)


# --- infer: JSON tensors ---------------------------------------------------------------------


def test_json_infer_answers_the_signatures_output(
    bundled_client: TestClient, signature_answers: tuple[np.ndarray, np.ndarray, np.ndarray]
) -> None:
    images, probabilities, digits = signature_answers
    body = {"id": "req-7", "inputs": [images_input(images)]}
    response = bundled_client.post("/v2/models/mnist/infer", json=body)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    assert HEADER not in response.headers
    answer = response.json()
    assert answer["model_name"] == "mnist"
    assert answer["model_version"] == str(bundled_client.get("/model").json()["version"])
    assert answer["id"] == "req-7"
    outputs = {o["name"]: o for o in answer["outputs"]}
    assert [o["name"] for o in answer["outputs"]] == ["probabilities", "digit"]
    assert (outputs["probabilities"]["datatype"], outputs["probabilities"]["shape"]) == (
        "FP32",
        [COUNT, 10],
    )
    assert (outputs["digit"]["datatype"], outputs["digit"]["shape"]) == ("INT64", [COUNT])
    np.testing.assert_array_equal(outputs["digit"]["data"], digits)
    got = np.asarray(outputs["probabilities"]["data"], np.float32).reshape(COUNT, 10)
    # The service runs the same graph as a session callable, which may sum in another order:
    # app.serving.store serves it only when it agrees with the eager call to within 1e-5.
    np.testing.assert_allclose(got, probabilities, rtol=0, atol=1e-5)


def test_nested_data_and_a_chosen_output(client: TestClient) -> None:
    images = np.zeros((2, 28, 28), np.uint8)
    tensor = images_input(images)
    tensor["data"] = images.tolist()
    body = {"inputs": [tensor], "outputs": [{"name": "digit"}]}
    answer = client.post("/v2/models/mnist/versions/1/infer", json=body).json()
    assert "id" not in answer
    assert answer["model_version"] == "1"
    assert answer["outputs"] == [
        {"name": "digit", "datatype": "INT64", "shape": [2], "data": [1, 1]}
    ]


# --- infer: the binary tensor data extension -------------------------------------------------


def binary_request(
    images: np.ndarray, parameters: dict[str, Any] | None = None, outputs: Any = None
) -> tuple[bytes, dict[str, str]]:
    """A request as the extension defines it: JSON, then the raw input bytes."""
    raw = images.astype(np.uint8).tobytes()
    tensor = {
        "name": "images",
        "shape": list(images.shape),
        "datatype": "UINT8",
        "parameters": {"binary_data_size": len(raw)},
    }
    request: dict[str, Any] = {"inputs": [tensor]}
    if parameters is not None:
        request["parameters"] = parameters
    if outputs is not None:
        request["outputs"] = outputs
    header = json.dumps(request).encode()
    return header + raw, {HEADER: str(len(header)), "Content-Type": "application/octet-stream"}


def test_binary_input_and_outputs_answer_the_signatures_output(
    bundled_client: TestClient, signature_answers: tuple[np.ndarray, np.ndarray, np.ndarray]
) -> None:
    images, probabilities, digits = signature_answers
    body, headers = binary_request(images, parameters={"binary_data_output": True})
    response = bundled_client.post("/v2/models/mnist/infer", content=body, headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/octet-stream"
    answer, arrays = split_binary(response)
    assert [o["name"] for o in answer["outputs"]] == ["probabilities", "digit"]
    assert all("data" not in o for o in answer["outputs"])
    np.testing.assert_array_equal(arrays["digit"], digits)
    np.testing.assert_allclose(arrays["probabilities"], probabilities, rtol=0, atol=1e-5)


def test_binary_input_with_one_binary_and_one_json_output(client: TestClient) -> None:
    images = np.zeros((3, 28, 28), np.uint8)
    outputs = [{"name": "digit", "parameters": {"binary_data": True}}, {"name": "probabilities"}]
    body, headers = binary_request(images, outputs=outputs)
    response = client.post("/v2/models/mnist/infer", content=body, headers=headers)
    assert response.status_code == 200, response.text
    length = int(response.headers[HEADER])
    answer = json.loads(response.content[:length])
    digit, probabilities = answer["outputs"]
    assert digit["parameters"] == {"binary_data_size": 3 * 8}
    np.testing.assert_array_equal(np.frombuffer(response.content[length:], "<i8"), [1, 1, 1])
    assert probabilities["shape"] == [3, 10]
    assert len(probabilities["data"]) == 30


def test_binary_input_with_json_outputs(client: TestClient) -> None:
    body, headers = binary_request(np.zeros((1, 28, 28), np.uint8))
    response = client.post("/v2/models/mnist/infer", content=body, headers=headers)
    assert response.headers["content-type"] == "application/json"
    assert HEADER not in response.headers
    assert response.json()["outputs"][1]["data"] == [1]


# --- bad requests ----------------------------------------------------------------------------

ONE = np.zeros((1, 28, 28), np.uint8)


@pytest.mark.parametrize(
    ("request_body", "words"),
    [
        ({}, ["inputs"]),
        ({"inputs": []}, ["exactly one"]),
        ({"inputs": [images_input(ONE), images_input(ONE)]}, ["exactly one"]),
        ({"inputs": [images_input(ONE, name="pixels")]}, ["pixels"]),
        ({"inputs": [images_input(ONE, datatype="FP32")]}, ["UINT8", "FP32"]),
        ({"inputs": [images_input(ONE, shape=[1, 784])]}, ["[N, 28, 28]", "[1, 784]"]),
        ({"inputs": [images_input(ONE, shape=[0, 28, 28], data=[])]}, ["N ≥ 1"]),
        ({"inputs": [images_input(ONE, shape=[2, 28, 28])]}, ["1568", "784"]),
        ({"inputs": [images_input(ONE, data=[300] * 784)]}, ["0-255"]),
        ({"inputs": [images_input(ONE, data=[0.5] * 784)]}, ["integers"]),
        ({"inputs": [images_input(ONE, data=None)]}, ["integers"]),
        ({"inputs": [{"name": "images", "shape": [1, 28, 28], "datatype": "UINT8"}]}, ["data"]),
        ({"inputs": [images_input(ONE, shape="1,28,28")]}, ["shape"]),
        ({"id": 7, "inputs": [images_input(ONE)]}, ["id"]),
        ({"inputs": [images_input(ONE)], "outputs": [{"name": "logits"}]}, ["logits"]),
        (
            {
                "inputs": [images_input(ONE)],
                "outputs": [{"name": "digit", "parameters": {"classification": 3}}],
            },
            ["classification"],
        ),
        (
            {"inputs": [images_input(ONE, parameters={"shared_memory_region": "r"})]},
            ["hared"],
        ),
    ],
)
def test_bad_json_requests_are_400_with_a_message(
    client: TestClient, request_body: dict[str, Any], words: list[str]
) -> None:
    assert_v2_error(client.post("/v2/models/mnist/infer", json=request_body), 400, *words)


ONE_JSON = json.dumps({"inputs": [images_input(ONE)]}).encode()


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (ONE_JSON.replace(b"0", b"NaN", 1), ["integers"]),
        (ONE_JSON.replace(b"0", b"Infinity", 1), ["integers"]),
        (ONE_JSON.replace(b"0", b"07", 1), ["not valid JSON"]),
        (b"[" * 100_000 + b"]" * 100_000, ["not valid JSON"]),
    ],
    ids=["nan", "infinity", "leading-zero", "deep-nesting"],
)
def test_odd_json_bodies_are_400_as_before(
    client: TestClient, body: bytes, words: list[str]
) -> None:
    response = client.post(
        "/v2/models/mnist/infer", content=body, headers={"Content-Type": "application/json"}
    )
    assert_v2_error(response, 400, *words)


def test_a_byte_order_mark_is_accepted_as_before(client: TestClient) -> None:
    response = client.post(
        "/v2/models/mnist/infer",
        content=b"\xef\xbb\xbf" + ONE_JSON,
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 200, response.text
    digit = next(o for o in response.json()["outputs"] if o["name"] == "digit")
    assert digit["data"] == [1]


@pytest.mark.parametrize(
    ("cut", "header", "words"),
    [
        (0, "abc", [HEADER]),
        (0, "0", [HEADER]),
        (0, "999999", [HEADER]),
        (-1, None, ["binary_data_size"]),  # one pixel short
        (1, None, ["after"]),  # one byte too many
    ],
)
def test_bad_binary_requests_are_400(
    client: TestClient, cut: int, header: str | None, words: list[str]
) -> None:
    body, headers = binary_request(ONE)
    if cut < 0:
        body = body[:cut]
    elif cut > 0:
        body += b"\x00" * cut
    if header is not None:
        headers[HEADER] = header
    response = client.post("/v2/models/mnist/infer", content=body, headers=headers)
    assert_v2_error(response, 400, *words)


def test_compressed_requests_are_refused(client: TestClient) -> None:
    body, headers = binary_request(ONE)
    headers["Content-Encoding"] = "gzip"
    response = client.post("/v2/models/mnist/infer", content=body, headers=headers)
    assert_v2_error(response, 415, "uncompressed")


def test_more_images_than_the_batch_limit_are_refused(models: ModelsDir) -> None:
    models.add(1, digit=1)
    with TestClient(create_app(make_settings(models.path, max_batch_size=4))) as client:
        ok = client.post(
            "/v2/models/mnist/infer",
            json={"inputs": [images_input(np.zeros((4, 28, 28), np.uint8))]},
        )
        body, headers = binary_request(np.zeros((5, 28, 28), np.uint8))
        binary = client.post("/v2/models/mnist/infer", content=body, headers=headers)
        json_five = client.post(
            "/v2/models/mnist/infer",
            json={"inputs": [images_input(np.zeros((5, 28, 28), np.uint8))]},
        )
    assert ok.status_code == 200
    assert_v2_error(binary, 400, "at most 4")
    assert_v2_error(json_five, 400, "at most 4")


def test_unknown_version_or_model_is_404(client: TestClient) -> None:
    body = {"inputs": [images_input(ONE)]}
    assert_v2_error(client.post("/v2/models/mnist/versions/3/infer", json=body), 404, "3")
    assert_v2_error(client.post("/v2/models/fashion/infer", json=body), 404, "fashion")


def test_api_key_is_required_for_infer_only(models: ModelsDir) -> None:
    models.add(1, digit=1)
    with TestClient(create_app(make_settings(models.path, api_key="sesame"))) as client:
        body = {"inputs": [images_input(ONE)]}
        missing = client.post("/v2/models/mnist/infer", json=body)
        right = client.post("/v2/models/mnist/infer", json=body, headers={"X-API-Key": "sesame"})
        metadata = client.get("/v2/models/mnist")
    assert_v2_error(missing, 401, "X-API-Key")
    assert right.status_code == 200
    assert metadata.status_code == 200


# --- the gRPC door, in process; and one worker behind every door -----------------------------


@pytest.fixture
def grpc_app(models: ModelsDir) -> Iterator[tuple[TestClient, str]]:
    """The app with its gRPC service on (lifespan running), and the gRPC address."""
    models.add(1, digit=1)
    port = free_port()
    settings = make_settings(models.path, grpc_port=port, max_batch_size=4)
    with TestClient(create_app(settings)) as client:
        yield client, f"127.0.0.1:{port}"


def grpc_infer(address: str, request: Any) -> Any:
    """Send one ModelInferRequest through the protocol's own stub."""
    with grpc.insecure_channel(address) as channel:
        return service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request)


def infer_request(shape: list[int], datatype: str = "UINT8", **fields: Any) -> Any:
    request = service_pb2.ModelInferRequest(model_name="mnist", **fields)
    request.inputs.add(name="images", datatype=datatype, shape=shape)
    return request


def test_grpc_raw_and_typed_contents(grpc_app: tuple[TestClient, str]) -> None:
    _, address = grpc_app
    raw = infer_request([2, 28, 28], id="raw")
    raw.raw_input_contents.append(bytes(2 * 784))
    typed = infer_request([1, 28, 28])
    typed.inputs[0].contents.uint_contents.extend([0] * 784)
    typed.outputs.add(name="digit")
    for request, count, names in ((raw, 2, ["probabilities", "digit"]), (typed, 1, ["digit"])):
        response = grpc_infer(address, request)
        assert response.model_version == "1"
        assert response.id == request.id
        assert [o.name for o in response.outputs] == names
        digits = np.frombuffer(response.raw_output_contents[names.index("digit")], "<i8")
        np.testing.assert_array_equal(digits, [1] * count)


def _typed(values: list[int]) -> Any:
    request = infer_request([1, 28, 28])
    request.inputs[0].contents.uint_contents.extend(values)
    return request


def _raw(shape: list[int], size: int, datatype: str = "UINT8") -> Any:
    request = infer_request(shape, datatype)
    request.raw_input_contents.append(bytes(size))
    return request


@pytest.mark.parametrize(
    ("request_factory", "words"),
    [
        (lambda: _raw([1, 28, 28], 783), ["783"]),
        (lambda: _raw([5, 28, 28], 5 * 784), ["at most 4"]),
        (lambda: _raw([1, 28, 28], 784 * 4, "FP32"), ["UINT8"]),
        (lambda: _typed([0] * 783), ["783"]),
        (lambda: _typed([256] * 784), ["0-255"]),
        (lambda: service_pb2.ModelInferRequest(model_name="mnist"), ["exactly one"]),
    ],
)
def test_grpc_bad_requests_are_invalid_argument(
    grpc_app: tuple[TestClient, str], request_factory: Any, words: list[str]
) -> None:
    _, address = grpc_app
    with pytest.raises(grpc.RpcError) as error:
        grpc_infer(address, request_factory())
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    for word in words:
        assert word in error.value.details()


def test_grpc_unknown_model_or_version_is_not_found(grpc_app: tuple[TestClient, str]) -> None:
    _, address = grpc_app
    for fields in ({"model_version": "9"}, {"model_name": "fashion"}):
        request = _raw([1, 28, 28], 784)
        for key, value in fields.items():
            setattr(request, key, value)
        with pytest.raises(grpc.RpcError) as error:
            grpc_infer(address, request)
        assert error.value.code() == grpc.StatusCode.NOT_FOUND


def test_every_door_shares_the_one_inference_worker(models: ModelsDir) -> None:
    """Requests arriving at the same time over v2 REST, TF Serving REST and gRPC: one model call.

    The worker waits up to DIGITS_MAX_BATCH_DELAY_MS for more work after the first request;
    the three requests reach it well within that, so they must share one call.
    """
    models.add(1, digit=1)
    port = free_port()
    settings = make_settings(models.path, grpc_port=port, max_batch_delay_ms=1500)
    with TestClient(create_app(settings)) as client:
        v2_body = {"inputs": [images_input(np.zeros((2, 28, 28), np.uint8))]}
        grpc_request = _raw([3, 28, 28], 3 * 784)

        def v2() -> Any:
            return client.post("/v2/models/mnist/infer", json=v2_body).json()

        def tfserving() -> Any:
            return client.post("/v1/models/mnist:predict", json={"instances": [EMPTY_IMAGE]})

        def over_grpc() -> Any:
            return grpc_infer(f"127.0.0.1:{port}", grpc_request)

        with ThreadPoolExecutor(3) as pool:
            futures = [pool.submit(call) for call in (v2, tfserving, over_grpc)]
            answers = [f.result(timeout=60) for f in futures]
        inference = client.get("/metrics").json()["service"]["inference"]
    assert answers[0]["outputs"][1]["data"] == [1, 1]
    assert answers[1].json()["predictions"][0]["digit"] == 1
    assert np.frombuffer(answers[2].raw_output_contents[1], "<i8").tolist() == [1, 1, 1]
    assert (inference["model_calls"], inference["requests"], inference["images"]) == (1, 3, 6)


def test_openapi_lists_the_v2_routes(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    expected = {
        "/v2": "get",
        "/v2/health/live": "get",
        "/v2/health/ready": "get",
        "/v2/models/{model_name}": "get",
        "/v2/models/{model_name}/versions/{version}": "get",
        "/v2/models/{model_name}/ready": "get",
        "/v2/models/{model_name}/versions/{version}/ready": "get",
        "/v2/models/{model_name}/infer": "post",
        "/v2/models/{model_name}/versions/{version}/infer": "post",
    }
    for path, method in expected.items():
        operation = paths[path][method]
        assert operation["summary"].startswith("Open Inference Protocol"), path
        assert len(operation["description"]) > 40, path
        assert operation["tags"] == ["open-inference-protocol"], path
    infer = paths["/v2/models/{model_name}/infer"]["post"]
    assert {"application/json", "application/octet-stream"} <= set(infer["requestBody"]["content"])
    for status in ("400", "401", "404", "503"):
        schema = infer["responses"][status]["content"]["application/json"]["schema"]
        assert schema["$ref"].endswith("/ProtocolErrorResponse"), status
