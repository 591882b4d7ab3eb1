"""The reader calibration of a model version: read, validated, with defaults when absent.

A version directory may hold ``reader.json`` (and the digit-likeness basis it names), written by
``training/calibrate.py`` from MNIST-derived data for *that* version. :func:`load_calibration`
reads and validates it; what is missing or invalid falls back to the code's defaults (the
values fitted for version 1), with a warning logged and kept in :attr:`ReaderCalibration.notes`
so ``/model`` can say so.

The model store calls :func:`load_calibration` when it loads a version and keeps the result
with the model (``LoadedModel.calibration``), so it is swapped together with the SavedModel.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from app.reading.likeness import BASIS_FILE, LikenessBasis, load_basis, save_basis
from app.reading.reader import COUNT_MARGIN, READING_MARGIN, READING_WEIGHTS
from app.reading.review import ReviewLimits

__all__ = [
    "FORMAT",
    "READER_FILE",
    "ReaderCalibration",
    "calibration_document",
    "calibration_for",
    "load_calibration",
    "write_calibration",
]

READER_FILE: Final = "reader.json"
_FORMAT: Final = 1
#: The ``format`` of the ``reader.json`` that :func:`write_calibration` writes and
#: :func:`load_calibration` reads.
FORMAT: Final = _FORMAT
_log = logging.getLogger("app.reading.calibration")
#: The largest reader.json read (a version's is about 2 KiB).
MAX_READER_BYTES: Final = 256 * 1024


def _read_bounded(path: Path, limit: int) -> bytes:
    """The file's bytes; ValueError when it holds more than ``limit``."""
    with path.open("rb") as handle:
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise ValueError(f"larger than {limit // 1024} KiB")
    return data


@dataclasses.dataclass(frozen=True)
class ReaderCalibration:
    """What the string reader and the review rule use for one model version."""

    reading_weights: Mapping[str, float] = dataclasses.field(
        default_factory=lambda: dict(READING_WEIGHTS)
    )
    count_margin: float = COUNT_MARGIN
    reading_margin: float = READING_MARGIN
    review_threshold: float | None = None
    """The version's own default review threshold (None: the service setting's)."""
    likeness: LikenessBasis | None = None
    likeness_threshold: float | None = None
    """A chosen candidate with a larger unlikeness is not digit-like (see app.reading.likeness)."""
    review: ReviewLimits = dataclasses.field(default_factory=ReviewLimits)
    """The limits of the geometric review signals (see app.reading.review)."""
    source: str = "defaults"
    """``reader.json`` when read from the version directory, else ``defaults``."""
    notes: tuple[str, ...] = ()
    """Why (part of) the defaults are used, one sentence each."""

    def describe(self) -> dict[str, object]:
        """A JSON-ready summary (for ``/model``): what is used and where it came from."""
        return {
            "source": self.source,
            "reading_weights": dict(self.reading_weights),
            "count_margin": self.count_margin,
            "reading_margin": self.reading_margin,
            "review_threshold": self.review_threshold,
            "likeness_rank": self.likeness.rank if self.likeness is not None else None,
            "likeness_threshold": self.likeness_threshold,
            "review_rule": dataclasses.asdict(self.review),
            "notes": list(self.notes),
        }


def _number(value: object, name: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number, got {value!r}")
    number = float(value)
    if not (math.isfinite(number) and low <= number <= high):
        raise ValueError(f"{name} must be within {low}..{high}, got {number}")
    return number


def _weights(value: object) -> dict[str, float]:
    if not isinstance(value, dict):
        raise ValueError("reading_weights must be an object of feature: weight")
    missing = sorted(set(READING_WEIGHTS) - set(value))
    unknown = sorted(set(value) - set(READING_WEIGHTS))
    if missing or unknown:
        raise ValueError(f"reading_weights: missing {missing}, unknown {unknown}")
    return {name: _number(value[name], f"weight {name}", -1e3, 1e3) for name in READING_WEIGHTS}


def load_calibration(version_dir: Path) -> ReaderCalibration:
    """Read and validate ``reader.json`` of a version; defaults (with a warning) for what lacks.

    Never raises for a bad or missing calibration: the model is still served, with the code's
    defaults, and :attr:`ReaderCalibration.notes` says why.
    """
    path = version_dir / READER_FILE
    if path.exists() and not path.is_file():
        note = f"{READER_FILE} is not a regular file: reader defaults, no likeness check"
        _log.warning("version %s: %s", version_dir.name, note)
        return ReaderCalibration(notes=(note,))
    if not path.is_file():
        note = f"no {READER_FILE} in {version_dir.name}: reader defaults, no likeness check"
        _log.warning("version %s: %s", version_dir.name, note)
        return ReaderCalibration(notes=(note,))
    notes: list[str] = []
    fields: dict[str, Any] = {"source": READER_FILE}
    try:
        document = json.loads(_read_bounded(path, MAX_READER_BYTES).decode("utf-8"))
        if not isinstance(document, dict) or document.get("format") != _FORMAT:
            raise ValueError(f"expected an object with format {_FORMAT}")
    except RecursionError:
        note = f"{READER_FILE} unreadable (nested too deeply): reader defaults, no likeness check"
        _log.warning("version %s: %s", version_dir.name, note)
        return ReaderCalibration(notes=(note,))
    except (OSError, ValueError) as exc:
        note = f"{READER_FILE} unreadable ({exc}): reader defaults, no likeness check"
        _log.warning("version %s: %s", version_dir.name, note)
        return ReaderCalibration(notes=(note,))
    for key, parse in (
        ("reading_weights", _weights),
        ("count_margin", lambda v: _number(v, "count_margin", 0.0, 100.0)),
        ("reading_margin", lambda v: _number(v, "reading_margin", 0.0, 100.0)),
        ("review_threshold", lambda v: _number(v, "review_threshold", 0.0, 1.0)),
    ):
        if key not in document:
            notes.append(f"{key} not calibrated for this version: default used")
            continue
        try:
            fields[key] = parse(document[key])
        except ValueError as exc:
            notes.append(f"{key} invalid ({exc}): default used")
    fields["review"] = _review_limits(document.get("review_rule"), notes)
    likeness = document.get("likeness")
    try:
        if not isinstance(likeness, dict):
            raise ValueError("no likeness section")
        basis_name = likeness.get("basis")
        if not isinstance(basis_name, str) or Path(basis_name).name != basis_name:
            raise ValueError("likeness.basis must name a file in the version directory")
        threshold = _number(likeness.get("threshold"), "likeness.threshold", 0.0, 2.0)
        fields["likeness"] = load_basis(version_dir / basis_name)
        fields["likeness_threshold"] = threshold
    except (OSError, ValueError) as exc:
        notes.append(f"likeness check off ({exc})")
    for note in notes:
        _log.warning("version %s: %s", version_dir.name, note)
    return ReaderCalibration(notes=tuple(notes), **fields)


def _review_limits(section: object, notes: list[str]) -> ReviewLimits:
    """The ``review_rule`` section: each limit validated, defaults (with a note) for the rest."""
    if section is None:
        notes.append("review_rule not calibrated for this version: defaults used")
        return ReviewLimits()
    if not isinstance(section, dict):
        notes.append("review_rule invalid (not an object): defaults used")
        return ReviewLimits()
    limits: dict[str, float] = {}
    for key, high in (
        ("max_joined_width", 10.0),
        ("max_line_offset", 10.0),
        ("edge_room", 100.0),
        ("marked_threshold", 1.0),
    ):
        if key not in section:
            notes.append(f"review_rule.{key} not calibrated for this version: default used")
            continue
        try:
            limits[key] = _number(section[key], f"review_rule.{key}", 0.0, high)
        except ValueError as exc:
            notes.append(f"review_rule.{key} invalid ({exc}): default used")
    return ReviewLimits(**limits)


def calibration_for(model: object) -> ReaderCalibration:
    """The calibration a loaded model carries; the defaults, saying so, for one without any."""
    attached = getattr(model, "calibration", None)
    if isinstance(attached, ReaderCalibration):
        return attached
    return ReaderCalibration(notes=("the model carries no reader calibration",))


def calibration_document(
    *,
    fitted_on: str,
    rank: int,
    quantile: float,
    threshold: float,
    reader: Mapping[str, object] | None = None,
    basis_file: str = BASIS_FILE,
) -> dict[str, object]:
    """The ``reader.json`` document :func:`load_calibration` reads.

    ``fitted_on`` says what the likeness was fitted on; ``rank``, ``quantile`` and ``threshold``
    describe the likeness check (the basis in ``basis_file``, its components per class, the
    share of held-out digits below the threshold, the threshold); ``reader`` adds the reader
    settings (``reading_weights``, ``count_margin``, ``reading_margin``, ``review_threshold``,
    ``review_rule`` and how they were fitted), absent ones meaning the service's defaults.
    """
    return {
        "format": FORMAT,
        "fitted_on": fitted_on,
        "likeness": {
            "basis": basis_file,
            "rank": rank,
            "quantile": quantile,
            "threshold": threshold,
        },
        **(dict(reader) if reader else {}),
    }


def write_calibration(
    version_dir: Path,
    basis: LikenessBasis,
    *,
    fitted_on: str,
    quantile: float,
    threshold: float,
    reader: Mapping[str, object] | None = None,
) -> dict[str, object]:
    """Write a version's calibration (the basis, then ``reader.json``) into ``version_dir``,
    as :func:`load_calibration` reads it back; return the ``reader.json`` document."""
    save_basis(version_dir / BASIS_FILE, basis)
    document = calibration_document(
        fitted_on=fitted_on,
        rank=basis.rank,
        quantile=quantile,
        threshold=threshold,
        reader=reader,
    )
    (version_dir / READER_FILE).write_text(json.dumps(document, indent=2) + "\n", "utf-8")
    return document
