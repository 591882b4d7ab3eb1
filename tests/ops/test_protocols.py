"""The industry's clients against the real server: tritonclient (HTTP and gRPC), TF Serving REST.

One uvicorn process serves the model with the gRPC service on; the real client libraries talk
to it over sockets, on MNIST test images, and every answer must equal what ``/predict`` says for
the same 28×28 image.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from harness.mnist import MISSING, mnist_dir
from harness.servers import (
    HOST,
    LAUNCHER,
    READY_TIMEOUT_SECONDS,
    REPO,
    RunningServer,
    free_port,
    server_environment,
)
from tests.ops.conftest import ServedModel, ServerFactory, install_version

pytestmark = pytest.mark.slow


class Served:
    """The running server, its gRPC address, the images and ``/predict``'s answers for them."""

    def __init__(
        self, server: RunningServer, grpc_port: int, model: ServedModel, models_dir: Path
    ) -> None:
        self.server = server
        self.grpc_port = grpc_port
        self.models_dir = models_dir
        self.grpc_url = f"{HOST}:{grpc_port}"
        self.http_url = f"{HOST}:{server.port}"
        self.images = model.images
        probabilities, digits, versions = [], [], set()
        with httpx.Client(base_url=server.url, timeout=30) as client:
            for png in model.pngs:
                response = client.post("/predict", files={"file": ("d.png", png, "image/png")})
                assert response.status_code == 200, response.text
                answer = response.json()
                assert answer["normalized"] is False  # the same 28×28 array reached the model
                probabilities.append(answer["probabilities"])
                digits.append(answer["digit"])
                versions.add(answer["model_version"])
        self.probabilities = np.asarray(probabilities, np.float32)
        self.digits = np.asarray(digits, np.int64)
        [self.version] = versions


def assert_same_as_predict(served: Served, probabilities: np.ndarray, digits: np.ndarray) -> None:
    """The protocol's answers equal ``/predict``'s for the same images.

    ``/predict`` ran each image alone, the protocols in one batch: float32 sums may run in
    another order, so probabilities agree to 1e-5 (what the store accepts between its two ways
    of calling the model); digits agree exactly.
    """
    np.testing.assert_array_equal(digits, served.digits)
    assert probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities, served.probabilities, rtol=0, atol=1e-5)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, served_model: ServedModel) -> Iterator[Served]:
    """The service with gRPC on, serving the bundled (or tiny) model on MNIST test images."""
    if mnist_dir() is None:
        pytest.skip(MISSING)
    root = tmp_path_factory.mktemp("protocols")
    models_dir = root / "models"
    install_version(models_dir, served_model.version_dir, 1)
    grpc_port = free_port()
    server = RunningServer.start(
        models_dir, root / "server.log", env={"DIGITS_GRPC_PORT": str(grpc_port)}
    )
    try:
        yield Served(server, grpc_port, served_model, models_dir)
    finally:
        server.stop()


# --- tritonclient.http -----------------------------------------------------------------------


def test_tritonclient_http_health_and_metadata(served: Served) -> None:
    client = triton_http.InferenceServerClient(served.http_url)
    try:
        assert client.is_server_live()
        assert client.is_server_ready()
        assert client.is_model_ready("mnist")
        assert client.is_model_ready("mnist", "1")
        assert not client.is_model_ready("mnist", "2")
        assert not client.is_model_ready("fashion")
        assert "binary_tensor_data" in client.get_server_metadata()["extensions"]
        metadata = client.get_model_metadata("mnist")
    finally:
        client.close()
    assert metadata["versions"] == ["1"]
    assert metadata["inputs"] == [{"name": "images", "datatype": "UINT8", "shape": [-1, 28, 28]}]
    assert [(o["name"], o["datatype"], o["shape"]) for o in metadata["outputs"]] == [
        ("probabilities", "FP32", [-1, 10]),
        ("digit", "INT64", [-1]),
    ]


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_tritonclient_http_infer_equals_predict(served: Served, binary: bool) -> None:
    client = triton_http.InferenceServerClient(served.http_url)
    try:
        tensor = triton_http.InferInput("images", list(served.images.shape), "UINT8")
        tensor.set_data_from_numpy(served.images, binary_data=binary)
        outputs = [
            triton_http.InferRequestedOutput("probabilities", binary_data=binary),
            triton_http.InferRequestedOutput("digit", binary_data=binary),
        ]
        result = client.infer("mnist", [tensor], outputs=outputs, request_id="http-1")
        # No outputs named: tritonclient asks for every output in binary.
        everything = client.infer("mnist", [tensor], model_version="1")
    finally:
        client.close()
    response = result.get_response()
    assert (response["id"], response["model_version"]) == ("http-1", str(served.version))
    sent_binary = [o for o in response["outputs"] if "parameters" in o]
    assert len(sent_binary) == (2 if binary else 0)
    assert_same_as_predict(served, result.as_numpy("probabilities"), result.as_numpy("digit"))
    assert_same_as_predict(
        served, everything.as_numpy("probabilities"), everything.as_numpy("digit")
    )


def test_tritonclient_http_errors(served: Served) -> None:
    client = triton_http.InferenceServerClient(served.http_url)
    try:
        flat = triton_http.InferInput("images", [len(served.images), 784], "UINT8")
        flat.set_data_from_numpy(served.images.reshape(len(served.images), 784))
        with pytest.raises(InferenceServerException, match=r"\[N, 28, 28\]") as bad_shape:
            client.infer("mnist", [flat])
        good = triton_http.InferInput("images", list(served.images.shape), "UINT8")
        good.set_data_from_numpy(served.images)
        with pytest.raises(InferenceServerException, match="version 3") as no_version:
            client.infer("mnist", [good], model_version="3")
    finally:
        client.close()
    assert bad_shape.value.status() == "400"
    assert no_version.value.status() == "404"


# --- tritonclient.grpc -----------------------------------------------------------------------


def test_tritonclient_grpc_health_and_metadata(served: Served) -> None:
    with triton_grpc.InferenceServerClient(served.grpc_url) as client:
        assert client.is_server_live()
        assert client.is_server_ready()
        assert client.is_model_ready("mnist")
        assert client.is_model_ready("mnist", "1")
        assert not client.is_model_ready("mnist", "2")
        assert not client.is_model_ready("fashion")
        assert "binary_tensor_data" in client.get_server_metadata(as_json=True)["extensions"]
        metadata = client.get_model_metadata("mnist", as_json=True)
    assert metadata["versions"] == ["1"]
    # Protobuf's JSON form writes int64 values as strings.
    assert metadata["inputs"] == [
        {"name": "images", "datatype": "UINT8", "shape": ["-1", "28", "28"]}
    ]
    assert [(o["name"], o["datatype"]) for o in metadata["outputs"]] == [
        ("probabilities", "FP32"),
        ("digit", "INT64"),
    ]


def test_tritonclient_grpc_infer_equals_predict(served: Served) -> None:
    with triton_grpc.InferenceServerClient(served.grpc_url) as client:
        tensor = triton_grpc.InferInput("images", list(served.images.shape), "UINT8")
        tensor.set_data_from_numpy(served.images)  # sent as raw_input_contents
        result = client.infer("mnist", [tensor], request_id="grpc-1", model_version="1")
        digits_only = client.infer(
            "mnist", [tensor], outputs=[triton_grpc.InferRequestedOutput("digit")]
        )
    response = result.get_response(as_json=True)
    assert (response["id"], response["model_version"]) == ("grpc-1", str(served.version))
    assert_same_as_predict(served, result.as_numpy("probabilities"), result.as_numpy("digit"))
    assert [o.name for o in digits_only.get_response().outputs] == ["digit"]
    np.testing.assert_array_equal(digits_only.as_numpy("digit"), served.digits)


def test_grpc_typed_contents_equal_predict(served: Served) -> None:
    """``contents.uint_contents`` instead of raw bytes, through the protocol's own stub."""
    images = served.images
    request = service_pb2.ModelInferRequest(model_name="mnist", id="typed")
    tensor = request.inputs.add(name="images", datatype="UINT8", shape=list(images.shape))
    tensor.contents.uint_contents.extend(images.reshape(-1).tolist())
    with grpc.insecure_channel(served.grpc_url) as channel:
        response = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request)
    assert response.id == "typed"
    outputs = {o.name: i for i, o in enumerate(response.outputs)}
    probabilities = np.frombuffer(response.raw_output_contents[outputs["probabilities"]], "<f4")
    digits = np.frombuffer(response.raw_output_contents[outputs["digit"]], "<i8")
    assert_same_as_predict(served, probabilities.reshape(-1, 10), digits)


def test_tritonclient_grpc_errors(served: Served) -> None:
    with triton_grpc.InferenceServerClient(served.grpc_url) as client:
        flat = triton_grpc.InferInput("images", [len(served.images), 784], "UINT8")
        flat.set_data_from_numpy(served.images.reshape(len(served.images), 784))
        with pytest.raises(InferenceServerException, match=r"\[N, 28, 28\]") as bad_shape:
            client.infer("mnist", [flat])
        floats = triton_grpc.InferInput("images", list(served.images.shape), "FP32")
        floats.set_data_from_numpy(served.images.astype(np.float32))
        with pytest.raises(InferenceServerException, match="UINT8") as bad_type:
            client.infer("mnist", [floats])
        good = triton_grpc.InferInput("images", list(served.images.shape), "UINT8")
        good.set_data_from_numpy(served.images)
        with pytest.raises(InferenceServerException, match="version 3") as no_version:
            client.infer("mnist", [good], model_version="3")
    assert bad_shape.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert bad_type.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert no_version.value.status() == "StatusCode.NOT_FOUND"


# --- hostile requests, from the real clients ---------------------------------------------------


def test_an_output_named_many_times_is_refused_at_once_by_both_clients(served: Served) -> None:
    """The attack: the same output named thousands of times made an answer of hundreds of MiB,
    built on the event loop (tritonclient sends whatever list it is given)."""
    images = served.images
    many = 5_000
    http = triton_http.InferenceServerClient(served.http_url, network_timeout=30)
    try:
        tensor = triton_http.InferInput("images", list(images.shape), "UINT8")
        tensor.set_data_from_numpy(images)
        repeated = [triton_http.InferRequestedOutput("probabilities")] * many
        started = time.monotonic()
        with pytest.raises(InferenceServerException, match="more than once") as over_http:
            http.infer("mnist", [tensor], outputs=repeated)
        http_seconds = time.monotonic() - started
    finally:
        http.close()
    with triton_grpc.InferenceServerClient(served.grpc_url) as client:
        tensor = triton_grpc.InferInput("images", list(images.shape), "UINT8")
        tensor.set_data_from_numpy(images)
        repeated_grpc = [triton_grpc.InferRequestedOutput("probabilities")] * many
        with pytest.raises(InferenceServerException, match="more than once") as over_grpc:
            client.infer("mnist", [tensor], outputs=repeated_grpc, client_timeout=30)
        assert client.is_server_live()  # the server is not frozen
    assert over_http.value.status() == "400"
    assert over_grpc.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "'probabilities'" in str(over_grpc.value)
    # A bound on a refusal, far above its cost (the attack took seconds per request).
    assert http_seconds < 5, http_seconds


def test_unimplemented_grpc_methods_leave_no_error_in_the_log(served: Served) -> None:
    with grpc.insecure_channel(served.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        for _ in range(20):
            with pytest.raises(grpc.RpcError) as refused:
                stub.RepositoryIndex(service_pb2.RepositoryIndexRequest())
            assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED
        stream = stub.ModelStreamInfer(iter([service_pb2.ModelInferRequest()]))
        with pytest.raises(grpc.RpcError) as streamed:
            next(stream)
        assert streamed.value.code() == grpc.StatusCode.UNIMPLEMENTED
    log = served.server.log()
    assert "Traceback" not in log
    assert "NotImplementedError" not in log


# --- TF Serving REST, as its documentation shows it -----------------------------------------


def test_tfserving_rest_equals_predict(served: Served) -> None:
    base = f"{served.server.url}/v1/models/mnist"
    with httpx.Client(timeout=30) as client:
        status = client.get(base).json()
        metadata = client.get(f"{base}/metadata").json()
        rows = client.post(f"{base}:predict", json={"instances": served.images.tolist()})
        columns = client.post(
            f"{base}/versions/{served.version}:predict",
            json={
                "signature_name": "serving_default",
                "inputs": {"images": served.images.tolist()},
            },
        )
    assert status["model_version_status"][0]["state"] == "AVAILABLE"
    assert metadata["model_spec"]["version"] == str(served.version)
    predictions = rows.json()["predictions"]
    assert_same_as_predict(
        served,
        np.asarray([p["probabilities"] for p in predictions], np.float32),
        np.asarray([p["digit"] for p in predictions]),
    )
    outputs = columns.json()["outputs"]
    assert_same_as_predict(
        served, np.asarray(outputs["probabilities"], np.float32), np.asarray(outputs["digit"])
    )


# --- the API key, on every door ------------------------------------------------------------


def test_api_key_guards_grpc_and_http_inference(
    start_server: ServerFactory, models_dir: Path
) -> None:
    grpc_port = free_port()
    server = start_server(
        models_dir, env={"DIGITS_GRPC_PORT": str(grpc_port), "DIGITS_API_KEY": "sesame"}
    )
    images = np.zeros((1, 28, 28), np.uint8)
    with triton_grpc.InferenceServerClient(f"{HOST}:{grpc_port}") as client:
        tensor = triton_grpc.InferInput("images", [1, 28, 28], "UINT8")
        tensor.set_data_from_numpy(images)
        assert client.is_model_ready("mnist")  # health and metadata stay open
        with pytest.raises(InferenceServerException, match="x-api-key") as refused:
            client.infer("mnist", [tensor])
        answered = client.infer("mnist", [tensor], headers={"x-api-key": "sesame"})
    assert refused.value.status() == "StatusCode.UNAUTHENTICATED"
    assert answered.as_numpy("digit").shape == (1,)

    http = triton_http.InferenceServerClient(f"{HOST}:{server.port}")
    try:
        tensor = triton_http.InferInput("images", [1, 28, 28], "UINT8")
        tensor.set_data_from_numpy(images)
        with pytest.raises(InferenceServerException, match="X-API-Key") as refused_http:
            http.infer("mnist", [tensor])
        answered_http = http.infer("mnist", [tensor], headers={"X-API-Key": "sesame"})
    finally:
        http.close()
    assert refused_http.value.status() == "401"
    assert answered_http.as_numpy("digit").shape == (1,)


def test_a_grpc_port_in_use_fails_the_start(served: Served, tmp_path: Path) -> None:
    """gRPC would share a busy port (SO_REUSEPORT) and take half its calls: it must not start."""
    log_path = tmp_path / "second.log"
    port = free_port()
    command = [sys.executable, "-m", LAUNCHER, "--host", HOST]
    with log_path.open("wb") as log:
        second = subprocess.Popen(
            [*command, "--port", str(port)],
            cwd=REPO,
            env=server_environment(served.models_dir, {"DIGITS_GRPC_PORT": str(served.grpc_port)}),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    try:
        with httpx.Client(timeout=2) as client:
            while second.poll() is None and time.monotonic() < deadline:
                try:
                    started = client.get(f"http://{HOST}:{port}/health/ready").status_code == 200
                except httpx.TransportError:
                    started = False
                assert not started, "a second server started on a gRPC port already in use"
                time.sleep(0.2)
    finally:
        if second.poll() is None:
            second.kill()
        second.wait()
    log = log_path.read_text(errors="replace")
    assert second.returncode != 0, log
    assert f"cannot listen on {HOST}:{served.grpc_port}" in log, log
    with triton_grpc.InferenceServerClient(served.grpc_url) as client:
        assert client.is_server_ready()  # the first server still has its port
