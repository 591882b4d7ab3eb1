"""Fake model versions for the store's tests: no TensorFlow, so they run in milliseconds.

Each fake version directory holds ``variables/kind.txt`` naming how its fake model behaves and,
optionally, a ``metrics.json`` with a test accuracy. The "good" fake reads every probe digit
correctly (it looks the image up in the probe set); the bad ones reproduce issue 9's row 5.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import numpy.typing as npt

from app.serving.policy import VersionPolicy
from app.serving.probe import probe_set
from app.serving.runtime import Answers, ModelLoadError, Predictor, SignatureInfo, TensorInfo
from app.serving.store import ModelStore, StoreStatus

_PROBE_LABELS = {
    image.tobytes(): int(label)
    for image, label in zip(probe_set().images, probe_set().labels, strict=False)
}


_PROBE_ANSWERED = set(_PROBE_LABELS) | {
    np.zeros((28, 28), np.uint8).tobytes(),
    np.full((28, 28), 255, np.uint8).tobytes(),
}


class FakePredictor:
    """A model whose behaviour is named by ``kind``; see the module docstring."""

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def warm(self) -> None:
        if self.kind == "warm-fails":
            raise ModelLoadError("warm-up call failed: RuntimeError: boom")

    def describe(self) -> SignatureInfo:
        return SignatureInfo(
            name="serving_default",
            inputs=[TensorInfo("images", "uint8", [None, 28, 28])],
            outputs=[
                TensorInfo("probabilities", "float32", [None, 10]),
                TensorInfo("digit", "int64", [None]),
            ],
            runtime="fake",
        )

    def predict(self, images: npt.NDArray[np.uint8]) -> Answers:
        count = len(images)
        digits = np.array([_PROBE_LABELS.get(i.tobytes(), 0) for i in images], np.int64)
        if self.kind == "constant":
            digits[:] = 3
        probabilities = np.full((count, 10), 0.01, np.float32)
        probabilities[np.arange(count), digits] = 0.91
        if self.kind == "digit12":
            digits[:] = 12
        elif self.kind == "nan-inked":
            inked = images.reshape(count, -1).max(axis=1) > 0
            probabilities[inked] = np.nan
        elif self.kind == "negative":
            probabilities = probabilities * 1.5 - 0.05
        elif self.kind == "unnormalized":
            probabilities = probabilities * 0.5
        elif self.kind == "nan-off-probe":
            # Sane on every probe image, NaN on anything else: only a request can tell.
            unknown = [i.tobytes() not in _PROBE_ANSWERED for i in images]
            probabilities[unknown] = np.nan
        return probabilities, digits


def fake_loader(path: Path) -> Predictor:
    try:
        kind = (path / "variables" / "kind.txt").read_text().strip()
    except OSError as exc:
        raise ModelLoadError(
            f"SavedModel cannot be loaded: OSError: {path}/saved_model.pb"
        ) from exc
    return FakePredictor(kind)


def add_version(
    root: Path,
    version: int,
    kind: str = "good",
    accuracy: float | None = 0.97,
    real_digits: object = None,
) -> Path:
    """A fake version; ``accuracy`` and ``real_digits`` go into its metrics.json."""
    path = root / str(version)
    (path / "variables").mkdir(parents=True)
    (path / "variables" / "kind.txt").write_text(kind)
    if accuracy is not None:
        document: dict[str, object] = {"test": {"accuracy": accuracy}}
        if real_digits is not None:
            document["real_digits"] = real_digits
        (path / "metrics.json").write_text(json.dumps(document))
    return path


class Recorder:
    """A StoreObserver that remembers what it was told."""

    def __init__(self) -> None:
        self.failures: list[tuple[int, str]] = []
        self.holds: list[tuple[int, str]] = []
        self.statuses: list[StoreStatus] = []

    def load_failed(self, version: int, reason: str) -> None:
        self.failures.append((version, reason))

    def version_held(self, version: int, reason: str) -> None:
        self.holds.append((version, reason))

    def serving_changed(self, status: StoreStatus) -> None:
        self.statuses.append(status)


def make_store(
    root: Path, policy: VersionPolicy | None = None, probe_min_accuracy: float = 0.75
) -> tuple[ModelStore, Recorder]:
    recorder = Recorder()
    store = ModelStore(
        root,
        loader=fake_loader,
        policy=policy,
        probe_min_accuracy=probe_min_accuracy,
        observer=recorder,
    )
    return store, recorder


def served(store: ModelStore) -> list[int]:
    return [m.version for m in store.served()]
