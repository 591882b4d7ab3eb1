"""The Open Inference Protocol (KServe v2) over REST, onto the same store and worker.

Health, server and model metadata, model readiness and ``infer`` with JSON tensors: input
``images`` UINT8 [N, 28, 28] (raw pixels in MNIST polarity, no image decoding), outputs
``probabilities`` FP32 [N, 10] and ``digit`` INT64 [N]. The binary tensor data extension works
as Triton implements it: the request's JSON is followed by the raw bytes of the inputs that
declare ``binary_data_size``, its length in the ``Inference-Header-Content-Length`` header; an
output asked for with ``binary_data`` (or every output, with the request parameter
``binary_data_output``, which ``tritonclient`` sets when it names no outputs) comes back the same
way. Errors are ``{"error": "<message>"}``.

This door only translates: the checks, the outputs and the metadata are the protocol core's
(:mod:`app.protocols.v2`), shared with the gRPC door.
"""

from __future__ import annotations

from typing import Any, Final

import numpy as np
import numpy.typing as npt
from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from app.protocols import v2
from app.protocols.common import MODEL_NAME, ModelRef, ProtocolError, invalid, resolve
from app.protocols.errors import ProtocolRoute
from app.protocols.routing import Operation, Verb, add_routes
from app.protocols.tensor_json import dumps, loads
from app.protocols.v2 import EXTENSIONS, PLATFORM, InferRequest, InferResponse, RequestedOutput
from app.serving.runtime import INPUT_KEY
from app.serving.store import ModelStore
from app.serving.worker import InferenceWorker
from app.settings import Settings

router = APIRouter(prefix="/v2", tags=["open-inference-protocol"], route_class=ProtocolRoute)

HEADER_LENGTH: Final = "Inference-Header-Content-Length"
#: Bodies parsed on the event loop; larger ones in the thread pool.
INLINE_MAX_BYTES: Final = 64 * 1024


# --- answers, as the protocol defines them ---------------------------------------------------


class V2ServerMetadataResponse(BaseModel):
    """``GET /v2``: the server's name, version and protocol extensions."""

    name: str
    version: str
    extensions: list[str] = Field(examples=[EXTENSIONS])


class V2LiveResponse(BaseModel):
    """``GET /v2/health/live``."""

    live: bool


class V2ReadyResponse(BaseModel):
    """``GET /v2/health/ready``: ready once a model version is loaded and warmed up."""

    ready: bool


class V2ModelReadyResponse(BaseModel):
    """``GET /v2/models/{name}[/versions/{v}]/ready``."""

    name: str
    ready: bool


class V2TensorMetadata(BaseModel):
    """A tensor of the model: name, datatype and shape (-1 for the batch dimension)."""

    name: str = Field(examples=[INPUT_KEY])
    datatype: str = Field(examples=["UINT8"])
    shape: list[int] = Field(examples=[[-1, 28, 28]])


class V2ModelMetadataResponse(BaseModel):
    """``GET /v2/models/{name}[/versions/{v}]``."""

    name: str = Field(examples=[MODEL_NAME])
    versions: list[str] = Field(examples=[["1"]])
    platform: str = Field(examples=[PLATFORM])
    inputs: list[V2TensorMetadata]
    outputs: list[V2TensorMetadata]


class V2OutputTensor(BaseModel):
    """One output: ``data`` flattened row-major, or ``parameters.binary_data_size`` bytes."""

    name: str = Field(examples=["digit"])
    datatype: str = Field(examples=["INT64"])
    shape: list[int] = Field(examples=[[1]])
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = Field(default=None, examples=[[7]])


class V2InferResponse(BaseModel):
    """Answer of ``infer``: the version that answered, the request's ``id``, the outputs."""

    model_name: str = Field(examples=[MODEL_NAME])
    model_version: str = Field(examples=["1"])
    id: str | None = None
    outputs: list[V2OutputTensor]


_EMPTY_IMAGE_DATA: Final = [0] * 784
_INFER_BODY: Final[dict[str, Any]] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["inputs"],
                    "properties": {
                        "id": {"type": "string"},
                        "parameters": {"type": "object"},
                        "inputs": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["name", "shape", "datatype"],
                                "properties": {
                                    "name": {"type": "string", "example": INPUT_KEY},
                                    "shape": {"type": "array", "items": {"type": "integer"}},
                                    "datatype": {"type": "string", "example": "UINT8"},
                                    "parameters": {"type": "object"},
                                    "data": {"type": "array", "items": {}},
                                },
                            },
                        },
                        "outputs": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["name"],
                                "properties": {
                                    "name": {"type": "string"},
                                    "parameters": {"type": "object"},
                                },
                            },
                        },
                    },
                },
                "example": {
                    "id": "42",
                    "inputs": [
                        {
                            "name": INPUT_KEY,
                            "shape": [1, 28, 28],
                            "datatype": "UINT8",
                            "data": _EMPTY_IMAGE_DATA,
                        }
                    ],
                },
            },
            "application/octet-stream": {
                "schema": {"type": "string", "format": "binary"},
                "description": "Binary tensor data extension: the JSON request, then the raw "
                "input bytes; the JSON's length in the Inference-Header-Content-Length header.",
            },
        },
    }
}

_METADATA_DESCRIPTION: Final = (
    "The model's metadata: its versions, platform, input `images` UINT8 [-1, 28, 28] and "
    "outputs `probabilities` FP32 [-1, 10] and `digit` INT64 [-1]."
)
_READY_DESCRIPTION: Final = (
    '200 `{"name": "mnist", "ready": true}` when the version can answer; 404 for another '
    "model or version, 503 while no version is loaded."
)
_INFER_DESCRIPTION: Final = (
    "Inference. Input `images`, datatype UINT8, shape [N, 28, 28] with N at most "
    "`DIGITS_MAX_BATCH_SIZE`: raw pixels, white ink on black as in MNIST, sent as they are "
    "(no decoding or normalization), in `data` (flat or nested, row-major) or as binary data. "
    "Outputs `probabilities` FP32 [N, 10] and `digit` INT64 [N], all unless `outputs` names "
    "some; `model_version` says which version answered and the request's `id` is echoed. "
    "Binary tensor data extension: send the JSON, then the bytes of each input that has the "
    "parameter `binary_data_size`, with the JSON's length in the header "
    "`Inference-Header-Content-Length`; outputs with the parameter `binary_data: true` (or all, "
    "with the request parameter `binary_data_output: true`) come back the same way "
    "(`application/octet-stream`, that header giving the JSON's length)."
)


def _json(content: Any, status: int = 200) -> Response:
    return Response(dumps(content), status_code=status, media_type="application/json")


def _store(request: Request) -> ModelStore:
    store: ModelStore = request.app.state.store
    return store


# --- server ----------------------------------------------------------------------------------


@router.get(
    "",
    summary="Open Inference Protocol: server metadata",
    description="The server's name and version, and the protocol extensions it supports.",
    response_model=V2ServerMetadataResponse,
)
async def server_metadata(request: Request) -> V2ServerMetadataResponse:
    """Name, version and extensions."""
    return V2ServerMetadataResponse(**v2.server_metadata(request.app.version))


@router.get(
    "/health/live",
    summary="Open Inference Protocol: liveness",
    description='200 `{"live": true}` as long as the process answers.',
    response_model=V2LiveResponse,
)
async def server_live() -> V2LiveResponse:
    """The process is up."""
    return V2LiveResponse(live=True)


@router.get(
    "/health/ready",
    summary="Open Inference Protocol: readiness",
    description='200 `{"ready": true}` once a model version is loaded and warmed up; 503 '
    '`{"ready": false}` until then.',
    response_model=V2ReadyResponse,
    responses={503: {"model": V2ReadyResponse, "description": "No model version is loaded yet."}},
)
async def server_ready(request: Request) -> Response:
    """Whether inference requests can be answered now."""
    ready = v2.server_ready(_store(request))
    return _json({"ready": ready}, 200 if ready else 503)


# --- models ----------------------------------------------------------------------------------


async def _metadata(request: Request, ref: ModelRef) -> Response:
    return _json(v2.model_metadata(_store(request), ref))


async def _ready(request: Request, ref: ModelRef) -> V2ModelReadyResponse:
    v2.ready_model(_store(request), ref)
    return V2ModelReadyResponse(name=MODEL_NAME, ready=True)


# --- infer -----------------------------------------------------------------------------------


def parse_infer(body: bytes, header_length: str | None, max_images: int) -> InferRequest:
    """Read an infer request: JSON, then (binary tensor data extension) raw input bytes.

    Raises:
        ProtocolError: ``invalid_argument`` with what is wrong.
    """
    binary = b""
    if header_length is not None:
        try:
            length = int(header_length)
        except ValueError:
            length = -1
        if not 0 < length <= len(body):
            raise invalid(
                f"{HEADER_LENGTH} must be the length in bytes of the JSON at the start of the "
                f"body (1 to {len(body)}), got {header_length!r}."
            )
        body, binary = body[:length], body[length:]
    try:
        request = loads(body)
    except (ValueError, RecursionError) as exc:
        raise invalid(
            f"The inference request is not valid JSON ({exc}). With binary tensor data, give "
            f"the JSON's length in the {HEADER_LENGTH} header."
        ) from None
    if not isinstance(request, dict):
        raise invalid("The inference request must be a JSON object with 'inputs'.")
    request_id = request.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise invalid("The request 'id' must be a string.")
    parameters = _parameters(request.get("parameters"), "request")
    inputs = request.get("inputs")
    if not isinstance(inputs, list):
        raise invalid(v2.ONE_INPUT)
    v2.check_input_count(len(inputs))
    if not isinstance(inputs[0], dict):
        raise invalid(v2.ONE_INPUT)
    images, used = _input_images(inputs[0], binary, max_images)
    if used != len(binary):
        raise invalid(
            f"The body has {len(binary) - used} bytes after the JSON and the inputs' binary "
            f"data; {HEADER_LENGTH} or binary_data_size is wrong."
        )
    return InferRequest(images, request_id, _outputs(request.get("outputs"), parameters))


def _parameters(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise invalid(f"The {where} 'parameters' must be a JSON object.")
    return value


def _input_images(
    tensor: dict[str, Any], binary: bytes, max_images: int
) -> tuple[npt.NDArray[np.uint8], int]:
    """The input's images (from ``data`` or the binary part), and how many binary bytes it used."""
    v2.check_input(tensor.get("name"), tensor.get("datatype"))
    shape = tensor.get("shape")
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) for d in shape
    ):
        raise invalid(f"Input '{INPUT_KEY}' needs a 'shape', a list of integers: [N, 28, 28].")
    parameters = _parameters(tensor.get("parameters"), f"input '{INPUT_KEY}'")
    if "shared_memory_region" in parameters:
        raise invalid("Shared-memory tensors are not supported: send the data in the request.")
    size = parameters.get("binary_data_size")
    if size is None:
        if "data" not in tensor:
            raise invalid(f"Input '{INPUT_KEY}' has no 'data' and no 'binary_data_size' parameter.")
        return v2.input_images(shape, max_images, data=tensor["data"]), 0
    if "data" in tensor:
        raise invalid(f"Input '{INPUT_KEY}' has both 'data' and 'binary_data_size': use one.")
    if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= len(binary):
        raise invalid(
            f"Input '{INPUT_KEY}' declares binary_data_size {size!r}, but {len(binary)} bytes "
            "follow the JSON."
        )
    return v2.input_images(shape, max_images, raw=binary[:size]), size


def _outputs(requested: Any, parameters: dict[str, Any]) -> list[RequestedOutput]:
    default_binary = parameters.get("binary_data_output", False)
    if not isinstance(default_binary, bool):
        raise invalid("The request parameter 'binary_data_output' must be true or false.")
    if requested is None:
        return v2.all_outputs(default_binary)
    if not isinstance(requested, list) or not requested:
        raise invalid("'outputs' must be a non-empty list of {\"name\": ...} objects.")
    # The names first: a list naming an output twice is refused after reading a few entries.
    names = v2.output_names(
        item.get("name") if isinstance(item, dict) else None for item in requested
    )
    chosen: list[RequestedOutput] = []
    for item, name in zip(requested, names, strict=True):
        options = _parameters(item.get("parameters"), f"output '{name}'")
        if "classification" in options or "shared_memory_region" in options:
            raise invalid(
                "The classification and shared-memory extensions are not supported: "
                "ask for the tensors themselves."
            )
        binary = options.get("binary_data", default_binary)
        if not isinstance(binary, bool):
            raise invalid(f"Output '{name}': 'binary_data' must be true or false.")
        chosen.append(RequestedOutput(name, binary))
    return chosen


def infer_response(answer: InferResponse) -> tuple[dict[str, Any], bytes]:
    """The response JSON and the binary output data that follows it (empty when none)."""
    tensors: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    for output in answer.outputs:
        tensor: dict[str, Any] = {
            "name": output.name,
            "datatype": output.datatype,
            "shape": list(output.array.shape),
        }
        if output.binary:
            data = output.array.tobytes()
            tensor["parameters"] = {"binary_data_size": len(data)}
            chunks.append(data)
        else:
            tensor["data"] = output.array.reshape(-1).tolist()
        tensors.append(tensor)
    response: dict[str, Any] = {"model_name": MODEL_NAME, "model_version": answer.model_version}
    if answer.id is not None:
        response["id"] = answer.id
    response["outputs"] = tensors
    return response, b"".join(chunks)


async def _infer(request: Request, ref: ModelRef) -> Response:
    state = request.app.state
    settings: Settings = state.settings
    model = resolve(state.store, ref)
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding != "identity":
        raise ProtocolError(
            "unsupported_media_type",
            f"Content-Encoding {encoding!r} is not accepted: send the request uncompressed.",
        )
    body = await request.body()
    header_length = request.headers.get(HEADER_LENGTH)
    if len(body) <= INLINE_MAX_BYTES:
        parsed = parse_infer(body, header_length, settings.max_batch_size)
    else:
        parsed = await run_in_threadpool(parse_infer, body, header_length, settings.max_batch_size)
    worker: InferenceWorker = state.worker
    answer = await v2.infer(worker, model, parsed)
    state.telemetry.count_images("v2:infer", len(parsed.images))
    content, binary = infer_response(answer)
    body_json = dumps(content)
    if not binary:
        return Response(body_json, media_type="application/json")
    return Response(
        body_json + binary,
        media_type="application/octet-stream",
        headers={HEADER_LENGTH: str(len(body_json))},
    )


# --- the routes that name a model (and a version) ----------------------------------------------

_LOOKUP_ERRORS: Final = (404, 503)
_INFER_ERRORS: Final = (400, 401, 404, 415, 503)

add_routes(
    router,
    Verb("GET", "", _metadata, _METADATA_DESCRIPTION, V2ModelMetadataResponse, _LOOKUP_ERRORS),
    [
        Operation("model", "get_model_metadata", "Open Inference Protocol: model metadata"),
        Operation(
            "version", "get_version_metadata", "Open Inference Protocol: metadata of one version"
        ),
    ],
    base="/models",
)
add_routes(
    router,
    Verb("GET", "/ready", _ready, _READY_DESCRIPTION, V2ModelReadyResponse, _LOOKUP_ERRORS),
    [
        Operation("model", "model_ready", "Open Inference Protocol: model readiness"),
        Operation("version", "version_ready", "Open Inference Protocol: version readiness"),
    ],
    base="/models",
)
add_routes(
    router,
    Verb(
        "POST",
        "/infer",
        _infer,
        _INFER_DESCRIPTION,
        V2InferResponse,
        _INFER_ERRORS,
        api_key=True,
        openapi_extra=_INFER_BODY,
    ),
    [
        Operation("model", "infer", "Open Inference Protocol: infer"),
        Operation("version", "infer_version", "Open Inference Protocol: infer with one version"),
    ],
    base="/models",
)
