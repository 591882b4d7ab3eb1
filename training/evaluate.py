"""Evaluation of an exported model through its signature: accuracy, loss, per-class scores.

Everything in metrics.json is computed here from the SavedModel's own outputs, so the numbers
describe exactly what the server will answer, preprocessing included.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import tensorflow as tf

from training.export import INPUT_NAME
from training.losses import categorical_cross_entropy
from training.model import NUM_CLASSES, one_hot


@dataclass(frozen=True)
class Evaluation:
    """A model's predictions on a labelled set and the scores derived from them."""

    labels: npt.NDArray[np.int64]
    probabilities: npt.NDArray[np.float32]
    digits: npt.NDArray[np.int64]
    loss: float
    """Mean categorical cross-entropy (:func:`training.losses.categorical_cross_entropy`)."""

    @property
    def accuracy(self) -> float:
        """Fraction of examples whose predicted digit equals the label."""
        return float(np.mean(self.digits == self.labels))

    @property
    def confusion(self) -> npt.NDArray[np.int64]:
        """[10, 10] counts; rows are true digits, columns predicted digits."""
        return confusion_matrix(self.labels, self.digits)

    def per_class(self) -> list[dict[str, float | int]]:
        """Precision, recall, F1 and support for each digit (0 where undefined)."""
        return per_class_metrics(self.confusion)

    def summary(self) -> dict[str, Any]:
        """Accuracy, loss and size as a JSON-ready dict."""
        return {
            "accuracy": self.accuracy,
            "loss": self.loss,
            "num_examples": len(self.labels),
        }


def predict(
    signature: Any, images: npt.NDArray[np.uint8], *, batch_size: int = 10_000
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    """Call a loaded ``serving_default`` signature on uint8 images in batches."""
    probabilities, digits = [], []
    for start in range(0, len(images), batch_size):
        out = signature(**{INPUT_NAME: tf.constant(images[start : start + batch_size])})
        probabilities.append(out["probabilities"].numpy())
        digits.append(out["digit"].numpy())
    if not probabilities:
        return np.zeros((0, NUM_CLASSES), np.float32), np.zeros((0,), np.int64)
    return np.concatenate(probabilities), np.concatenate(digits).astype(np.int64)


def evaluate_signature(
    signature: Any, images: npt.NDArray[np.uint8], labels: npt.NDArray[np.integer[Any]]
) -> Evaluation:
    """Evaluate a loaded signature on labelled images."""
    probabilities, digits = predict(signature, images)
    labels64 = np.asarray(labels, dtype=np.int64)
    loss = float(np.mean(categorical_cross_entropy(one_hot(labels64), probabilities)))
    return Evaluation(labels=labels64, probabilities=probabilities, digits=digits, loss=loss)


def confusion_matrix(
    labels: npt.NDArray[np.integer[Any]], predictions: npt.NDArray[np.integer[Any]]
) -> npt.NDArray[np.int64]:
    """[10, 10] counts of (true, predicted) pairs; rows are true digits."""
    counts = np.zeros((NUM_CLASSES, NUM_CLASSES), dtype=np.int64)
    np.add.at(counts, (np.asarray(labels), np.asarray(predictions)), 1)
    return counts


def per_class_metrics(confusion: npt.NDArray[np.int64]) -> list[dict[str, float | int]]:
    """Per-digit precision, recall, F1 and support from a confusion matrix (rows = true)."""
    rows = []
    for digit in range(confusion.shape[0]):
        true_positive = int(confusion[digit, digit])
        predicted = int(confusion[:, digit].sum())
        support = int(confusion[digit, :].sum())
        precision = true_positive / predicted if predicted else 0.0
        recall = true_positive / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        rows.append(
            {
                "digit": digit,
                "precision": precision,
                "recall": recall,
                "f1": f1,
                "support": support,
            }
        )
    return rows
