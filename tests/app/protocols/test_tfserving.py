"""TensorFlow Serving's REST API, as a client written from its documentation uses it.

The requests are the documented ones, sent as plain JSON (row format ``instances``, columnar
format ``inputs``, model status, metadata, versions), and the answers are checked against the
documented response shapes. With the committed model and MNIST's test images, the predictions
must be the SavedModel signature's own output for the same uint8 array.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.protocols.tfserving import _bulk_images
from tests.app.conftest import ModelsDir, make_settings

MNIST = tuple[np.ndarray, np.ndarray]
COUNT = 48


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


def assert_protocol_error(response: Any, status: int, *words: str) -> None:
    """TF Serving's error shape: ``{"error": "<message>"}`` with the expected status."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}, body
    assert isinstance(body["error"], str), body
    for word in words:
        assert word in body["error"], body


def assert_same_answers(
    probabilities: Any, digits: Any, expected_probabilities: np.ndarray, expected: np.ndarray
) -> None:
    """The service's answers are the signature's: same digits, probabilities to float32."""
    np.testing.assert_array_equal(np.asarray(digits), expected)
    got = np.asarray(probabilities, dtype=np.float32)
    assert got.shape == expected_probabilities.shape
    # The service runs the same graph as a session callable, which may sum in another order:
    # app.serving.store serves it only when it agrees with the eager call to within 1e-5.
    np.testing.assert_allclose(got, expected_probabilities, rtol=0, atol=1e-5)


# --- model status and metadata, as documented ------------------------------------------------


def test_model_status_lists_the_served_version(client: TestClient) -> None:
    response = client.get("/v1/models/mnist")
    assert response.status_code == 200
    assert response.json() == {
        "model_version_status": [
            {
                "version": "1",
                "state": "AVAILABLE",
                "status": {"error_code": "OK", "error_message": ""},
            }
        ]
    }
    one = client.get("/v1/models/mnist/versions/1")
    assert one.json() == response.json()


def test_status_of_a_version_that_failed_to_load_says_why(models: ModelsDir) -> None:
    models.add(1, digit=1)
    models.add_corrupt(2)
    with TestClient(create_app(make_settings(models.path))) as client:
        states = client.get("/v1/models/mnist").json()["model_version_status"]
        failed = client.get("/v1/models/mnist/versions/2").json()["model_version_status"]
    assert [(s["version"], s["state"]) for s in states] == [("1", "AVAILABLE"), ("2", "END")]
    assert failed[0]["state"] == "END"
    assert failed[0]["status"]["error_code"] != "OK"
    assert "SavedModel" in failed[0]["status"]["error_message"]


def test_metadata_describes_the_signature(client: TestClient) -> None:
    response = client.get("/v1/models/mnist/metadata")
    assert response.status_code == 200
    body = response.json()
    assert body["model_spec"] == {"name": "mnist", "signature_name": "", "version": "1"}
    signature = body["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert signature["method_name"] == "tensorflow/serving/predict"

    def dims(tensor: dict[str, Any]) -> list[str]:
        assert tensor["tensor_shape"]["unknown_rank"] is False
        return [d["size"] for d in tensor["tensor_shape"]["dim"]]

    images = signature["inputs"]["images"]
    assert (images["dtype"], dims(images)) == ("DT_UINT8", ["-1", "28", "28"])
    outputs = signature["outputs"]
    assert (outputs["probabilities"]["dtype"], dims(outputs["probabilities"])) == (
        "DT_FLOAT",
        ["-1", "10"],
    )
    assert (outputs["digit"]["dtype"], dims(outputs["digit"])) == ("DT_INT64", ["-1"])
    assert client.get("/v1/models/mnist/versions/1/metadata").json() == body


@pytest.mark.parametrize(
    "path",
    [
        "/v1/models/mnist/versions/7",
        "/v1/models/mnist/versions/7/metadata",
        "/v1/models/mnist/versions/latest",
        "/v1/models/mnist/labels/stable",
        "/v1/models/mnist/labels/canary/metadata",
        "/v1/models/fashion",
        "/v1/models/fashion/metadata",
    ],
)
def test_unknown_model_version_or_label_is_404(client: TestClient, path: str) -> None:
    assert_protocol_error(client.get(path), 404)


def test_no_version_loaded(models: ModelsDir) -> None:
    with TestClient(create_app(make_settings(models.path))) as client:
        assert_protocol_error(client.get("/v1/models/mnist"), 404, "mnist")
        image = np.zeros((28, 28), np.uint8).tolist()
        response = client.post("/v1/models/mnist:predict", json={"instances": [image]})
        assert_protocol_error(response, 503)
        assert response.headers["Retry-After"]


# --- predict: the documented formats, answers equal to the signature's ------------------------


def test_row_format_answers_the_signatures_output(
    bundled_client: TestClient, signature_answers: tuple[np.ndarray, np.ndarray, np.ndarray]
) -> None:
    images, probabilities, digits = signature_answers
    body = {"signature_name": "serving_default", "instances": images.tolist()}
    response = bundled_client.post("/v1/models/mnist:predict", json=body)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    answer = response.json()
    assert set(answer) == {"predictions"}
    predictions = answer["predictions"]
    assert len(predictions) == len(images)
    assert all(set(p) == {"probabilities", "digit"} for p in predictions)
    assert_same_answers(
        [p["probabilities"] for p in predictions],
        [p["digit"] for p in predictions],
        probabilities,
        digits,
    )


def test_row_format_with_named_instances(
    bundled_client: TestClient,
    bundled_model_dir: Path,
    signature_answers: tuple[np.ndarray, np.ndarray, np.ndarray],
) -> None:
    images, probabilities, digits = signature_answers
    body = {"instances": [{"images": image.tolist()} for image in images[:8]]}
    served = bundled_model_dir.name  # the newest committed version, the one `latest` serves
    response = bundled_client.post(f"/v1/models/mnist/versions/{served}:predict", json=body)
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    got = np.asarray([p["probabilities"] for p in predictions], np.float32)
    np.testing.assert_array_equal([p["digit"] for p in predictions], digits[:8])
    np.testing.assert_allclose(got, probabilities[:8], rtol=0, atol=1e-5)


@pytest.mark.parametrize("named", [True, False])
def test_columnar_format_answers_the_signatures_output(
    bundled_client: TestClient,
    signature_answers: tuple[np.ndarray, np.ndarray, np.ndarray],
    named: bool,
) -> None:
    images, probabilities, digits = signature_answers
    inputs = {"images": images.tolist()} if named else images.tolist()
    response = bundled_client.post("/v1/models/mnist:predict", json={"inputs": inputs})
    assert response.status_code == 200, response.text
    answer = response.json()
    assert set(answer) == {"outputs"}
    assert set(answer["outputs"]) == {"probabilities", "digit"}
    assert_same_answers(
        answer["outputs"]["probabilities"], answer["outputs"]["digit"], probabilities, digits
    )


def test_mnist_images_read_right(bundled_client: TestClient, mnist_test: MNIST) -> None:
    """The raw test images through TF Serving's API: MNIST accuracy, not chance."""
    images, labels = mnist_test
    response = bundled_client.post(
        "/v1/models/mnist:predict", json={"inputs": images[:200].tolist()}
    )
    digits = np.asarray(response.json()["outputs"]["digit"])
    assert np.mean(digits == labels[:200]) > 0.85


# --- bad requests: TF Serving's error shape and statuses -------------------------------------

EMPTY = np.zeros((28, 28), np.uint8).tolist()


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b"{not json", ["JSON"]),
        (b"[1, 2]", ["instances"]),
        (json.dumps({}).encode(), ["instances", "inputs"]),
        (json.dumps({"instances": [EMPTY], "inputs": [EMPTY]}).encode(), ["exactly one"]),
        (json.dumps({"instances": []}).encode(), ["non-empty"]),
        (json.dumps({"instances": [[1, 2, 3]]}).encode(), ["[N, 28, 28]"]),
        (json.dumps({"instances": [EMPTY, [[0] * 27] * 28]}).encode(), ["integers"]),
        (json.dumps({"instances": [[[0.5] * 28] * 28]}).encode(), ["integers"]),
        (json.dumps({"instances": [[["7"] * 28] * 28]}).encode(), ["integers"]),
        (json.dumps({"instances": [[[256] * 28] * 28]}).encode(), ["0-255"]),
        (json.dumps({"instances": [[[-1] * 28] * 28]}).encode(), ["0-255"]),
        (json.dumps({"inputs": EMPTY}).encode(), ["[N, 28, 28]"]),
        (json.dumps({"inputs": {"pixels": [EMPTY]}}).encode(), ["images"]),
        (json.dumps({"instances": [{"pixels": EMPTY}]}).encode(), ["images"]),
        (json.dumps({"instances": [{"images": EMPTY}, EMPTY]}).encode(), ["mixes"]),
        (json.dumps({"signature_name": "classify", "instances": [EMPTY]}).encode(), ["classify"]),
        (json.dumps({"instances": [EMPTY], "extra": 1}).encode(), ["extra"]),
    ],
)
def test_bad_predict_requests_are_400_with_a_message(
    client: TestClient, body: bytes, words: list[str]
) -> None:
    response = client.post(
        "/v1/models/mnist:predict", content=body, headers={"Content-Type": "application/json"}
    )
    assert_protocol_error(response, 400, *words)


def test_more_images_than_the_batch_limit_are_refused_before_any_work(models: ModelsDir) -> None:
    models.add(1, digit=1)
    with TestClient(create_app(make_settings(models.path, max_batch_size=4))) as client:
        ok = client.post("/v1/models/mnist:predict", json={"instances": [EMPTY] * 4})
        rows = client.post("/v1/models/mnist:predict", json={"instances": [EMPTY] * 5})
        columns = client.post("/v1/models/mnist:predict", json={"inputs": [EMPTY] * 5})
        figures = client.get("/metrics").json()
    assert ok.status_code == 200
    assert_protocol_error(rows, 400, "at most 4")
    assert_protocol_error(columns, 400, "at most 4")
    assert figures["service"]["images_by_endpoint"] == {"tfserving:predict": 4}


# --- bulk bodies: read without a JSON parser, answered as the general path answers -----------


def post_raw(client: TestClient, body: bytes) -> Any:
    return client.post(
        "/v1/models/mnist:predict", content=body, headers={"Content-Type": "application/json"}
    )


def test_bulk_bodies_answer_as_the_general_path(
    bundled_client: TestClient, signature_answers: tuple[np.ndarray, np.ndarray, np.ndarray]
) -> None:
    """Every form the fast reader takes gives the answer of a body only the general path reads.

    A key written with an escape (``"\\u0069nstances"``) is the same key to any JSON parser but
    not to the fast reader's envelope, so it pins the general path.
    """
    images, probabilities, digits = signature_answers
    pixels = images.tolist()
    general_rows = post_raw(
        bundled_client, json.dumps({"instances": pixels}).replace('"i', '"\\u0069', 1).encode()
    )
    general_columns = post_raw(
        bundled_client,
        json.dumps({"inputs": {"images": pixels}}).replace('"i', '"\\u0069', 1).encode(),
    )
    assert general_rows.status_code == general_columns.status_code == 200
    assert _bulk_images(general_rows.request.content, len(images)) is None
    rows = [
        json.dumps({"instances": pixels}, separators=(",", ":")),
        json.dumps({"signature_name": "serving_default", "instances": pixels}, indent=2),
        json.dumps({"instances": pixels, "signature_name": "serving_default"}),
    ]
    columns = [
        json.dumps({"inputs": pixels}, separators=(",", ":")),
        json.dumps({"inputs": {"images": pixels}}, indent="\t"),
        json.dumps({"signature_name": "serving_default", "inputs": {"images": pixels}}),
    ]
    cases = [(b, general_rows) for b in rows] + [(b, general_columns) for b in columns]
    for body, general in cases:
        assert _bulk_images(body.encode(), len(images)) is not None, "the fast reader declined"
        response = post_raw(bundled_client, body.encode())
        assert response.status_code == 200, response.text
        assert response.json() == general.json()
    answer = general_columns.json()["outputs"]
    assert_same_answers(answer["probabilities"], answer["digit"], probabilities, digits)


PIXELS = json.dumps({"instances": [EMPTY]}).encode()


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (PIXELS.replace(b"0", b"NaN", 1), ["integers"]),
        (PIXELS.replace(b"0", b"Infinity", 1), ["integers"]),
        (PIXELS.replace(b"0", str(2**70).encode(), 1), ["integers"]),
        (json.dumps({"instances": [[[True] * 28] * 28]}).encode(), ["integers"]),
        (PIXELS.replace(b"0", b"07", 1), ["JSON"]),
        (PIXELS.replace(b"0", b"1 2", 1), ["JSON"]),
        (PIXELS.replace(b"]]]}", b"]],]}", 1), ["JSON"]),
        (b'{"instances": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", ["JSON"]),
        (PIXELS[:-1] + b', "signature_name": "classify"}', ["classify"]),
        (json.dumps({"instances": {"images": [EMPTY]}}).encode(), ["non-empty"]),
        (json.dumps({"inputs": [EMPTY, EMPTY[:27]]}).encode(), ["integers"]),
    ],
    ids=[
        "nan",
        "infinity",
        "huge-int",
        "booleans",
        "leading-zero",
        "split-number",
        "trailing-comma",
        "deep-nesting",
        "signature-last",
        "instances-object",
        "ragged",
    ],
)
def test_odd_bulk_bodies_are_400_as_before(
    client: TestClient, body: bytes, words: list[str]
) -> None:
    assert_protocol_error(post_raw(client, body), 400, *words)


def test_a_byte_order_mark_is_accepted_as_before(client: TestClient) -> None:
    response = post_raw(client, b"\xef\xbb\xbf" + PIXELS)
    assert response.status_code == 200, response.text
    assert response.json()["predictions"][0]["digit"] == 1


@pytest.mark.parametrize(
    "path",
    [
        "/v1/models/mnist/versions/2:predict",
        "/v1/models/mnist/labels/stable:predict",
        "/v1/models/fashion:predict",
    ],
)
def test_predict_on_unknown_version_label_or_model_is_404(client: TestClient, path: str) -> None:
    assert_protocol_error(client.post(path, json={"instances": [EMPTY]}), 404)


def test_api_key_is_required_for_predict_only(models: ModelsDir) -> None:
    models.add(1, digit=1)
    with TestClient(create_app(make_settings(models.path, api_key="sesame"))) as client:
        body = {"instances": [EMPTY]}
        missing = client.post("/v1/models/mnist:predict", json=body)
        wrong = client.post("/v1/models/mnist:predict", json=body, headers={"X-API-Key": "x"})
        right = client.post("/v1/models/mnist:predict", json=body, headers={"X-API-Key": "sesame"})
        status = client.get("/v1/models/mnist")
    assert_protocol_error(missing, 401, "X-API-Key")
    assert_protocol_error(wrong, 401, "X-API-Key")
    assert right.status_code == 200
    assert right.json()["predictions"][0]["digit"] == 1
    assert status.status_code == 200


def test_body_over_the_limit_is_refused(models: ModelsDir) -> None:
    models.add(1, digit=1)
    with TestClient(create_app(make_settings(models.path, max_upload_bytes=4096))) as client:
        response = client.post("/v1/models/mnist:predict", json={"instances": [EMPTY] * 8})
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"


def test_the_service_keeps_its_own_error_shape_elsewhere(client: TestClient) -> None:
    response = client.post("/predict")
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "invalid_request"


def test_openapi_lists_the_tfserving_routes(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    expected = {
        "/v1/models/{model_name}": "get",
        "/v1/models/{model_name}/versions/{version}": "get",
        "/v1/models/{model_name}/labels/{label}": "get",
        "/v1/models/{model_name}/metadata": "get",
        "/v1/models/{model_name}/versions/{version}/metadata": "get",
        "/v1/models/{model_name}/labels/{label}/metadata": "get",
        "/v1/models/{model_name}:predict": "post",
        "/v1/models/{model_name}/versions/{version}:predict": "post",
        "/v1/models/{model_name}/labels/{label}:predict": "post",
    }
    for path, method in expected.items():
        operation = paths[path][method]
        assert operation["summary"].startswith("TF Serving"), path
        assert len(operation["description"]) > 40, path
        assert operation["tags"] == ["tensorflow-serving"], path
        schema = operation["responses"]["404"]["content"]["application/json"]["schema"]
        assert schema["$ref"].endswith("/ProtocolErrorResponse"), path
    predict = paths["/v1/models/{model_name}:predict"]["post"]
    body = predict["requestBody"]["content"]["application/json"]["schema"]
    assert {"instances", "inputs", "signature_name"} <= set(body["properties"])
