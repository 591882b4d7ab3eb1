"""The Open Inference Protocol core under its two doors: one request, one answer or one refusal.

Each case is a request described once (its input tensor, the outputs it names) and sent through
the REST door (JSON, or the binary tensor data extension) and the gRPC door (typed contents or
raw_input_contents). The checks are the core's (:mod:`app.protocols.v2`), so both doors must
refuse with the very same message, and answer a good request with the very same numbers.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np
import pytest
from tritonclient.grpc import service_pb2

from app.protocols import v2
from app.protocols.common import ProtocolError
from harness.attacks_protocols import repeated_outputs_grpc, repeated_outputs_rest
from tests.app.protocols.conftest import KEY, MAX_IMAGES, Doors

HEADER = "Inference-Header-Content-Length"
GRPC_KEY = (("x-api-key", KEY),)


@dataclass
class Case:
    """An infer request, as both doors can carry it."""

    shape: list[int] = field(default_factory=lambda: [1, 28, 28])
    name: str = "images"
    datatype: str = "UINT8"
    values: list[int] | None = None
    """The pixels as typed values (JSON ``data``, gRPC ``uint_contents``); zeros by default."""
    raw: bytes | None = None
    """The pixels as bytes instead (binary extension, gRPC ``raw_input_contents``)."""
    outputs: list[str] | None = None
    inputs: int = 1
    model: str = "mnist"

    def pixels(self) -> list[int]:
        return self.values if self.values is not None else [0] * math.prod(self.shape)


def send_rest(doors: Doors, case: Case) -> Any:
    tensor: dict[str, Any] = {"name": case.name, "datatype": case.datatype, "shape": case.shape}
    binary = b""
    if case.raw is not None:
        tensor["parameters"] = {"binary_data_size": len(case.raw)}
        binary = case.raw
    else:
        tensor["data"] = case.pixels()
    request: dict[str, Any] = {"inputs": [tensor] * case.inputs}
    if case.outputs is not None:
        request["outputs"] = [{"name": name} for name in case.outputs]
    body = json.dumps(request).encode()
    headers = {"X-API-Key": KEY, "Content-Type": "application/json"}
    if binary:
        headers[HEADER] = str(len(body))
    return doors.rest.post(f"/v2/models/{case.model}/infer", content=body + binary, headers=headers)


def send_grpc(doors: Doors, case: Case) -> Any:
    request = service_pb2.ModelInferRequest(model_name=case.model)
    for _ in range(case.inputs):
        tensor = request.inputs.add(name=case.name, datatype=case.datatype, shape=case.shape)
        if case.raw is None:
            tensor.contents.uint_contents.extend(case.pixels())
    if case.raw is not None:
        request.raw_input_contents.append(case.raw)
    for name in case.outputs or ():
        request.outputs.add(name=name)
    return doors.grpc.ModelInfer(request, metadata=GRPC_KEY)


BAD_REQUESTS = {
    "input name": (Case(name="pixels"), ["pixels", "images"]),
    "datatype": (Case(datatype="FP32"), ["UINT8", "FP32"]),
    "flat shape": (Case(shape=[1, 784]), ["[N, 28, 28]", "[1, 784]"]),
    "no images": (Case(shape=[0, 28, 28]), ["N ≥ 1"]),
    "over the limit": (Case(shape=[MAX_IMAGES + 1, 28, 28]), [f"at most {MAX_IMAGES}"]),
    "values short": (Case(values=[0] * 783), ["784", "783"]),
    "values not uint8": (Case(values=[300] * 784), ["0-255"]),
    "bytes short": (Case(raw=bytes(783)), ["784", "783"]),
    "bytes for two images": (Case(raw=bytes(2 * 784)), ["784", "1568"]),
    "unknown output": (Case(outputs=["logits"]), ["logits", "probabilities, digit"]),
    "output twice": (Case(outputs=["digit", "digit"]), ["'digit'", "more than once"]),
    "output twice, apart": (
        Case(outputs=["probabilities", "digit", "probabilities"]),
        ["'probabilities'", "more than once"],
    ),
    "two inputs": (Case(inputs=2), ["exactly one"]),
}


@pytest.mark.parametrize(("case", "words"), BAD_REQUESTS.values(), ids=BAD_REQUESTS.keys())
def test_the_same_bad_request_gets_the_same_refusal_through_both_doors(
    doors: Doors, case: Case, words: list[str]
) -> None:
    rest = send_rest(doors, case)
    with pytest.raises(grpc.RpcError) as refused:
        send_grpc(doors, case)
    assert rest.status_code == 400, rest.text
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    message = rest.json()["error"]
    assert message == refused.value.details()
    for word in words:
        assert word in message


def test_an_output_named_thousands_of_times_is_refused_at_once_by_both_doors(
    doors: Doors,
) -> None:
    """The attack: the answer was built once per entry, on the event loop (256 images and
    'probabilities' × 20,000 gave a 973 MiB answer after 26 s over REST, 196 MiB over gRPC)."""
    images = np.zeros((MAX_IMAGES, 28, 28), np.uint8)
    body, headers = repeated_outputs_rest(images, "probabilities", 20_000)
    rest = doors.rest.post(
        "/v2/models/mnist/infer", content=body, headers={**headers, "X-API-Key": KEY}
    )
    attack = repeated_outputs_grpc(images, "probabilities", 20_000)
    with pytest.raises(grpc.RpcError) as refused:
        doors.grpc.ModelInfer(attack, metadata=GRPC_KEY)
    assert rest.status_code == 400, rest.text[:200]
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    message = rest.json()["error"]
    assert message == refused.value.details()
    assert "'probabilities' is requested more than once" in message
    assert len(rest.content) < 1000


def test_an_unknown_model_is_not_found_the_same_way(doors: Doors) -> None:
    case = Case(model="fashion")
    rest = send_rest(doors, case)
    with pytest.raises(grpc.RpcError) as refused:
        send_grpc(doors, case)
    assert rest.status_code == 404
    assert refused.value.code() == grpc.StatusCode.NOT_FOUND
    assert rest.json()["error"] == refused.value.details()
    assert "fashion" in refused.value.details()


def test_a_good_request_gets_the_same_outputs_through_both_doors(doors: Doors) -> None:
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, (3, 28, 28), dtype=np.uint8)
    typed = Case(shape=[3, 28, 28], values=images.reshape(-1).tolist(), outputs=["digit"])
    raw = Case(shape=[3, 28, 28], raw=images.tobytes())
    for case in (typed, raw):
        rest = send_rest(doors, case)
        assert rest.status_code == 200, rest.text
        answer = rest.json()
        over_grpc = send_grpc(doors, case)
        names = [o["name"] for o in answer["outputs"]]
        assert names == [o.name for o in over_grpc.outputs]
        assert names == (case.outputs or ["probabilities", "digit"])
        assert answer["model_version"] == over_grpc.model_version == "1"
        for index, output in enumerate(answer["outputs"]):
            dtype = {"FP32": "<f4", "INT64": "<i8"}[output["datatype"]]
            sent = np.frombuffer(over_grpc.raw_output_contents[index], dtype)
            np.testing.assert_array_equal(sent, np.asarray(output["data"], dtype))
            assert list(over_grpc.outputs[index].shape) == output["shape"]


# --- the core itself, without a door --------------------------------------------------------


def test_input_checks_run_in_the_protocols_order() -> None:
    """Name before datatype; the shape before the values; the count limit from the shape alone."""
    with pytest.raises(ProtocolError, match="Unknown input 'x'"):
        v2.check_input("x", "FP32")
    with pytest.raises(ProtocolError, match="datatype UINT8"):
        v2.check_input("images", "FP32")
    v2.check_input("images", "UINT8")
    with pytest.raises(ProtocolError, match="at most 2") as too_many:
        v2.input_images([3, 28, 28], 2, data=None)  # refused before the (missing) data is read
    assert too_many.value.code == "invalid_argument"
    images = v2.input_images([2, 28, 28], 2, raw=bytes(range(256)) * 6 + bytes(32))
    assert images.shape == (2, 28, 28)
    assert images.dtype == np.uint8


def test_outputs_are_the_models_and_all_by_default() -> None:
    assert [o.name for o in v2.all_outputs()] == ["probabilities", "digit"]
    assert all(o.binary for o in v2.all_outputs(binary=True))
    assert v2.output_name("digit") == "digit"
    for bad in ("logits", None, ["digit"]):
        with pytest.raises(ProtocolError, match="Unknown output"):
            v2.output_name(bad)
    with pytest.raises(ProtocolError, match="exactly one"):
        v2.check_input_count(0)


def test_each_output_is_named_once_and_few_names_are_read() -> None:
    assert v2.output_names(["digit", "probabilities"]) == ["digit", "probabilities"]
    assert v2.output_names([]) == []
    read = 0

    def names() -> Iterator[str]:
        nonlocal read
        for _ in range(1_000_000):
            read += 1
            yield "probabilities"

    with pytest.raises(ProtocolError, match="'probabilities' is requested more than once") as twice:
        v2.output_names(names())
    assert twice.value.code == "invalid_argument"
    assert read == 2
    # Whatever the names, no more than the model's outputs plus one are read.
    assert len(v2.OUTPUTS) == 2
    with pytest.raises(ProtocolError, match="more than once"):
        v2.output_names(["digit", "probabilities", "digit", "logits"])


def test_an_infer_request_holds_each_output_once() -> None:
    """The core's own guard, whatever a door read."""
    images = np.zeros((1, 28, 28), np.uint8)
    digit = v2.RequestedOutput("digit")
    assert v2.InferRequest(images, None, [digit]).outputs == [digit]
    with pytest.raises(ProtocolError, match="'digit' is requested more than once"):
        v2.InferRequest(images, None, [digit, v2.RequestedOutput("digit", binary=True)])
