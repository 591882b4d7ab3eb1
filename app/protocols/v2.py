"""The Open Inference Protocol's core, under both of its doors (KServe's data plane).

The REST door (:mod:`app.protocols.v2_rest`) and the gRPC door (:mod:`app.protocols.v2_grpc`)
translate their wire formats (JSON and binary extension; protobuf messages) to and from what is
here, and nothing more: the checks of the input tensor (name, datatype, shape, the image count
limit, pixel values), which outputs to answer and how they are built, model and server metadata,
readiness, and the inference call. The same bad request is refused with the same message
through either door; each door only turns a :class:`~app.protocols.common.ProtocolError` into
its status.

The model has one input, ``images`` UINT8 [N, 28, 28] (raw pixels in MNIST polarity), and two
outputs, ``probabilities`` FP32 [N, 10] and ``digit`` INT64 [N].
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from app.protocols.common import (
    MODEL_NAME,
    ModelRef,
    images_from_bytes,
    images_from_flat,
    invalid,
    parse_version,
    protocol_shape,
    resolve,
    resolve_model,
    served_models,
)
from app.serving.loaded import LoadedModel
from app.serving.runtime import INPUT_KEY, OUTPUTS, TensorInfo
from app.serving.store import ModelStore
from app.serving.worker import InferenceWorker

PLATFORM: Final = "tensorflow_savedmodel"
#: The server as the protocol names it (server metadata).
SERVER_NAME: Final = "mnist-digits"
#: Protocol extensions both doors support.
EXTENSIONS: Final = ["binary_tensor_data"]
#: The signature's dtypes in the protocol's spelling.
DATATYPES: Final = {"uint8": "UINT8", "float32": "FP32", "int64": "INT64"}
INPUT_DATATYPE: Final = "UINT8"
#: The refusal of a request without exactly one input tensor.
ONE_INPUT: Final = f"'inputs' must be a list of exactly one tensor, '{INPUT_KEY}'."


# --- server and model ------------------------------------------------------------------------


def server_metadata(server_version: str) -> dict[str, Any]:
    """The server's name, version and extensions."""
    return {"name": SERVER_NAME, "version": server_version, "extensions": EXTENSIONS}


def server_ready(store: ModelStore) -> bool:
    """Whether inference can be answered now: a version is loaded and warmed up."""
    return store.current is not None


def ready_model(store: ModelStore, ref: ModelRef) -> LoadedModel:
    """The model ``ref`` names, which can answer (it is loaded).

    Raises:
        ProtocolError: ``not_found`` or ``unavailable`` (:func:`~app.protocols.common.resolve`).
    """
    return resolve(store, ref)


def model_metadata(store: ModelStore, ref: ModelRef) -> dict[str, Any]:
    """The model's metadata: the versions (the one named, else every served one), platform and
    tensors.

    Raises:
        ProtocolError: ``not_found`` or ``unavailable``.
    """
    wanted = parse_version(ref.version)
    model = resolve_model(store, ref.name, wanted)
    versions = [wanted] if wanted is not None else [m.version for m in served_models(store)]

    def tensor(info: TensorInfo) -> dict[str, Any]:
        return {
            "name": info.name,
            "datatype": DATATYPES.get(info.dtype, info.dtype.upper()),
            "shape": protocol_shape(info.shape),
        }

    return {
        "name": MODEL_NAME,
        "versions": [str(v) for v in versions],
        "platform": PLATFORM,
        "inputs": [tensor(t) for t in model.inputs],
        "outputs": [tensor(t) for t in model.outputs],
    }


# --- the input -------------------------------------------------------------------------------


def check_input_count(count: int) -> None:
    """A request carries exactly one input tensor, ``images``."""
    if count != 1:
        raise invalid(ONE_INPUT)


def check_input(name: object, datatype: object) -> None:
    """The input tensor is ``images`` and its datatype is UINT8.

    Raises:
        ProtocolError: ``invalid_argument`` naming what is wrong.
    """
    if name != INPUT_KEY:
        raise invalid(f"Unknown input {name!r}: the model has one input, '{INPUT_KEY}'.")
    if datatype != INPUT_DATATYPE:
        raise invalid(
            f"Input '{INPUT_KEY}' must have datatype UINT8 (raw pixels 0-255), got {datatype!r}."
        )


def input_images(
    shape: Sequence[int], max_images: int, *, data: Any = None, raw: bytes | None = None
) -> npt.NDArray[np.uint8]:
    """The images of the input: its declared ``shape`` and either ``data`` (the tensor's values,
    flat or nested, row-major) or ``raw`` bytes (one byte per pixel).

    Raises:
        ProtocolError: ``invalid_argument`` when the shape is not [N, 28, 28], N is over
            ``max_images``, or the values do not fill that shape with pixels 0-255.
    """
    if raw is not None:
        return images_from_bytes(raw, shape, max_images)
    return images_from_flat(data, shape, max_images)


# --- the outputs -----------------------------------------------------------------------------


@dataclass(frozen=True)
class RequestedOutput:
    """An output to answer, and whether as binary data (binary tensor data extension)."""

    name: str
    binary: bool = False


def output_name(name: object) -> str:
    """An output the request names, which must be one of the model's.

    Raises:
        ProtocolError: ``invalid_argument`` for any other name.
    """
    if not isinstance(name, str) or name not in OUTPUTS:
        raise invalid(f"Unknown output {name!r}: the outputs are {', '.join(OUTPUTS)}.")
    return name


def output_names(names: Iterable[object]) -> list[str]:
    """The outputs a request names, in its order: each one of the model's, and named once.

    The answer is built once per output named, so a request may name at most as many outputs
    as the model has. A name repeated is refused as soon as it is met: whatever the length of
    the request's list, at most ``len(OUTPUTS) + 1`` of its names are read.

    Raises:
        ProtocolError: ``invalid_argument`` naming an unknown or repeated output.
    """
    chosen: list[str] = []
    for name in names:
        known = output_name(name)
        if known in chosen:
            raise invalid(
                f"Output {known!r} is requested more than once: name each output at most once "
                f"(the model has {len(OUTPUTS)}: {', '.join(OUTPUTS)})."
            )
        chosen.append(known)
    return chosen


def all_outputs(binary: bool = False) -> list[RequestedOutput]:
    """Every output, in the model's order: what a request that names none gets."""
    return [RequestedOutput(name, binary) for name in OUTPUTS]


@dataclass(frozen=True)
class InferRequest:
    """What an infer request asks: the images, its id, and which outputs in which form."""

    images: npt.NDArray[np.uint8]
    id: str | None
    outputs: list[RequestedOutput]
    """In the order to answer; each of the model's outputs at most once."""

    def __post_init__(self) -> None:
        # Whatever a door read, the answer is built once per output of the model at most.
        output_names(output.name for output in self.outputs)


@dataclass(frozen=True)
class OutputTensor:
    """One output of the answer: its datatype and values (little-endian, as sent)."""

    name: str
    datatype: str
    array: npt.NDArray[Any]
    binary: bool


@dataclass(frozen=True)
class InferResponse:
    """The answer to an infer request: the version that answered, the request's id, outputs."""

    model_version: str
    id: str | None
    outputs: list[OutputTensor]


async def infer(
    worker: InferenceWorker, model: LoadedModel, request: InferRequest
) -> InferResponse:
    """Run the model on the request's images (through the shared worker) and build the outputs.

    Raises:
        ModelOutputError: when the model answers garbage (:mod:`app.serving.output_check`).
    """
    result = await worker.predict(model, request.images)
    arrays: dict[str, tuple[npt.NDArray[Any], str]] = {
        "probabilities": (result.probabilities.astype("<f4", copy=False), "FP32"),
        "digit": (result.digits.astype("<i8", copy=False), "INT64"),
    }
    outputs = [
        OutputTensor(wanted.name, arrays[wanted.name][1], arrays[wanted.name][0], wanted.binary)
        for wanted in request.outputs
    ]
    return InferResponse(str(result.model_version), request.id, outputs)
