"""A version's ``metrics.json``, read once into a typed :class:`ModelReport`.

The report is the model's own evaluation on the MNIST test set, written by training, and, for
a version trained or measured with labelled real digits (``--extra-data``), its accuracy on their
held-out part beside the then served version's on the same digits (``real_digits``). A version
is servable without it; every reader (``/model``, ``/metrics``, Prometheus, the promotion gate)
then sees ``None`` for what it does not say, never a previous version's figures.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

logger = logging.getLogger(__name__)

FILE_NAME: Final = "metrics.json"
#: A report larger than this is not read (it is a few kilobytes when training writes it).
MAX_REPORT_BYTES: Final = 1024 * 1024


def _fraction(value: object) -> float | None:
    """A finite number in [0, 1], else None (a bool is not a number here)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        number = float(value)
        if math.isfinite(number) and 0.0 <= number <= 1.0:
            return number
    return None


def _count(value: object) -> int | None:
    """A non-negative integer, else None."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None


@dataclass(frozen=True)
class RealDigitsFigures:
    """``metrics.json``'s ``real_digits``: the version's accuracy on the held-out labelled real
    digits it was measured on, and the baseline's on the same digits, measured at training time.
    """

    items: int
    accuracy: float
    baseline_version: int | None = None
    """The version that was served (the newest the gate promotes) when this one was trained."""
    baseline_accuracy: float | None = None

    @classmethod
    def from_document(cls, section: object) -> RealDigitsFigures | None:
        """Type the ``real_digits`` section; None when it is missing or not understood."""
        if not isinstance(section, Mapping):
            return None
        items, accuracy = _count(section.get("items")), _fraction(section.get("accuracy"))
        if not items or accuracy is None:
            return None
        baseline = section.get("baseline")
        version = accuracy_of_baseline = None
        if isinstance(baseline, Mapping):
            version = _count(baseline.get("version"))
            accuracy_of_baseline = _fraction(baseline.get("accuracy"))
            if version is None or accuracy_of_baseline is None:
                version = accuracy_of_baseline = None
        return cls(items, accuracy, version, accuracy_of_baseline)

    def as_dict(self) -> dict[str, Any]:
        """The figures in ``metrics.json``'s shape (without the per-set rows), for ``/model``."""
        baseline = (
            None
            if self.baseline_version is None or self.baseline_accuracy is None
            else {"version": self.baseline_version, "accuracy": self.baseline_accuracy}
        )
        return {"items": self.items, "accuracy": self.accuracy, "baseline": baseline}


@dataclass(frozen=True)
class ModelReport:
    """What ``metrics.json`` says about one version; fields are None when it does not say."""

    recipe: str | None = None
    created_at: str | None = None
    test_accuracy: float | None = None
    test: Mapping[str, Any] | None = None
    """The whole ``test`` section (loss, per-class figures, confusion matrix)."""
    real_digits: RealDigitsFigures | None = None
    """The held-out labelled real digits' figures, when the version was measured on some."""
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False)
    """The document as read, for callers that want fields not typed here."""

    @classmethod
    def from_document(cls, document: Mapping[str, Any]) -> ModelReport:
        """Type a parsed ``metrics.json``; fields of the wrong type count as missing."""
        test = document.get("test")
        test = test if isinstance(test, Mapping) else None
        recipe, created_at = document.get("recipe"), document.get("created_at")
        return cls(
            recipe=str(recipe) if recipe is not None else None,
            created_at=str(created_at) if created_at is not None else None,
            test_accuracy=_fraction(test.get("accuracy")) if test is not None else None,
            test=test,
            real_digits=RealDigitsFigures.from_document(document.get("real_digits")),
            raw=document,
        )


def read_report(version_dir: Path) -> ModelReport | None:
    """The version's report, or None when it has none or it cannot be read (logged)."""
    path = version_dir / FILE_NAME
    try:
        if path.stat().st_size > MAX_REPORT_BYTES:
            logger.warning("model %s: %s is too large to read", version_dir.name, FILE_NAME)
            return None
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        logger.warning(
            "model %s: %s unreadable (%s)", version_dir.name, FILE_NAME, type(exc).__name__
        )
        return None
    if not isinstance(document, dict):
        logger.warning("model %s: %s is not a JSON object", version_dir.name, FILE_NAME)
        return None
    return ModelReport.from_document(document)
