"""The real-scan development sets (``../shared/data/realdigits``), for tests and benchmarks.

Three sets of real handwriting, none made from MNIST, each a folder of PNG files with a
``labels.csv`` (``filename,label``; the label is a digit string). They are for MEASURING how
the service reads real scans; their non-held-out part may also stand in for reviewed
corrections in a training (``--extra-data``, as ``benchmarks/bench_review.py`` does), never
for the reader's calibration. They are never copied into the repository: they are found
through ``$REALDIGITS_DATA_DIR``, else the team's copy beside the checkout. An item is in the
fixed held-out part of its set when ``crc32(filename) % 5 == 0`` (:func:`is_held_out`; for
``orand-car-a-dev`` the whole check's filename, so a check's digits stay on one side): nothing
is ever fitted on it, and every figure reported on the real sets is reported on it.
"""

from __future__ import annotations

import csv
import dataclasses
import os
from pathlib import Path
from typing import Final

# The held-out rule lives with the training code that must never fit on that part; re-exported.
from training.extra_data import is_held_out

__all__ = [
    "DATA_DIR_ENV",
    "MISSING",
    "SETS",
    "SHARED",
    "Item",
    "is_held_out",
    "load_items",
    "realdigits_dir",
    "set_dir",
]

DATA_DIR_ENV: Final = "REALDIGITS_DATA_DIR"
REPO: Final = Path(__file__).resolve().parents[1]
SHARED: Final = REPO.parent / "shared" / "data" / "realdigits"
#: The sets, and whether each item is one digit (read by /predict) or a string (/recognize).
SETS: Final = {"usps-train": "digit", "orand-car-a-dev": "string", "danish-rowid-dev": "string"}
MISSING: Final = (
    f"real-scan sets not available: set {DATA_DIR_ENV} to the realdigits directory "
    "(one folder per set, each with labels.csv)"
)


@dataclasses.dataclass(frozen=True)
class Item:
    """One labelled image of a set."""

    path: Path
    label: str

    @property
    def held_out(self) -> bool:
        """Whether the item is in the set's fixed held-out part (:func:`is_held_out`)."""
        return is_held_out(self.path.name)


def realdigits_dir() -> Path | None:
    """``$REALDIGITS_DATA_DIR``, else the shared copy beside the repository, when it exists."""
    for candidate in (os.environ.get(DATA_DIR_ENV), str(SHARED)):
        if candidate and Path(candidate).is_dir():
            return Path(candidate)
    return None


def set_dir(name: str, root: Path | None = None) -> Path | None:
    """The folder of one set, or None when it (or the whole directory) is absent."""
    base = root if root is not None else realdigits_dir()
    if base is None:
        return None
    folder = base / name
    return folder if (folder / "labels.csv").is_file() else None


def load_items(folder: Path, *, limit: int | None = None, every: int = 1) -> list[Item]:
    """The set's items in ``labels.csv`` order: every ``every``-th one, at most ``limit``."""
    with (folder / "labels.csv").open(newline="") as handle:
        rows = [(row["filename"], row["label"]) for row in csv.DictReader(handle)]
    chosen = rows[::every]
    if limit is not None:
        chosen = chosen[:limit]
    return [Item(folder / name, label) for name, label in chosen]
