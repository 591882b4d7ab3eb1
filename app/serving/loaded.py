"""A loaded model version: loaded, warmed and probed, and the one way it is called.

:func:`load_version` turns a version directory into a :class:`LoadedModel` or refuses it with a
reason (:class:`~app.serving.runtime.ModelLoadError`): the SavedModel through the runtime's
loader, a warm-up, the probe set (:mod:`app.serving.probe`), its ``metrics.json`` and its reader
calibration. :meth:`LoadedModel.predict` is the model call every door makes (through the
inference worker), and every answer passes :func:`~app.serving.output_check.check_output`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from app.reading.calibration import ReaderCalibration, load_calibration
from app.serving.output_check import check_output
from app.serving.probe import ProbeError, ProbeResult, run_probe
from app.serving.report import ModelReport, read_report
from app.serving.runtime import Answers, Images, Loader, ModelLoadError, Predictor, TensorInfo
from app.serving.runtime import load as load_predictor


@dataclass(eq=False)
class LoadedModel:
    """One loaded, warmed and probed model version: call :meth:`predict` from the worker."""

    version: int
    path: Path
    predictor: Predictor = field(repr=False)
    report: ModelReport | None
    """Its metrics.json, typed; None when it has none."""
    probe: ProbeResult | None
    loaded_at: datetime
    load_seconds: float
    calibration: ReaderCalibration = field(default_factory=ReaderCalibration)
    """Its reader calibration (reader.json and the likeness basis), loaded and swapped with it."""

    def predict(self, images: Images) -> Answers:
        """Probabilities [N, 10] and digits [N] for uint8 images [N, 28, 28]: one model call.

        Raises:
            ModelOutputError: when the answers are not probabilities and digits
                (:func:`~app.serving.output_check.check_output`; the probe makes this
                unlikely, and no caller may then loop on such values).
        """
        probabilities, digits = self.predictor.predict(images)
        check_output(probabilities, digits, len(images), version=self.version)
        return probabilities, digits

    @property
    def inputs(self) -> list[TensorInfo]:
        """The signature's input tensors."""
        return self.predictor.describe().inputs

    @property
    def outputs(self) -> list[TensorInfo]:
        """The signature's output tensors."""
        return self.predictor.describe().outputs

    @property
    def metrics(self) -> dict[str, Any] | None:
        """metrics.json as read (prefer :attr:`report`)."""
        return dict(self.report.raw) if self.report is not None else None

    @property
    def test_accuracy(self) -> float | None:
        """The test accuracy from metrics.json, if it has one."""
        return self.report.test_accuracy if self.report is not None else None

    @property
    def session_fast_path(self) -> bool:
        """Whether the TensorFlow predictor runs its session callable."""
        return bool(getattr(self.predictor, "session_fast_path", False))


def load_version(
    path: Path,
    version: int,
    *,
    loader: Loader = load_predictor,
    probe_min_accuracy: float = 0.0,
) -> LoadedModel:
    """Load one version directory, warm it up and check it on the probe set.

    Raises:
        ModelLoadError: with the reason, when the version is not servable.
    """
    started = time.perf_counter()
    predictor = loader(path)
    predictor.warm()
    try:
        probe = run_probe(predictor.predict, probe_min_accuracy)
    except ProbeError as exc:
        raise ModelLoadError(f"probe check failed: {exc}") from exc
    return LoadedModel(
        version=version,
        path=path,
        predictor=predictor,
        report=read_report(path),
        probe=probe,
        loaded_at=datetime.now(UTC),
        load_seconds=time.perf_counter() - started,
        calibration=load_calibration(path),
    )
