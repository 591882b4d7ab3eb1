"""Model versions on disk: find them, load and warm them, and swap the served one atomically.

The layout is TensorFlow Serving's: ``<models_dir>/<integer version>/`` holding a SavedModel
with the ``serving_default`` signature and a ``metrics.json``. The newest version that loads is
served. A version that fails to load is remembered with its reason (and retried only when its
directory changes), and never served.

Requests take :attr:`ModelStore.current` once, when they start, and keep that
:class:`LoadedModel`; a swap replaces the store's reference, never the object, so a request in
flight finishes on the version it started with.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

logger = logging.getLogger(__name__)

SIGNATURE: Final = "serving_default"
INPUT_KEY: Final = "images"
OUTPUTS: Final = {"probabilities": "float32", "digit": "int64"}


class ModelLoadError(Exception):
    """A version directory that cannot be served, with a reason a person can act on."""


@dataclass(frozen=True)
class TensorInfo:
    """One tensor of the signature, as the SavedModel declares it."""

    name: str
    dtype: str
    shape: list[int | None]


@dataclass(frozen=True)
class FailedVersion:
    """A version that could not be loaded, and why."""

    version: int
    reason: str
    failed_at: datetime
    mtime_ns: int


@dataclass(eq=False)
class LoadedModel:
    """One loaded, warmed-up model version: call :meth:`predict` from the inference thread."""

    version: int
    path: Path
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    metrics: dict[str, Any] | None
    loaded_at: datetime
    load_seconds: float
    _module: Any = field(repr=False)
    _signature: Any = field(repr=False)
    _fast_call: Callable[[npt.NDArray[np.uint8]], list[Any]] | None = field(
        default=None, repr=False
    )

    def predict(
        self, images: npt.NDArray[np.uint8]
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
        """Probabilities [N, 10] and digits [N] for uint8 images [N, 28, 28]: one model call."""
        if self._fast_call is not None:
            probabilities, digits = self._fast_call(images)
            return (
                np.asarray(probabilities, dtype=np.float32),
                np.asarray(digits, dtype=np.int64),
            )
        import tensorflow as tf

        result = self._signature(**{INPUT_KEY: tf.constant(images)})
        probabilities = np.asarray(result["probabilities"], dtype=np.float32)
        digits = np.asarray(result["digit"], dtype=np.int64)
        return probabilities, digits

    @property
    def session_fast_path(self) -> bool:
        """Whether :meth:`predict` runs the session callable (see ``_session_callable``)."""
        return self._fast_call is not None

    @property
    def test_accuracy(self) -> float | None:
        """The test accuracy from metrics.json, if it has one."""
        test = (self.metrics or {}).get("test")
        value = test.get("accuracy") if isinstance(test, Mapping) else None
        return float(value) if isinstance(value, int | float) else None


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


def versions_on_disk(models_dir: Path) -> list[int]:
    """Integer-named version directories, newest first; hidden and other names are ignored."""
    try:
        entries = list(models_dir.iterdir())
    except OSError:
        return []
    versions = [
        int(entry.name)
        for entry in entries
        if entry.name.isdigit() and not entry.name.startswith(".") and entry.is_dir()
    ]
    return sorted(versions, reverse=True)


def _tensor_info(spec: Any, default_name: str) -> TensorInfo:
    shape = [None if dim is None else int(dim) for dim in spec.shape.as_list()]
    return TensorInfo(name=spec.name or default_name, dtype=spec.dtype.name, shape=shape)


def load_version(path: Path, version: int) -> LoadedModel:
    """Load one version directory, check its signature against the contract, and warm it up.

    Raises:
        ModelLoadError: with the reason, when the directory is not a servable model.
    """
    import tensorflow as tf

    started = time.perf_counter()
    if not (path / "saved_model.pb").is_file():
        raise ModelLoadError(f"{path} has no saved_model.pb")
    try:
        module = tf.saved_model.load(str(path))
    except Exception as exc:  # TensorFlow raises many types for a damaged SavedModel
        raise ModelLoadError(f"SavedModel cannot be loaded: {_first_line(exc)}") from exc
    signatures = getattr(module, "signatures", {})
    if SIGNATURE not in signatures:
        raise ModelLoadError(
            f"no '{SIGNATURE}' signature (found: {', '.join(signatures) or 'none'})"
        )
    signature = signatures[SIGNATURE]
    _, input_specs = signature.structured_input_signature
    spec = input_specs.get(INPUT_KEY)
    if spec is None or spec.dtype != tf.uint8 or spec.shape.as_list()[1:] != [28, 28]:
        raise ModelLoadError(
            f"input '{INPUT_KEY}' must be uint8 [None, 28, 28], got {input_specs!r}"
        )
    output_specs = signature.structured_outputs
    for key, dtype in OUTPUTS.items():
        if key not in output_specs or output_specs[key].dtype.name != dtype:
            raise ModelLoadError(f"output '{key}' ({dtype}) is missing or has another type")

    try:
        warm = signature(**{INPUT_KEY: tf.zeros([2, 28, 28], tf.uint8)})
        probabilities = np.asarray(warm["probabilities"])
        digits = np.asarray(warm["digit"])
    except Exception as exc:  # a graph that loads but cannot run is just as unservable
        raise ModelLoadError(f"warm-up call failed: {_first_line(exc)}") from exc
    if probabilities.shape != (2, 10) or digits.shape != (2,):
        raise ModelLoadError(
            f"warm-up returned probabilities {probabilities.shape} and digit {digits.shape}, "
            "expected (N, 10) and (N,)"
        )
    if not np.all(np.isfinite(probabilities)):
        raise ModelLoadError("warm-up returned non-finite probabilities")

    return LoadedModel(
        _fast_call=_session_callable(path, signature),
        version=version,
        path=path,
        inputs=[_tensor_info(spec, INPUT_KEY)],
        outputs=[_tensor_info(output_specs[key], key) for key in OUTPUTS],
        metrics=_read_metrics(path),
        loaded_at=datetime.now(UTC),
        load_seconds=time.perf_counter() - started,
        _module=module,
        _signature=signature,
    )


def _session_callable(
    path: Path, signature: Any
) -> Callable[[npt.NDArray[np.uint8]], list[Any]] | None:
    """The same signature as a session callable, or None when that is not possible.

    Why: an eager call of the loaded signature costs ~320 µs for one image, most of it the
    Python wrapper (structured-argument handling, eager tensor conversion); a session
    callable made from the SavedModel's ``serve`` graph runs the same graph for ~255 µs, with
    about 30 % less time on the calling thread, which holds the GIL the event loop needs.
    The callable is only used when it gives the eager call's answers on a probe batch (an
    empty image, a stroke, a full page): the same digits, and probabilities within 1e-5 (a
    batch may sum in another order, as the eager call's own batched answers do; one image
    gives bit-identical answers on the bundled model). A SavedModel without the ``serve`` tag, or
    anything else unexpected, keeps the eager call.
    """
    import tensorflow as tf

    probe = np.zeros([3, 28, 28], np.uint8)
    probe[1, 4:24, 12:16] = 255
    probe[2] = 200
    try:
        expected = signature(**{INPUT_KEY: tf.constant(probe)})
        graph = tf.Graph()
        # A TF1 session has its own thread pools; give it the counts configure_tensorflow set
        # for eager calls (0 still means "let TensorFlow choose").
        threading_config = tf.config.threading
        session = tf.compat.v1.Session(
            graph=graph,
            config=tf.compat.v1.ConfigProto(
                intra_op_parallelism_threads=threading_config.get_intra_op_parallelism_threads(),
                inter_op_parallelism_threads=threading_config.get_inter_op_parallelism_threads(),
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
        signature = meta.signature_def[SIGNATURE]
        feed = graph.get_tensor_by_name(signature.inputs[INPUT_KEY].name)
        fetches = [graph.get_tensor_by_name(signature.outputs[key].name) for key in OUTPUTS]
        call: Callable[[npt.NDArray[np.uint8]], list[Any]] = session.make_callable(
            fetches, feed_list=[feed]
        )
        answers = call(probe)
    except Exception as exc:  # the eager signature already works: keep it
        logger.info("model %s: no session fast path (%s)", path, _first_line(exc))
        return None
    probabilities, digits = answers
    if not (
        np.array_equal(digits, np.asarray(expected["digit"]))
        and np.allclose(probabilities, np.asarray(expected["probabilities"]), rtol=0, atol=1e-5)
    ):
        logger.info("model %s: no session fast path (answers differ from the signature)", path)
        return None
    return call


def _read_metrics(path: Path) -> dict[str, Any] | None:
    # The model is servable without its report; /metrics then says the evaluation is unknown.
    try:
        metrics = json.loads((path / "metrics.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        logger.warning("model %s: metrics.json unreadable (%s)", path, _first_line(exc))
        return None
    return metrics if isinstance(metrics, dict) else None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


class ModelStore:
    """The served model version and the versions on disk; thread-safe.

    :meth:`refresh` brings the store up to date with the directory (the lifespan calls it once,
    the poller periodically). ``on_change`` is called with the new model after every swap.
    """

    def __init__(
        self,
        models_dir: Path,
        on_change: Callable[[LoadedModel], None] | None = None,
        loader: Callable[[Path, int], LoadedModel] = load_version,
    ) -> None:
        self.models_dir = models_dir
        self._on_change = on_change
        self._loader = loader
        self._current: LoadedModel | None = None
        self._failed: dict[int, FailedVersion] = {}
        self._refresh_lock = threading.Lock()
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None
        self.last_checked: datetime | None = None
        self._reported_empty = False
        self._polling = False

    @property
    def current(self) -> LoadedModel | None:
        """The model to use for a request that starts now (None until one is loaded)."""
        return self._current

    @property
    def failed(self) -> list[FailedVersion]:
        """Versions that failed to load, newest first."""
        return sorted(self._failed.values(), key=lambda f: f.version, reverse=True)

    def refresh(self) -> LoadedModel | None:
        """Serve the newest loadable version on disk; return the served model afterwards.

        Versions are tried newest first down to the one being served; each failure is logged
        and remembered. The current model keeps serving whatever goes wrong. Should the served
        version's directory disappear, the newest remaining one takes over (a rollback).
        """
        with self._refresh_lock:
            self.last_checked = datetime.now(UTC)
            on_disk = versions_on_disk(self.models_dir)
            current = self._current
            empty = not on_disk and current is None
            if empty and not self._reported_empty:
                # Once, not at every poll: the state is what matters, not its repetition.
                logger.error(
                    "not ready: no model version in %s (expected integer-named SavedModel "
                    "directories such as %s/1)%s",
                    self.models_dir.resolve(),
                    self.models_dir,
                    "; still looking" if self._polling else "",
                )
            self._reported_empty = empty
            for version in on_disk:
                if current is not None and version == current.version:
                    break
                path = self.models_dir / str(version)
                mtime = _mtime_ns(path)
                failed = self._failed.get(version)
                if failed is not None and failed.mtime_ns == mtime:
                    continue
                try:
                    model = self._loader(path, version)
                except Exception as exc:
                    reason = str(exc) if isinstance(exc, ModelLoadError) else _first_line(exc)
                    self._failed[version] = FailedVersion(version, reason, datetime.now(UTC), mtime)
                    logger.error("model version %d not served: %s", version, reason)
                    continue
                self._failed.pop(version, None)
                self._swap(model)
                break
            return self._current

    def _swap(self, model: LoadedModel) -> None:
        previous = self._current
        self._current = model
        logger.info(
            "serving model version %d from %s (loaded and warmed in %.2f s%s)",
            model.version,
            model.path,
            model.load_seconds,
            f"; was version {previous.version}" if previous else "",
        )
        if self._on_change is not None:
            self._on_change(model)

    def start_polling(self, interval_seconds: float) -> None:
        """Check the directory every ``interval_seconds`` in a background thread."""
        if interval_seconds <= 0 or self._poller is not None:
            return
        self._polling = True
        self._stop.clear()
        self._poller = threading.Thread(
            target=self._poll, args=(interval_seconds,), name="model-poller", daemon=True
        )
        self._poller.start()

    def stop_polling(self, timeout: float = 30.0) -> None:
        """Stop the poller, waiting for a load in progress to finish."""
        self._stop.set()
        if self._poller is not None:
            self._poller.join(timeout)
            self._poller = None

    def _poll(self, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                self.refresh()
            except Exception:
                # The poller must outlive any surprise; the next round tries again.
                logger.exception("model poll failed")


def _mtime_ns(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return 0
