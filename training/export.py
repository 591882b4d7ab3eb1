"""The SavedModel contract and atomic versioned export.

``models/mnist/<version>/`` follows TensorFlow Serving's layout. The SavedModel is a plain
``tf.Module`` (no Keras needed to load it) whose ``serving_default`` signature takes raw pixels
and runs :func:`training.preprocess.preprocess` itself::

    images:        uint8   [None, 28, 28]   white ink on black, as in MNIST
    probabilities: float32 [None, 10]
    digit:         int64   [None]           argmax of probabilities

A version directory appears whole or not at all: everything (SavedModel, metrics.json, report) is
written into ``.tmp-*`` beside it, which the server ignores, and renamed into place at the end.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import tensorflow as tf

from training.preprocess import IMAGE_SIZE, preprocess

SIGNATURE_NAME: Final = "serving_default"
INPUT_NAME: Final = "images"
TEMP_PREFIX: Final = ".tmp-"

SIGNATURE_SPEC: Final = {
    "name": SIGNATURE_NAME,
    "inputs": {INPUT_NAME: {"dtype": "uint8", "shape": [None, IMAGE_SIZE, IMAGE_SIZE]}},
    "outputs": {
        "probabilities": {"dtype": "float32", "shape": [None, 10]},
        "digit": {"dtype": "int64", "shape": [None]},
    },
}


class DigitClassifier(tf.Module):  # type: ignore[misc]  # tf.Module is untyped
    """Preprocessing + dense softmax as a self-contained ``tf.Module`` for export."""

    def __init__(
        self,
        kernel: npt.NDArray[np.float32],
        bias: npt.NDArray[np.float32],
        preprocessing: str,
    ) -> None:
        super().__init__(name="mnist_digit_classifier")
        self.kernel = tf.Variable(kernel, dtype=tf.float32, trainable=False, name="kernel")
        self.bias = tf.Variable(bias, dtype=tf.float32, trainable=False, name="bias")
        # A Python string: fixed when the signature is traced, so the graph holds only the ops
        # of this one method.
        self._preprocessing = preprocessing

    @tf.function(  # type: ignore[untyped-decorator]  # tensorflow ships no type hints
        input_signature=[
            tf.TensorSpec([None, IMAGE_SIZE, IMAGE_SIZE], tf.uint8, name=INPUT_NAME),
        ],
        autograph=False,
    )
    def serve(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
        """Raw uint8 digits -> ``probabilities`` and ``digit``."""
        features = preprocess(images, self._preprocessing)
        probabilities = tf.nn.softmax(tf.matmul(features, self.kernel) + self.bias)
        return {
            "probabilities": probabilities,
            "digit": tf.argmax(probabilities, axis=-1, output_type=tf.int64),
        }


def save_saved_model(
    directory: Path,
    kernel: npt.NDArray[np.float32],
    bias: npt.NDArray[np.float32],
    preprocessing: str,
) -> None:
    """Write the SavedModel (``saved_model.pb`` + ``variables/``) into ``directory``."""
    module = DigitClassifier(kernel, bias, preprocessing)
    tf.saved_model.save(module, str(directory), signatures={SIGNATURE_NAME: module.serve})


def load_signature(directory: Path) -> Any:
    """Load a SavedModel the way the server does and return its ``serving_default`` function."""
    return tf.saved_model.load(str(directory)).signatures[SIGNATURE_NAME]


def existing_versions(models_dir: Path) -> list[int]:
    """Integer version directories under ``models_dir``, ascending (temp dirs ignored)."""
    if not models_dir.is_dir():
        return []
    return sorted(int(p.name) for p in models_dir.iterdir() if p.is_dir() and p.name.isdecimal())


def next_version(models_dir: Path) -> int:
    """One more than the highest existing version; 1 for an empty models directory."""
    versions = existing_versions(models_dir)
    return versions[-1] + 1 if versions else 1


def write_version(
    models_dir: Path, version: int | None, build: Callable[[Path, int], None]
) -> Path:
    """Create ``models_dir/<version>`` atomically; return its path.

    ``build(tmp_dir, version)`` writes everything into a fresh ``.tmp-*`` directory beside the
    target; only if it returns is the directory renamed to its version number. If it raises (or
    the process dies), no version directory exists, and the temporary one is removed (or, after
    a hard kill, left under a name the server ignores).
    """
    models_dir.mkdir(parents=True, exist_ok=True)
    chosen = next_version(models_dir) if version is None else version
    if chosen < 1:
        raise ValueError(f"model versions are positive integers, got {chosen}")
    target = models_dir / str(chosen)
    if target.exists():
        raise FileExistsError(f"{target} already exists; choose another --version")
    tmp = Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{chosen}-", dir=models_dir))
    try:
        build(tmp, chosen)
        # mkdtemp makes the directory 0700; a model is meant to be read by the server's user.
        os.chmod(tmp, 0o755)
        # os.rename refuses to replace a non-empty directory, so a version that appeared
        # meanwhile (another training run) is never overwritten.
        os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target
