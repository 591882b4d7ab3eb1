"""A version's ``metrics.json``, read once into a typed :class:`ModelReport`.

The report is the model's own evaluation on the MNIST test set, written by training. A
version is servable without it; every reader (``/model``, ``/metrics``, Prometheus, the
promotion gate) then sees ``None`` for what it does not say, never a previous version's figures.
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


@dataclass(frozen=True)
class ModelReport:
    """What ``metrics.json`` says about one version; fields are None when it does not say."""

    recipe: str | None = None
    created_at: str | None = None
    test_accuracy: float | None = None
    test: Mapping[str, Any] | None = None
    """The whole ``test`` section (loss, per-class figures, confusion matrix)."""
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False)
    """The document as read, for callers that want fields not typed here."""

    @classmethod
    def from_document(cls, document: Mapping[str, Any]) -> ModelReport:
        """Type a parsed ``metrics.json``; fields of the wrong type count as missing."""
        test = document.get("test")
        test = test if isinstance(test, Mapping) else None
        accuracy = test.get("accuracy") if test is not None else None
        value: float | None = None
        if isinstance(accuracy, int | float) and not isinstance(accuracy, bool):
            number = float(accuracy)
            value = number if math.isfinite(number) and 0.0 <= number <= 1.0 else None
        recipe, created_at = document.get("recipe"), document.get("created_at")
        return cls(
            recipe=str(recipe) if recipe is not None else None,
            created_at=str(created_at) if created_at is not None else None,
            test_accuracy=value,
            test=test,
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
