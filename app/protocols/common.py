"""What the industry's inference protocols share: the model a request names, and its tensors.

The TensorFlow Serving REST API (:mod:`app.protocols.tfserving`) and the Open Inference
Protocol over REST (:mod:`app.protocols.v2_rest`) and gRPC (:mod:`app.protocols.v2_grpc`) are
doors onto the same model store and inference worker as ``/predict``. They take the signature's
own input, raw uint8 images [N, 28, 28] (no image decoding), and answer its own outputs.

Nothing here knows HTTP or gRPC: a problem is a :class:`ProtocolError` whose ``code`` is a
canonical status name (``invalid_argument``, ``not_found``, ...), which each door turns into its
protocol's status and error body.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from app.serving.loaded import LoadedModel
from app.serving.store import ModelNotReadyError, ModelStore, VersionNotFoundError

MODEL_NAME: Final = "mnist"
"""The one model name every protocol serves (the models directory's TF Serving name)."""
IMAGE_SHAPE: Final = (28, 28)


class ProtocolError(Exception):
    """A request a protocol door must refuse; ``code`` is a canonical (gRPC) status name."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def invalid(message: str) -> ProtocolError:
    """The request is malformed (HTTP 400, gRPC INVALID_ARGUMENT)."""
    return ProtocolError("invalid_argument", message)


def not_found(message: str) -> ProtocolError:
    """No such model, version or label (HTTP 404, gRPC NOT_FOUND)."""
    return ProtocolError("not_found", message)


# --- which model ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelRef:
    """The model a request names: its name, and a version (as written) or a label if any."""

    name: str
    version: str | None = None
    label: str | None = None


def parse_version(text: str | None) -> int | None:
    """A version named in a path or message ('' and None mean "the served one")."""
    if text is None or text == "":
        return None
    if not text.isascii() or not text.isdigit() or len(text) > 18:
        raise not_found(f"Model version {text!r} does not exist: versions are integers.")
    return int(text)


def resolve_model(
    store: ModelStore, name: str, version: int | None = None, label: str | None = None
) -> LoadedModel:
    """The loaded model a request names: ``name``, and a version or label if it gives one.

    Versions and labels are the store's (its version policy decides which are loaded).

    Raises:
        ProtocolError: ``not_found`` for another model name, version or label;
            ``unavailable`` while no version is loaded.
    """
    if name != MODEL_NAME:
        raise not_found(f"There is no model named {name!r}; this server serves {MODEL_NAME!r}.")
    try:
        return store.get(version, label)
    except ModelNotReadyError as exc:
        raise ProtocolError(
            "unavailable",
            f"Model {MODEL_NAME!r} has no version loaded yet; try again shortly "
            "(GET /model says why).",
        ) from exc
    except VersionNotFoundError as exc:
        raise not_found(f"Model {MODEL_NAME!r}: {exc.message}") from exc


def resolve(store: ModelStore, ref: ModelRef) -> LoadedModel:
    """The loaded model ``ref`` names (see :func:`resolve_model`)."""
    return resolve_model(store, ref.name, parse_version(ref.version), ref.label)


def served_models(store: ModelStore) -> list[LoadedModel]:
    """Every loaded version, newest first."""
    return store.served()


def protocol_shape(shape: Sequence[int | None]) -> list[int]:
    """A signature shape with unknown dimensions as -1, as both protocols write them."""
    return [-1 if dim is None else int(dim) for dim in shape]


# --- the input tensor ----------------------------------------------------------------------


def check_image_shape(shape: Sequence[int], max_images: int, what: str = "images") -> int:
    """The number of images in a declared tensor shape, which must be [N, 28, 28], 1 ≤ N ≤ max."""
    dims = list(shape)
    if len(dims) != 3 or dims[1:] != list(IMAGE_SHAPE) or dims[0] < 1:
        raise invalid(
            f"Input {what!r} must have shape [N, 28, 28] with N ≥ 1 (N images of 28×28 "
            f"pixels), got {dims}."
        )
    if dims[0] > max_images:
        raise invalid(
            f"Input {what!r} holds {dims[0]} images; at most {max_images} are accepted in one "
            "request (DIGITS_MAX_BATCH_SIZE). Split them over several requests."
        )
    return dims[0]


def images_from_values(values: Any, max_images: int, what: str = "images") -> npt.NDArray[np.uint8]:
    """uint8 images [N, 28, 28] from nested JSON lists of integers 0-255."""
    array = _integer_array(values, what)
    check_image_shape(array.shape, max_images, what)
    return _to_uint8(array, what)


def images_from_flat(
    values: Any, shape: Sequence[int], max_images: int, what: str = "images"
) -> npt.NDArray[np.uint8]:
    """uint8 images of a declared ``shape`` from JSON integers, flat or nested (row-major)."""
    check_image_shape(shape, max_images, what)
    array = _integer_array(values, what)
    expected = math.prod(shape)
    if array.size != expected:
        raise invalid(
            f"Input {what!r} declares shape {list(shape)} ({expected} values) but its data "
            f"holds {array.size} values."
        )
    return _to_uint8(array.reshape(tuple(shape)), what)


def images_from_bytes(
    data: bytes, shape: Sequence[int], max_images: int, what: str = "images"
) -> npt.NDArray[np.uint8]:
    """uint8 images of a declared ``shape`` from raw bytes (one byte per pixel, row-major)."""
    check_image_shape(shape, max_images, what)
    expected = math.prod(shape)
    if len(data) != expected:
        raise invalid(
            f"Input {what!r} declares shape {list(shape)} of UINT8, {expected} bytes, but "
            f"{len(data)} bytes were sent."
        )
    return np.frombuffer(data, dtype=np.uint8).reshape(tuple(shape))


def _integer_array(values: Any, what: str) -> npt.NDArray[Any]:
    if not isinstance(values, list):
        raise invalid(f"Input {what!r} must be a list of pixel values (integers 0-255).")
    try:
        array = np.asarray(values)
    except (ValueError, TypeError, RecursionError):
        array = None
    if array is None or array.dtype.kind not in "iu":
        raise invalid(
            f"Input {what!r} must be nested lists of integers 0-255, all rows of the same "
            "length (uint8 pixels, white ink on black, as in MNIST)."
        )
    return array


def _to_uint8(array: npt.NDArray[Any], what: str) -> npt.NDArray[np.uint8]:
    if array.size and (int(array.min()) < 0 or int(array.max()) > 255):
        raise invalid(f"Input {what!r} has pixel values outside 0-255: they must be uint8.")
    return array.astype(np.uint8, copy=False)
