"""The baseline of the serving benchmark: a typical FastAPI MNIST app, as tutorials write it.

A sync handler (FastAPI runs it in its thread pool), the upload decoded with Pillow, and one
call of the SavedModel's ``serving_default`` signature per request; no batching, no limits, no
middleware. It serves the same bundled model (the newest version under ``DIGITS_MODELS_DIR``,
default ``models/mnist``) and answers in the same shape as ``/predict``. Bench-only: it lives
under benchmarks/ and never ships.

Run: ``uvicorn benchmarks.typical_app:app`` (from the repository root).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import tensorflow as tf
from fastapi import FastAPI, File, UploadFile
from PIL import Image

PATH = "/predict"


def _newest_version(models_dir: Path) -> Path:
    versions = [p for p in models_dir.iterdir() if p.name.isdigit() and p.is_dir()]
    return max(versions, key=lambda p: int(p.name))


_models_dir = Path(os.environ.get("DIGITS_MODELS_DIR", "models/mnist"))
_version = _newest_version(_models_dir)
model = tf.saved_model.load(str(_version))
infer = model.signatures["serving_default"]

app = FastAPI(title="typical MNIST app")


@app.post(PATH)
def predict(file: Annotated[UploadFile, File()]) -> dict[str, Any]:
    """Decode the upload, call the model once, answer."""
    image = Image.open(file.file).convert("L").resize((28, 28))
    pixels = np.asarray(image, dtype=np.uint8)[np.newaxis]
    outputs = infer(images=tf.constant(pixels))
    probabilities = outputs["probabilities"].numpy()[0]
    digit = int(outputs["digit"].numpy()[0])
    return {
        "digit": digit,
        "confidence": float(probabilities[digit]),
        "probabilities": probabilities.tolist(),
        "normalized": False,
        "model_version": int(_version.name),
    }
