"""TensorFlow Serving's REST API (v1) onto the same model store and inference worker.

A client written for TensorFlow Serving works unchanged: model status, model metadata, and
``:predict`` in the row (``instances``) and columnar (``inputs``) formats, answering
``predictions`` or ``outputs``; errors are ``{"error": "<message>"}`` with TF Serving's
statuses. The input is the signature's own, raw uint8 images [N, 28, 28] in MNIST polarity (no
image decoding on this path), so the answers are the SavedModel signature's own output.

Starlette matches ``/v1/models/{model_name}:predict`` as written: a path parameter stops at
``/``, and the literal ``:predict`` after it is part of the route's pattern. Each verb (status,
metadata, predict) is written once and registered for the model, one version and a labelled
version from a table (:mod:`app.protocols.routing`).
"""

from __future__ import annotations

import re
from typing import Any, Final

import numpy as np
import numpy.typing as npt
from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from app.protocols.common import (
    MODEL_NAME,
    ModelRef,
    check_image_shape,
    images_from_values,
    invalid,
    not_found,
    parse_version,
    protocol_shape,
    resolve,
    resolve_model,
)
from app.protocols.errors import ProtocolRoute
from app.protocols.routing import Operation, Verb, add_routes
from app.protocols.tensor_json import dumps, loads, uint8_images
from app.serving.loaded import LoadedModel
from app.serving.runtime import INPUT_KEY, SIGNATURE, TensorInfo
from app.serving.store import ModelStore
from app.serving.worker import InferenceWorker
from app.settings import Settings

router = APIRouter(prefix="/v1/models", tags=["tensorflow-serving"], route_class=ProtocolRoute)

#: Bodies parsed on the event loop; larger ones in the thread pool.
INLINE_MAX_BYTES: Final = 64 * 1024
#: The signature's dtypes in TF Serving's spelling.
TF_DATATYPES: Final = {"uint8": "DT_UINT8", "float32": "DT_FLOAT", "int64": "DT_INT64"}


# --- answers, as TF Serving documents them ----------------------------------------------------


class TFServingStatus(BaseModel):
    """A version's status (TF Serving's ``StatusProto``)."""

    error_code: str = Field(examples=["OK"])
    error_message: str = Field(examples=[""])


class TFServingVersionStatus(BaseModel):
    """One version's state (TF Serving's ``ModelVersionStatus``)."""

    version: str = Field(description="The version, as a string (int64 in JSON).", examples=["1"])
    state: str = Field(description="`AVAILABLE` when served, `END` when it failed to load.")
    status: TFServingStatus


class TFServingModelStatus(BaseModel):
    """Answer of the model status API (TF Serving's ``GetTFServingModelStatus``)."""

    model_version_status: list[TFServingVersionStatus]


class TFServingModelSpec(BaseModel):
    """Which model and version (TF Serving's ``ModelSpec``)."""

    name: str = Field(examples=[MODEL_NAME])
    signature_name: str = Field(examples=[""])
    version: str = Field(examples=["1"])


class TFServingModelMetadata(BaseModel):
    """Answer of the metadata API (TF Serving's ``GetTFServingModelMetadata``).

    ``metadata.signature_def.signature_def`` maps each signature name to its ``inputs`` and
    ``outputs`` (dtype, ``tensor_shape`` with ``-1`` for the batch dimension, name) and its
    ``method_name``.
    """

    model_spec: TFServingModelSpec
    metadata: dict[str, Any]


class TFServingPredictResponse(BaseModel):
    """Answer of ``:predict``: ``predictions`` for the row format, ``outputs`` for columnar.

    Row: one object per instance, ``{"probabilities": [10 floats], "digit": int}``. Columnar:
    ``{"probabilities": [[10 floats], ...], "digit": [int, ...]}``.
    """

    predictions: list[dict[str, Any]] | None = None
    outputs: dict[str, Any] | None = None


_EMPTY_IMAGE: Final = [[0] * 28 for _ in range(28)]
_PREDICT_BODY: Final[dict[str, Any]] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "signature_name": {"type": "string", "default": SIGNATURE},
                        "instances": {
                            "type": "array",
                            "description": "Row format: one 28×28 list of integers 0-255 per "
                            'image, or one `{"images": [[...]]}` object per image.',
                            "items": {},
                        },
                        "inputs": {
                            "description": "Columnar format: [N, 28, 28] integers 0-255, or "
                            '`{"images": [N, 28, 28]}`.',
                        },
                    },
                },
                "examples": {
                    "row": {"value": {"instances": [_EMPTY_IMAGE]}},
                    "columnar": {"value": {"inputs": {INPUT_KEY: [_EMPTY_IMAGE]}}},
                },
            }
        },
    }
}

_STATUS_DESCRIPTION: Final = (
    "TF Serving's model status API: the state of each version (`AVAILABLE` when served, `END` "
    "with the reason when it failed to load). Versions are strings: TF Serving writes int64 "
    "values as JSON strings."
)
_METADATA_DESCRIPTION: Final = (
    "TF Serving's model metadata API: the `serving_default` signature, input `images` "
    "DT_UINT8 [-1, 28, 28]; outputs `probabilities` DT_FLOAT [-1, 10] and `digit` DT_INT64 "
    "[-1]; and the version (`model_spec.version`)."
)
_PREDICT_DESCRIPTION: Final = (
    'TF Serving\'s predict API. Row format `{"instances": [image, ...]}` answers '
    '`{"predictions": [{"probabilities": [...], "digit": d}, ...]}`; columnar format '
    '`{"inputs": {"images": [image, ...]}}` (or `{"inputs": [image, ...]}`) answers '
    '`{"outputs": {"probabilities": [[...], ...], "digit": [...]}}`. An image is 28×28 '
    "integers 0-255, white ink on black as in MNIST, sent as it is (no decoding or "
    "normalization); at most `DIGITS_MAX_BATCH_SIZE` images per request. `signature_name` "
    'may be omitted or `serving_default`. Errors are `{"error": "..."}`.'
)


def _json(content: Any) -> Response:
    return Response(dumps(content), media_type="application/json")


def _store(request: Request) -> ModelStore:
    store: ModelStore = request.app.state.store
    return store


# --- model status ----------------------------------------------------------------------------


async def _status(request: Request, ref: ModelRef) -> Response:
    store = _store(request)
    wanted = parse_version(ref.version)
    if ref.label is not None or ref.name != MODEL_NAME:
        resolve_model(store, ref.name, wanted, ref.label)  # raises the protocol's 404 (or 503)
    states: list[dict[str, Any]] = []
    if store.current is not None:
        states.append(_version_status(store.current.version, "AVAILABLE", "OK", ""))
    states.extend(_version_status(f.version, "END", "UNKNOWN", f.reason) for f in store.failed)
    if wanted is not None:
        states = [s for s in states if s["version"] == str(wanted)]
    if not states:
        what = f"version {wanted} of model" if wanted is not None else "any versions of model"
        raise not_found(f"Could not find {what} {MODEL_NAME}.")
    return _json({"model_version_status": states})


def _version_status(version: int, state: str, code: str, message: str) -> dict[str, Any]:
    return {
        "version": str(version),
        "state": state,
        "status": {"error_code": code, "error_message": message},
    }


# --- model metadata --------------------------------------------------------------------------


def _tensor(info: TensorInfo) -> dict[str, Any]:
    return {
        "dtype": TF_DATATYPES.get(info.dtype, f"DT_{info.dtype.upper()}"),
        "tensor_shape": {
            "dim": [{"size": str(dim), "name": ""} for dim in protocol_shape(info.shape)],
            "unknown_rank": False,
        },
        "name": info.name,
    }


async def _metadata(request: Request, ref: ModelRef) -> Response:
    model = resolve(_store(request), ref)
    signature = {
        "inputs": {t.name: _tensor(t) for t in model.inputs},
        "outputs": {t.name: _tensor(t) for t in model.outputs},
        "method_name": "tensorflow/serving/predict",
    }
    return _json(
        {
            "model_spec": {"name": MODEL_NAME, "signature_name": "", "version": str(model.version)},
            "metadata": {"signature_def": {"signature_def": {SIGNATURE: signature}}},
        }
    )


# --- predict ---------------------------------------------------------------------------------


def parse_predict(body: bytes, max_images: int) -> tuple[npt.NDArray[np.uint8], bool]:
    """The images of a ``:predict`` body, and whether it used the row format.

    Raises:
        ProtocolError: ``invalid_argument`` with what is wrong, in TF Serving's terms.
    """
    fast = _bulk_images(body, max_images)
    if fast is not None:
        return fast
    try:
        request = loads(body)
    except (ValueError, RecursionError) as exc:
        raise invalid(f"JSON Parse error: {exc}. Send a JSON object.") from None
    if not isinstance(request, dict):
        raise invalid('The request body must be a JSON object with "instances" or "inputs".')
    signature = request.get("signature_name", SIGNATURE)
    if signature != SIGNATURE:
        raise invalid(
            f'Serving signature name: "{signature}" not found in signature def; this model '
            f'has "{SIGNATURE}".'
        )
    unknown = set(request) - {"signature_name", "instances", "inputs"}
    if unknown:
        raise invalid(f"Unexpected key(s) {sorted(unknown)}: use 'instances' or 'inputs'.")
    if ("instances" in request) == ("inputs" in request):
        raise invalid(
            "The request must have exactly one of 'instances' (row format) or 'inputs' "
            "(columnar format)."
        )
    if "instances" in request:
        return _row_images(request["instances"], max_images), True
    values = request["inputs"]
    if isinstance(values, dict):
        if set(values) != {INPUT_KEY}:
            raise invalid(f"'inputs' must name exactly one input, '{INPUT_KEY}'.")
        values = values[INPUT_KEY]
    return images_from_values(values, max_images), False


def _row_images(instances: Any, max_images: int) -> npt.NDArray[np.uint8]:
    if not isinstance(instances, list) or not instances:
        raise invalid("'instances' must be a non-empty list, one 28×28 image per instance.")
    _check_instance_count(len(instances), max_images)
    named = [isinstance(item, dict) for item in instances]
    if any(named):
        if not all(named):
            raise invalid("'instances' mixes named ({...}) and bare instances: use one form.")
        if any(set(item) != {INPUT_KEY} for item in instances):
            raise invalid(f"Each named instance must have exactly one key, '{INPUT_KEY}'.")
        instances = [item[INPUT_KEY] for item in instances]
    return images_from_values(instances, max_images)


def _check_instance_count(count: int, max_images: int) -> None:
    if count > max_images:
        raise invalid(
            f"{count} instances were sent; at most {max_images} are accepted in one "
            "request (DIGITS_MAX_BATCH_SIZE). Split them over several requests."
        )


# The bodies bulk clients send: '{"instances": [...]}', '{"inputs": [...]}' or
# '{"inputs": {"images": [...]}}', with '"signature_name": "..."' first or last, any JSON
# whitespace. A string value here holds no quote, backslash or control character (JSON's rules,
# without escapes): anything else is left to the general parser.
_WS: Final = rb"[ \t\n\r]*"  # JSON's whitespace
_SIGNATURE_MEMBER: Final = _WS.join([rb'"signature_name"', b":", rb'"([^"\\\x00-\x1f]*)"'])
_HEAD: Final = re.compile(
    rb"\A" + _WS + rb"\{" + _WS
    + rb"(?:" + _SIGNATURE_MEMBER + _WS + b"," + _WS + rb")?"
    + _WS.join([rb'"(instances|inputs)"', b":", rb'(\{' + _WS + rb'"images"' + _WS + b":)?"])
    + _WS + rb"(?=\[)"
)  # fmt: skip
_TAIL: Final = re.compile(
    rb"\](" + _WS + rb"\})?(?:" + _WS + b"," + _WS + _SIGNATURE_MEMBER + rb")?"
    + _WS + rb"\}" + _WS + rb"\Z"
)  # fmt: skip
#: How far from the end of the body the end of its array is looked for.
_TAIL_BYTES: Final = 512


def _bulk_images(body: bytes, max_images: int) -> tuple[npt.NDArray[np.uint8], bool] | None:
    """:func:`parse_predict`'s answer for a bulk body read without a JSON parser, or ``None``.

    ``None`` for any body not in the form above (the general path reads it); the images and
    their count are checked as that path checks them, with the same messages.
    """
    head = _HEAD.match(body)
    if head is None:
        return None
    tail = _TAIL.search(body, max(head.end(), len(body) - _TAIL_BYTES))
    if tail is None:
        return None
    signatures = {head.group(1), tail.group(2)} - {None}
    row, named = head.group(2) == b"instances", head.group(3) is not None
    if (
        any(s != SIGNATURE.encode() for s in signatures)
        or named != (tail.group(1) is not None)
        or (row and named)
    ):
        return None
    images = uint8_images(body[head.end() : tail.start() + 1])
    if images is None:
        return None
    if row:
        _check_instance_count(len(images), max_images)
    check_image_shape(images.shape, max_images)
    return images, row


async def _predict(request: Request, ref: ModelRef) -> Response:
    state = request.app.state
    settings: Settings = state.settings
    model: LoadedModel = resolve(state.store, ref)
    body = await request.body()
    if len(body) <= INLINE_MAX_BYTES:
        images, row = parse_predict(body, settings.max_batch_size)
    else:
        images, row = await run_in_threadpool(parse_predict, body, settings.max_batch_size)
    worker: InferenceWorker = state.worker
    result = await worker.predict(model, images)
    state.telemetry.count_images("tfserving:predict", len(images))
    probabilities = result.probabilities.tolist()
    digits = result.digits.tolist()
    if row:
        return _json(
            {
                "predictions": [
                    {"probabilities": p, "digit": d}
                    for p, d in zip(probabilities, digits, strict=True)
                ]
            }
        )
    return _json({"outputs": {"probabilities": probabilities, "digit": digits}})


# --- the routes: each verb for the model, one version and a labelled version -------------------

_LOOKUP_ERRORS: Final = (404, 503)

add_routes(
    router,
    Verb("GET", "", _status, _STATUS_DESCRIPTION, TFServingModelStatus, (404,)),
    [
        Operation("model", "model_status", "TF Serving: model status"),
        Operation("version", "version_status", "TF Serving: status of one version"),
        Operation("label", "label_status", "TF Serving: status of a labelled version", (404, 503)),
    ],
)
add_routes(
    router,
    Verb(
        "GET", "/metadata", _metadata, _METADATA_DESCRIPTION, TFServingModelMetadata, _LOOKUP_ERRORS
    ),
    [
        Operation("model", "model_metadata", "TF Serving: model metadata"),
        Operation("version", "version_metadata", "TF Serving: metadata of one version"),
        Operation("label", "label_metadata", "TF Serving: metadata of a labelled version"),
    ],
)
add_routes(
    router,
    Verb(
        "POST",
        ":predict",
        _predict,
        _PREDICT_DESCRIPTION,
        TFServingPredictResponse,
        (400, 401, 404, 503),
        api_key=True,
        openapi_extra=_PREDICT_BODY,
    ),
    [
        Operation("model", "predict", "TF Serving: predict"),
        Operation("version", "predict_version", "TF Serving: predict with one version"),
        Operation("label", "predict_label", "TF Serving: predict with a labelled version"),
    ],
)
