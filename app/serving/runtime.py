"""The model runtime: everything TensorFlow-specific, behind the small :class:`Predictor` seam.

The store, the inference worker and the tests only know :class:`Predictor` (``warm``,
``predict``, ``describe``) and a loader (``Callable[[Path], Predictor]``, :func:`load` here).
Another runtime, or a test's fake, plugs in by providing the same few methods.

TensorFlow's one private API the service uses, the direct session callable, lives in its own
section at the end of this module (:func:`direct_callable`: what it buys, measured, and its
public fallback).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol

import numpy as np
import numpy.typing as npt

from app.core.logging import native_startup_filtered

logger = logging.getLogger(__name__)

SIGNATURE: Final = "serving_default"
INPUT_KEY: Final = "images"
OUTPUTS: Final = {"probabilities": "float32", "digit": "int64"}
#: How :meth:`TensorFlowPredictor.predict` calls the model (``session_call``): the direct
#: session callable (TensorFlow's private API, see direct_callable) or its public fallbacks.
DIRECT: Final = "direct"
MAKE_CALLABLE: Final = "make_callable"
EAGER: Final = "eager"

Images = npt.NDArray[np.uint8]
Answers = tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]


class ModelLoadError(Exception):
    """A version directory that cannot be served, with a reason a person can act on."""


@dataclass(frozen=True)
class TensorInfo:
    """One tensor of the signature, as the SavedModel declares it."""

    name: str
    dtype: str
    shape: list[int | None]


@dataclass(frozen=True)
class SignatureInfo:
    """What a predictor takes and answers, and which runtime runs it."""

    name: str
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    runtime: str


class Predictor(Protocol):
    """One loaded model as the store, the worker and the tests see it."""

    def warm(self) -> None:
        """Run the model once so the first request pays no set-up cost.

        Raises:
            ModelLoadError: when the model loads but cannot answer.
        """

    def predict(self, images: Images) -> Answers:
        """Probabilities [N, 10] and digits [N] for uint8 images [N, 28, 28]: one model call."""

    def describe(self) -> SignatureInfo:
        """The signature's tensors."""


Loader = Callable[[Path], Predictor]


class Servable(Protocol):
    """A predictor with the version number it answers as: what the inference worker runs."""

    @property
    def version(self) -> int:
        """The model version."""

    def predict(self, images: Images) -> Answers:
        """Probabilities [N, 10] and digits [N] for uint8 images [N, 28, 28]: one model call."""


def import_tensorflow() -> None:
    """Import TensorFlow (seconds), its native start-up lines held to ``TF_CPP_MIN_LOG_LEVEL``."""
    if "tensorflow" in sys.modules:
        return
    with native_startup_filtered():
        import tensorflow  # noqa: F401


def configure_tensorflow(intra_op_threads: int, inter_op_threads: int) -> None:
    """Set TensorFlow's thread pools; only possible before TensorFlow first runs anything.

    When TensorFlow is already running with other values (several apps in one process, as in
    tests), the existing pools are kept and a warning says so.
    """
    import tensorflow as tf

    threading_cfg = tf.config.threading
    current = (
        threading_cfg.get_intra_op_parallelism_threads(),
        threading_cfg.get_inter_op_parallelism_threads(),
    )
    if current == (intra_op_threads, inter_op_threads):
        return
    try:
        threading_cfg.set_intra_op_parallelism_threads(intra_op_threads)
        threading_cfg.set_inter_op_parallelism_threads(inter_op_threads)
    except RuntimeError:
        logger.warning(
            "TensorFlow is already initialized with intra_op=%d inter_op=%d threads; "
            "the configured %d/%d take effect on the next start",
            *current,
            intra_op_threads,
            inter_op_threads,
        )


def first_line(exc: BaseException) -> str:
    """The exception's type and the first line of its message."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _tensor_info(spec: Any, default_name: str) -> TensorInfo:
    shape = [None if dim is None else int(dim) for dim in spec.shape.as_list()]
    return TensorInfo(name=spec.name or default_name, dtype=spec.dtype.name, shape=shape)


class TensorFlowPredictor:
    """A SavedModel's ``serving_default`` signature; see :func:`load`."""

    def __init__(self, path: Path, module: Any, signature: Any, info: SignatureInfo) -> None:
        self.path = path
        self._module = module
        self._signature = signature
        self._info = info
        self._fast_call: Callable[[Images], list[Any]] | None = None
        self._session_call = EAGER

    @property
    def session_fast_path(self) -> bool:
        """Whether :meth:`predict` runs the session callable (see :meth:`warm`)."""
        return self._fast_call is not None

    @property
    def session_call(self) -> str:
        """How :meth:`predict` calls the model: ``direct``, ``make_callable`` or ``eager``.

        ``direct`` is TensorFlow's private fast path (:func:`direct_callable`), the other two
        its public fallbacks.
        """
        return self._session_call

    def describe(self) -> SignatureInfo:
        """The signature's tensors."""
        return self._info

    def warm(self) -> None:
        """Run the signature once, then set up the session fast path when it agrees.

        Raises:
            ModelLoadError: when the call fails or answers in the wrong shapes.
        """
        import tensorflow as tf

        try:
            warm = self._signature(**{INPUT_KEY: tf.zeros([2, 28, 28], tf.uint8)})
            probabilities = np.asarray(warm["probabilities"])
            digits = np.asarray(warm["digit"])
        except Exception as exc:  # a graph that loads but cannot run is just as unservable
            raise ModelLoadError(f"warm-up call failed: {first_line(exc)}") from exc
        if probabilities.shape != (2, 10) or digits.shape != (2,):
            raise ModelLoadError(
                f"warm-up returned probabilities {probabilities.shape} and digit "
                f"{digits.shape}, expected (N, 10) and (N,)"
            )
        fast = _session_callable(self.path, self._signature)
        self._fast_call, self._session_call = fast if fast is not None else (None, EAGER)

    def predict(self, images: Images) -> Answers:
        """Probabilities [N, 10] and digits [N] for uint8 images [N, 28, 28]: one model call."""
        if self._fast_call is not None:
            probabilities, digits = self._fast_call(images)
            return (
                np.asarray(probabilities, dtype=np.float32),
                np.asarray(digits, dtype=np.int64),
            )
        import tensorflow as tf

        result = self._signature(**{INPUT_KEY: tf.constant(images)})
        return (
            np.asarray(result["probabilities"], dtype=np.float32),
            np.asarray(result["digit"], dtype=np.int64),
        )


def load(path: Path) -> TensorFlowPredictor:
    """Load a SavedModel directory and check its signature against the contract (not warmed).

    Reasons name files relative to the version directory: they are shown in ``/model``.

    Raises:
        ModelLoadError: with the reason, when the directory is not a servable model.
    """
    import tensorflow as tf

    if not (path / "saved_model.pb").is_file():
        raise ModelLoadError("no saved_model.pb in the version directory")
    try:
        module = tf.saved_model.load(str(path))
    except Exception as exc:  # TensorFlow raises many types for a damaged SavedModel
        raise ModelLoadError(f"SavedModel cannot be loaded: {first_line(exc)}") from exc
    signatures = getattr(module, "signatures", {})
    if SIGNATURE not in signatures:
        raise ModelLoadError(
            f"no '{SIGNATURE}' signature (found: {', '.join(signatures) or 'none'})"
        )
    signature = signatures[SIGNATURE]
    _, input_specs = signature.structured_input_signature
    spec = input_specs.get(INPUT_KEY)
    if spec is None or spec.dtype != tf.uint8 or spec.shape.as_list()[1:] != [28, 28]:
        found = ", ".join(
            f"{name} {s.dtype.name} {s.shape.as_list()}" for name, s in input_specs.items()
        )
        raise ModelLoadError(
            f"input '{INPUT_KEY}' must be uint8 [None, 28, 28], got {found or 'no inputs'}"
        )
    output_specs = signature.structured_outputs
    for key, dtype in OUTPUTS.items():
        if key not in output_specs or output_specs[key].dtype.name != dtype:
            raise ModelLoadError(f"output '{key}' ({dtype}) is missing or has another type")
    info = SignatureInfo(
        name=SIGNATURE,
        inputs=[_tensor_info(spec, INPUT_KEY)],
        outputs=[_tensor_info(output_specs[key], key) for key in OUTPUTS],
        runtime=f"tensorflow {tf.__version__}",
    )
    return TensorFlowPredictor(path, module, signature, info)


def _session_callable(
    path: Path, signature: Any
) -> tuple[Callable[[Images], list[Any]], str] | None:
    """The same signature as a session callable and its kind, or None when not possible.

    Why: an eager call of the loaded signature spends most of its time in the Python wrapper
    (structured-argument handling, eager tensor conversion); a session callable made from the
    SavedModel's ``serve`` graph runs the same graph with less time on the calling thread,
    which holds the GIL the event loop needs. The callable is only used when it gives the
    eager call's answers on a probe batch (an empty image, a stroke, a full page): the same
    digits, and probabilities within 1e-5 (a batch may sum in another order, as the eager
    call's own batched answers do). A SavedModel without the ``serve`` tag, or anything else
    unexpected, keeps the eager call.
    """
    import tensorflow as tf

    probe = np.zeros([3, 28, 28], np.uint8)
    probe[1, 4:24, 12:16] = 255
    probe[2] = 200
    try:
        expected = signature(**{INPUT_KEY: tf.constant(probe)})
        graph = tf.Graph()
        # A TF1 session has its own thread pools; give it the counts configure_tensorflow set
        # for eager calls (0 still means "let TensorFlow choose"). One inter-op thread becomes
        # the caller's own (TensorFlow's -1): the same one-op-at-a-time schedule, without
        # waking a pool thread for every call, which cost more than this small graph's work.
        threading_config = tf.config.threading
        inter_op = threading_config.get_inter_op_parallelism_threads()
        session = tf.compat.v1.Session(
            graph=graph,
            config=tf.compat.v1.ConfigProto(
                intra_op_parallelism_threads=threading_config.get_intra_op_parallelism_threads(),
                inter_op_parallelism_threads=-1 if inter_op == 1 else inter_op,
            ),
        )
        tf_logger = tf.get_logger()
        level = tf_logger.level
        # The TF1 loader announces its deprecation on every load; it is used deliberately.
        tf_logger.setLevel(logging.ERROR)
        try:
            with graph.as_default():
                meta = tf.compat.v1.saved_model.loader.load(
                    session, [tf.saved_model.SERVING], str(path)
                )
        finally:
            tf_logger.setLevel(level)
        signature_def = meta.signature_def[SIGNATURE]
        feed = graph.get_tensor_by_name(signature_def.inputs[INPUT_KEY].name)
        fetches = [graph.get_tensor_by_name(signature_def.outputs[key].name) for key in OUTPUTS]
        call, kind = _feed_callable(session, feed, fetches)
        answers = call(probe)
    except Exception as exc:  # the eager signature already works: keep it
        logger.info("model %s: no session fast path (%s)", path.name, first_line(exc))
        return None
    probabilities, digits = answers
    expected_probabilities = np.asarray(expected["probabilities"])
    same = np.array_equal(digits, np.asarray(expected["digit"])) and (
        np.allclose(probabilities, expected_probabilities, rtol=0, atol=1e-5, equal_nan=True)
    )
    if not same:
        logger.info("model %s: no session fast path (answers differ from the signature)", path)
        return None
    return call, kind


# --- TensorFlow's private API: the direct session callable ---------------------------------
#
# The one place the service uses a private name of TensorFlow. Everything about it (why, what
# it was measured to buy, the public fallback and when that is taken) is in direct_callable's
# docstring; tests/app/serving/test_runtime_private_api.py fails when an installed TensorFlow
# no longer takes this path, and runs the service through the fallback. Kept in this module
# because it is the only one on the serving path that imports TensorFlow.

#: The private method of ``tf.compat.v1.Session`` (defined on ``BaseSession``).
DIRECT_CALLABLE_METHOD: Final = "_make_callable_from_options"


def direct_callable(
    session: Any, feed: Any, fetches: list[Any]
) -> Callable[[Images], list[Any]] | None:
    """``session``'s callable from ``feed`` to ``fetches`` through TensorFlow's private API.

    **What it buys.** ``Session.make_callable`` with a feed list (public) runs the whole generic
    ``Session.run`` machinery in Python on every call (fetch handlers, feed conversion), several
    times the cost of this graph's work. A callable made from ``CallableOptions`` by
    ``Session._make_callable_from_options`` (private, as is ``CallableOptions``, reached through
    ``tensorflow.core.protobuf.config_pb2``) hands the array straight to the C++ session (what
    Keras's TF1 backend did); the same kernels run, so the answers are the same.

    **Measured** (commit 4848f91, CHANGELOG.md "Serving: the event loop's cost per request"; py-spy
    and per-thread CPU from ``/proc`` at concurrency 1, on the project's machine: AMD EPYC,
    2 cores, 24 GiB, shared with other jobs): one batch-1 call 220 → 60 µs of CPU; ``/predict``
    at c1 against the typical FastAPI app from 1.05× to 1.46×. (The eager signature call, the
    last resort, was measured at about 320 µs per image: commit 425ae6f.)

    **Public-API fallback.** ``session.make_callable(fetches, feed_list=[feed])``, built by
    :func:`_feed_callable`: the same graph and answers at the 220 µs above. It is taken when
    this answers None: the session has no ``_make_callable_from_options``, or
    ``config_pb2.CallableOptions`` cannot be imported or filled, or the method refuses the
    options (another signature or behaviour in another TensorFlow release). Whichever callable
    is made must then pass the probe check of :func:`_session_callable`, else the eager
    signature stays.
    """
    make = getattr(session, DIRECT_CALLABLE_METHOD, None)
    if make is None:
        logger.info(
            "TensorFlow %s has no Session.%s: the model call uses make_callable",
            _tf_version(),
            DIRECT_CALLABLE_METHOD,
        )
        return None
    try:
        from tensorflow.core.protobuf import config_pb2

        options = config_pb2.CallableOptions()
        options.feed.append(feed.name)
        options.fetch.extend(fetch.name for fetch in fetches)
        direct: Callable[[Images], list[Any]] = make(options)
    except Exception as exc:  # an older or newer TensorFlow: the public path works
        logger.info("no direct session callable (%s); using make_callable", first_line(exc))
        return None
    return direct


def _tf_version() -> str:
    import tensorflow as tf

    return str(tf.__version__)


# --- end of TensorFlow's private API --------------------------------------------------------


def _feed_callable(
    session: Any, feed: Any, fetches: list[Any]
) -> tuple[Callable[[Images], list[Any]], str]:
    """``session``'s callable from ``feed`` to ``fetches`` and which one it is.

    The direct callable (:func:`direct_callable`) when TensorFlow offers it, else the public
    ``make_callable``.
    """
    direct = direct_callable(session, feed, fetches)
    if direct is not None:
        return direct, DIRECT
    generic: Callable[[Images], list[Any]] = session.make_callable(fetches, feed_list=[feed])
    return generic, MAKE_CALLABLE
