"""The promotion gate's measure on real handwriting: a new version and the served one, on the
same held-out labelled real digits (``--extra-data``), at training time.

The gate (:class:`app.serving.policy.Gate`) decides from files alone, and only training has the
digits, so training measures both versions here and writes the pair into the new version's
``metrics.json``::

    "real_digits": {"items": n, "accuracy": a,
                    "baseline": {"version": v, "accuracy": b, "test_accuracy": t},
                    "sets": [{"name", "items", "accuracy", "baseline_accuracy"}, ...]}

The baseline is the version the ``latest`` policy serves from the output models directory: the
newest that the promotion gate, with the service's default settings, accepts and that loads.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np

from app.serving.model_dir import versions_on_disk
from app.serving.policy import Gate
from app.serving.report import read_report
from training.evaluate import predict
from training.export import load_signature
from training.extra_data import ExtraSet

logger = logging.getLogger(__name__)

#: The service's default gate (``DIGITS_PROMOTION_TOLERANCE``, ``DIGITS_PROMOTION_MIN_ACCURACY``);
#: a test checks it matches the settings' defaults.
DEFAULT_GATE: Final = Gate(tolerance=0.005, min_accuracy=0.9)


@dataclass(frozen=True)
class Baseline:
    """The served version, loaded to be measured beside the new one."""

    version: int
    signature: Any


def served_baseline(models_dir: Path, gate: Gate = DEFAULT_GATE) -> Baseline | None:
    """The version ``latest`` serves from ``models_dir`` (that loads), or None when none does."""
    if not models_dir.is_dir():
        return None
    accepted, _ = gate.promote(
        versions_on_disk(models_dir), lambda v: read_report(models_dir / str(v))
    )
    for version in reversed(accepted):
        try:
            return Baseline(version, load_signature(models_dir / str(version)))
        except Exception as exc:  # any load failure: the service would not serve it either
            logger.warning("version %d does not load (%s); trying an older one", version, exc)
    return None


def _correct(signature: Any, images: np.ndarray, labels: np.ndarray) -> int:
    _, digits = predict(signature, images)
    return int(np.sum(digits == labels))


def measure_real_digits(
    signature: Any, sets: Sequence[ExtraSet], baseline: Baseline | None
) -> dict[str, Any] | None:
    """``metrics.json``'s ``real_digits``, or None when the sets hold no held-out digit."""
    measured = [s for s in sets if len(s.held_labels)]
    if not measured:
        return None
    rows = []
    right = baseline_right = 0
    for extra in measured:
        images, labels = extra.held_images, extra.held_labels
        correct = _correct(signature, images, labels)
        row: dict[str, Any] = {
            "name": extra.name,
            "items": len(labels),
            "accuracy": correct / len(labels),
        }
        right += correct
        if baseline is not None:
            baseline_correct = _correct(baseline.signature, images, labels)
            row["baseline_accuracy"] = baseline_correct / len(labels)
            baseline_right += baseline_correct
        rows.append(row)
    items = sum(row["items"] for row in rows)
    return {
        "items": items,
        "accuracy": right / items,
        "baseline": (
            None
            if baseline is None
            else {"version": baseline.version, "accuracy": baseline_right / items}
        ),
        "sets": rows,
    }
