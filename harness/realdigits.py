"""The real-scan development sets (``../shared/data/realdigits``), for tests and benchmarks.

Three sets of real handwriting, none made from MNIST, each a folder of PNG files with a
``labels.csv`` (``filename,label``; the label is a digit string). They are for MEASURING how
the service reads real scans, never for fitting the model or its calibration, and are never
copied into the repository: they are found through ``$REALDIGITS_DATA_DIR``, else the team's
copy beside the checkout.
"""

from __future__ import annotations

import csv
import dataclasses
import os
import zlib
from pathlib import Path
from typing import Final

DATA_DIR_ENV: Final = "REALDIGITS_DATA_DIR"
REPO: Final = Path(__file__).resolve().parents[1]
SHARED: Final = REPO.parent / "shared" / "data" / "realdigits"
#: The sets, and whether each item is one digit (read by /predict) or a string (/recognize).
SETS: Final = {"usps-train": "digit", "orand-car-a-dev": "string", "danish-rowid-dev": "string"}
MISSING: Final = (
    f"real-scan sets not available: set {DATA_DIR_ENV} to the realdigits directory "
    "(one folder per set, each with labels.csv)"
)


def is_held_out(filename: str) -> bool:
    """Whether an item is in the fixed held-out part of its set: ``crc32(filename) % 5 == 0``.

    The rule of the sets' README (for ``orand-car-a-dev`` the filename is the whole check's, so
    a check's digits stay on one side). Held-out items never enter any fit, calibration,
    threshold or rule; every figure reported on the real sets is reported on them.
    """
    return zlib.crc32(filename.encode()) % 5 == 0


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
