"""``python -m training export-reviews``: the review queue's keyed answers as labelled sets.

Usage::

    python -m training export-reviews --database sqlite:///data/reviews.sqlite3 --out reviewed/
    python -m training --extra-data reviewed/digits:2 ...    # then train with them

Reads every reviewed item that still has its image (``ReviewQueue.reviewed()``) and writes, in
the layout of the real-digit sets (PNG files and a ``labels.csv`` of ``filename,label``):

- ``DIR/strings/``: ``<review_id>.png``, the whole image upright (its EXIF rotation applied, as
  the service read it), labelled with the keyed digits; ``boxes.json`` (``{filename: [[x, y, w,
  h], ...]}``) gives the boxes the service read, when there are as many as keyed digits;
- ``DIR/digits/``: ``<review_id>-<i>.png``, each digit cut by its box (image pixels), labelled
  with one digit; ``labels.csv`` has a third column ``source``, the string's filename, so all
  digits of one image fall on the same side of the held-out rule
  (:func:`training.extra_data.is_held_out`). A one-digit answer whose reading has no single box
  (a ``/predict`` upload, or a reading that cut it in two) is the whole image;
- ``DIR/export.json``: what was written and what was left out.

Only the verdict ``digits`` is exported; ``unreadable`` and ``not_digits`` are counted. The
folder is written beside ``DIR`` and renamed into place, so it appears whole or not at all;
``DIR`` must not exist yet, or be empty.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import sys
import tempfile
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Protocol

from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from app.core.errors import DomainError
from app.reading.decode import decode_upright, open_image
from app.reviews.db import current_revision, open_database, redacted
from app.reviews.queue import QueueUnavailableError, ReviewQueue
from training.extra_data import (
    BOXES_FILE,
    DIGITS_FOLDER,
    LABELS_FILE,
    MAX_PIXELS,
    cut_boxes,
    is_held_out,
    png_bytes,
)

STRINGS_FOLDER: Final = "strings"
SUMMARY_FILE: Final = "export.json"
DATABASE_ENV: Final = "DIGITS_REVIEW_DATABASE_URL"


class ReviewedItem(Protocol):
    """What the export reads of a reviewed item (``app.reviews.queue.ReviewView`` has it)."""

    @property
    def review_id(self) -> str: ...
    @property
    def endpoint(self) -> str: ...
    @property
    def verdict(self) -> str | None: ...
    @property
    def label(self) -> str | None: ...
    @property
    def reading(self) -> Mapping[str, Any]: ...
    @property
    def image(self) -> bytes | None: ...


@dataclass
class ExportSummary:
    """What an export wrote and left out."""

    strings: int = 0
    strings_with_boxes: int = 0
    digits: int = 0
    held_out_strings: int = 0
    held_out_digits: int = 0
    left_out: Counter[str] = field(default_factory=Counter)
    """Items not exported, by reason (the verdict, or why the image could not be used)."""

    def as_dict(self) -> dict[str, Any]:
        """The summary as JSON (``export.json``)."""
        return {
            "strings": self.strings,
            "strings_with_boxes": self.strings_with_boxes,
            "digits": self.digits,
            "held_out_strings": self.held_out_strings,
            "held_out_digits": self.held_out_digits,
            "left_out": dict(sorted(self.left_out.items())),
        }

    def describe(self, out: Path) -> str:
        """One paragraph for the command line."""
        left = ", ".join(f"{reason} {n}" for reason, n in sorted(self.left_out.items()))
        return (
            f"exported {self.strings} keyed images to {out / STRINGS_FOLDER} "
            f"({self.strings_with_boxes} with a box per digit; {self.held_out_strings} held out) "
            f"and {self.digits} digits to {out / DIGITS_FOLDER} ({self.held_out_digits} held "
            f"out); left out: {left or 'none'}"
        )


def reading_boxes(reading: Mapping[str, Any]) -> list[list[int]]:
    """The boxes ``[x, y, width, height]`` of the reading's segments, in reading order.

    Segments without a well-formed box are left out, so a count mismatch shows it.
    """
    boxes = []
    segments = reading.get("segments")
    for segment in segments if isinstance(segments, list) else []:
        box = segment.get("box") if isinstance(segment, Mapping) else None
        if not isinstance(box, Mapping):
            continue
        values = [box.get(key) for key in ("x", "y", "width", "height")]
        if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            boxes.append([int(v) for v in values])  # type: ignore[arg-type]
    return boxes


def write_export(items: Iterable[ReviewedItem], out: Path) -> ExportSummary:
    """Write the export of ``items`` to ``out`` (see the module docstring); return the summary.

    Raises:
        FileExistsError: ``out`` exists and is not an empty directory.
    """
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(
            f"{out} already exists and is not empty: choose a new --out (an export is written "
            "whole, never merged into an older one)"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        summary = _write(items, temporary)
        os.replace(temporary, out)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    return summary


def _write(items: Iterable[ReviewedItem], root: Path) -> ExportSummary:
    strings_dir, digits_dir = root / STRINGS_FOLDER, root / DIGITS_FOLDER
    strings_dir.mkdir()
    digits_dir.mkdir()
    summary = ExportSummary()
    string_rows: list[tuple[str, str]] = []
    digit_rows: list[tuple[str, str, str]] = []
    boxes_of: dict[str, list[list[int]]] = {}
    for item in items:
        if item.verdict != "digits":
            summary.left_out[item.verdict or "not reviewed"] += 1
            continue
        label = item.label or ""
        if not (label.isascii() and label.isdigit()):
            summary.left_out["keyed answer not digits"] += 1
            continue
        if item.image is None:
            summary.left_out["image deleted"] += 1
            continue
        try:
            image = decode_upright(open_image(item.image, max_pixels=MAX_PIXELS), MAX_PIXELS)[0]
        except DomainError as exc:
            summary.left_out[f"image not decoded ({exc.code})"] += 1
            continue
        filename = f"{item.review_id}.png"
        (strings_dir / filename).write_bytes(png_bytes(image))
        string_rows.append((filename, label))
        held = is_held_out(filename)
        summary.strings += 1
        summary.held_out_strings += held
        boxes = reading_boxes(item.reading)
        if len(boxes) == len(label):
            boxes_of[filename] = boxes
            summary.strings_with_boxes += 1
            pieces = cut_boxes(image, boxes)
        elif len(label) == 1:
            pieces = [image]
        else:
            summary.left_out["digits without a box each (image in strings/ only)"] += 1
            continue
        for index, (digit, piece) in enumerate(zip(label, pieces, strict=True)):
            name = f"{item.review_id}-{index}.png"
            (digits_dir / name).write_bytes(png_bytes(piece))
            digit_rows.append((name, digit, filename))
            summary.digits += 1
            summary.held_out_digits += held
    _write_csv(strings_dir / LABELS_FILE, ("filename", "label"), string_rows)
    _write_csv(digits_dir / LABELS_FILE, ("filename", "label", "source"), digit_rows)
    (strings_dir / BOXES_FILE).write_text(json.dumps(boxes_of, indent=1) + "\n", "utf-8")
    document = {
        "created_at": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        **summary.as_dict(),
    }
    (root / SUMMARY_FILE).write_text(json.dumps(document, indent=2) + "\n", "utf-8")
    return summary


def _write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence[str]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line of ``python -m training export-reviews``."""
    parser = argparse.ArgumentParser(
        prog="python -m training export-reviews",
        description="Export the review queue's keyed answers as labelled sets for training "
        "(--extra-data).",
    )
    parser.add_argument(
        "--database",
        default=os.environ.get(DATABASE_ENV),
        help=f"the queue's SQLAlchemy URL (default: ${DATABASE_ENV})",
    )
    parser.add_argument(
        "--out", type=Path, required=True, help="a new folder for strings/ and digits/"
    )
    return parser.parse_args(argv)


def open_queue(url: str) -> ReviewQueue:
    """The queue at ``url``, read-only in spirit: an export never creates or migrates one.

    Raises:
        ValueError: the URL is not SQLite or PostgreSQL, names a SQLite file that does not
            exist, or a database without the review queue's tables.
        DomainError: ``review_queue_unavailable`` when the database does not answer.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        path = parsed.database
        if not path or path == ":memory:" or not Path(path).is_file():
            raise ValueError(
                f"{redacted(url)}: no such SQLite file (the service's queue is "
                "<DIGITS_DATA_DIR>/reviews.sqlite3 by default)"
            )
    database = open_database(url)
    try:
        revision = current_revision(database)
    except SQLAlchemyError as exc:
        database.dispose()
        raise QueueUnavailableError(
            f"{redacted(url)} is not answering ({type(exc).__name__})"
        ) from exc
    if revision is None:
        database.dispose()
        raise ValueError(f"{redacted(url)} holds no review queue (never migrated): check the URL")
    return ReviewQueue(database)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point."""
    args = parse_args(argv)
    if not args.database:
        print(
            f"error: name the review database with --database URL (or set {DATABASE_ENV}), "
            "e.g. sqlite:///data/reviews.sqlite3",
            file=sys.stderr,
        )
        return 2
    try:
        queue = open_queue(args.database)
        try:
            summary = write_export(queue.reviewed(), args.out)
        finally:
            queue.database.dispose()
    except (ValueError, FileExistsError, DomainError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{redacted(args.database)}: {summary.describe(args.out)}")
    return 0
