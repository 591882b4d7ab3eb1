"""Labelled real digits beside MNIST: reviewed corrections, or any set in the real-digits layout.

A set is a folder of PNG files with a ``labels.csv`` (``filename,label``, optionally a third
column ``source``), the layout of the real-scan sets and of ``python -m training export-reviews``:

- a one-digit label on an image without boxes: the image is that digit;
- a folder with ``boxes.json`` (``{filename: [[x, y, w, h], ...]}``, or the real sets'
  ``[{"digit": "1", "box": [x, y, w, h]}, ...]``) and digit-string labels: each digit is cut
  from the image by its box (in the image's pixels, after its EXIF rotation), when there are as
  many boxes as digits;
- a string label without boxes is not usable here (counted, left out).

Every digit is then normalized to 28×28 by :func:`app.reading.normalize.prepare_digit`, the
function ``/predict`` runs on an uploaded digit, with the same ``normalize=auto``: the model
is fitted on what the service will give it.

**The held-out part** (:func:`is_held_out`): ``zlib.crc32(name.encode()) % 5 == 0``, where the
name is the item's ``source`` when the set has that column (the export's cut digits name the
whole image), else its filename (for a ``boxes.json`` set, the whole image's). All digits of one
image therefore stay on one side. The held-out part never enters a fit; the promotion gate's
real-digit figures (``metrics.json`` ``real_digits``) are measured on it.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import zlib
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt
from PIL import Image

from app.core.errors import DomainError
from app.reading.decode import decode_upright, open_image
from app.reading.normalize import prepare_digit

LABELS_FILE: Final = "labels.csv"
BOXES_FILE: Final = "boxes.json"
#: The export's folder of cut digits, used when ``--extra-data`` names the export itself.
DIGITS_FOLDER: Final = "digits"
#: A generous bound on one image's pixels (the service's own default limit).
MAX_PIXELS: Final = 25_000_000
HELD_OUT_MODULUS: Final = 5
_PNG_MODES: Final = frozenset({"1", "L", "LA", "I", "I;16", "P", "RGB", "RGBA"})


def is_held_out(name: str) -> bool:
    """Whether an item is in the fixed held-out part: ``crc32(name) % 5 == 0`` (a fifth).

    ``name`` is the item's ``source`` (the whole image it was cut from) when known, else its
    filename. The real-scan sets' README gives the same rule.
    """
    return zlib.crc32(name.encode()) % HELD_OUT_MODULUS == 0


def parse_extra_spec(text: str) -> tuple[Path, float]:
    """``DIR[:WEIGHT]`` as (folder, weight); the weight defaults to 1.0.

    Raises:
        ValueError: an empty folder name, or a weight that is not a finite number >= 0.
    """
    folder, sep, weight_text = text.rpartition(":")
    if not sep:
        folder, weight_text = text, ""
    weight = 1.0
    if weight_text:
        try:
            weight = float(weight_text)
        except ValueError:
            # A colon that belongs to the path, not a weight.
            folder, weight_text = text, ""
    if not folder:
        raise ValueError(f"--extra-data '{text}': give a folder, DIR or DIR:WEIGHT")
    if not np.isfinite(weight) or weight < 0:
        raise ValueError(
            f"--extra-data '{text}': the weight must be a number >= 0 (0 measures the set "
            "without fitting on it)"
        )
    return Path(folder), weight


@dataclass(frozen=True)
class ExtraSet:
    """One labelled set, normalized: every usable digit with its label and side."""

    path: Path
    weight: float
    """Sample weight of each fitted digit, relative to an MNIST example's 1 (0: measured only)."""
    images: npt.NDArray[np.uint8]
    """[N, 28, 28], as the service normalizes a digit."""
    labels: npt.NDArray[np.int64]
    held_out: npt.NDArray[np.bool_]
    names: tuple[str, ...]
    """Each digit's file, with ``#i`` for the i-th box of a string."""
    sha256: str
    """Of labels.csv, boxes.json and every image read, in order: what exactly was used."""
    skipped: Mapping[str, int] = field(default_factory=dict)
    """Items left out, by reason."""

    @property
    def name(self) -> str:
        """The folder's name (with its parent's for an export's ``digits`` folder)."""
        if self.path.name in {DIGITS_FOLDER, "strings"} and self.path.parent.name:
            return f"{self.path.parent.name}/{self.path.name}"
        return self.path.name

    @property
    def fit_images(self) -> npt.NDArray[np.uint8]:
        """The digits a fit may use: not held out, and only when the weight is above 0."""
        if self.weight <= 0:
            return self.images[:0]
        return self.images[~self.held_out]

    @property
    def fit_labels(self) -> npt.NDArray[np.int64]:
        """Labels of :attr:`fit_images`."""
        if self.weight <= 0:
            return self.labels[:0]
        return self.labels[~self.held_out]

    @property
    def held_images(self) -> npt.NDArray[np.uint8]:
        """The held-out digits: measured, never fitted."""
        return self.images[self.held_out]

    @property
    def held_labels(self) -> npt.NDArray[np.int64]:
        """Labels of :attr:`held_images`."""
        return self.labels[self.held_out]

    def describe(self) -> dict[str, Any]:
        """What ``metrics.json`` records about the set."""
        return {
            "name": self.name,
            "path": str(self.path),
            "items": len(self.labels),
            "fit_items": len(self.fit_labels),
            "held_out_items": int(self.held_out.sum()),
            "weight": self.weight,
            "sha256": self.sha256,
            "skipped": dict(self.skipped),
        }


def load_extra_set(folder: Path, weight: float = 1.0) -> ExtraSet:
    """Read, cut and normalize one labelled set (see the module docstring).

    ``folder`` may also be an export's root: its ``digits/`` folder is read.

    Raises:
        ValueError: no ``labels.csv``, a ``labels.csv`` without ``filename`` and ``label``
            columns, an unreadable ``boxes.json``, or a listed file that is missing.
    """
    if not (folder / LABELS_FILE).is_file() and (folder / DIGITS_FOLDER / LABELS_FILE).is_file():
        folder = folder / DIGITS_FOLDER
    labels_path = folder / LABELS_FILE
    if not labels_path.is_file():
        raise ValueError(
            f"{folder}: no {LABELS_FILE} (a labelled set is PNG files with a labels.csv of "
            "filename,label[,source])"
        )
    digest = hashlib.sha256()
    labels_bytes = labels_path.read_bytes()
    digest.update(labels_bytes)
    rows = _read_rows(labels_path, labels_bytes)
    boxes: Mapping[str, list[list[int]]] = {}
    if (folder / BOXES_FILE).is_file():
        boxes_bytes = (folder / BOXES_FILE).read_bytes()
        digest.update(boxes_bytes)
        boxes = _read_boxes(folder / BOXES_FILE, boxes_bytes)

    images: list[npt.NDArray[np.uint8]] = []
    labels: list[int] = []
    held: list[bool] = []
    names: list[str] = []
    skipped: Counter[str] = Counter()
    for filename, label, source in rows:
        path = folder / filename
        if not path.is_file():
            raise ValueError(f"{folder}: {filename} is listed in {LABELS_FILE} but missing")
        if not label.isascii() or not label.isdigit():
            skipped["label not digits"] += 1
            continue
        data = path.read_bytes()
        digest.update(filename.encode() + b"\0" + data)
        side = is_held_out(source or filename)
        item_boxes = boxes.get(filename)
        by_box = item_boxes is not None and len(item_boxes) == len(label)
        if item_boxes is not None and by_box:
            cuts = list(_cut(data, item_boxes))
        elif len(label) == 1:
            cuts = [data]
        else:
            skipped["string without a box per digit"] += 1
            continue
        for index, (digit, cut) in enumerate(zip(label, cuts, strict=True)):
            try:
                pixels, _ = prepare_digit(cut, normalize="auto", max_pixels=MAX_PIXELS)
            except DomainError as exc:
                skipped[exc.code] += 1
                continue
            images.append(pixels)
            labels.append(int(digit))
            held.append(side)
            names.append(f"{filename}#{index}" if by_box else filename)
    return ExtraSet(
        path=folder,
        weight=weight,
        images=np.stack(images) if images else np.zeros((0, 28, 28), np.uint8),
        labels=np.asarray(labels, dtype=np.int64),
        held_out=np.asarray(held, dtype=bool),
        names=tuple(names),
        sha256=digest.hexdigest(),
        skipped=dict(sorted(skipped.items())),
    )


def load_extra_sets(specs: Sequence[str]) -> list[ExtraSet]:
    """Every ``DIR[:WEIGHT]`` of ``--extra-data``, loaded (ValueError naming the bad one)."""
    return [load_extra_set(*parse_extra_spec(spec)) for spec in specs]


def held_out_part(
    sets: Sequence[ExtraSet],
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]]:
    """The held-out digits of all sets, in order."""
    if not sets:
        return np.zeros((0, 28, 28), np.uint8), np.zeros((0,), np.int64)
    return (
        np.concatenate([s.held_images for s in sets]),
        np.concatenate([s.held_labels for s in sets]),
    )


def _read_rows(path: Path, data: bytes) -> list[tuple[str, str, str]]:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 text ({exc.reason})") from exc
    reader = csv.DictReader(io.StringIO(text))
    if not {"filename", "label"} <= set(reader.fieldnames or ()):
        raise ValueError(f"{path}: the header must name the columns filename,label[,source]")
    rows = []
    for row in reader:
        filename = (row.get("filename") or "").strip()
        if not filename or Path(filename).name != filename:
            raise ValueError(f"{path}: '{filename[:80]}' is not a file name in the folder")
        rows.append((filename, (row.get("label") or "").strip(), (row.get("source") or "").strip()))
    return rows


def _read_boxes(path: Path, data: bytes) -> dict[str, list[list[int]]]:
    """``boxes.json`` as {filename: [[x, y, w, h], ...]}, either of the two layouts."""
    try:
        document = json.loads(data)
    except ValueError as exc:
        raise ValueError(f"{path}: not JSON ({exc})") from exc
    if not isinstance(document, dict):
        raise ValueError(f"{path}: expected an object {{filename: [boxes]}}")
    boxes: dict[str, list[list[int]]] = {}
    for filename, entries in document.items():
        if not isinstance(entries, list):
            raise ValueError(f"{path}: the boxes of {filename} are not a list")
        parsed = []
        for entry in entries:
            box = entry.get("box") if isinstance(entry, dict) else entry
            if not (
                isinstance(box, list)
                and len(box) == 4
                and all(isinstance(v, int) and not isinstance(v, bool) for v in box)
            ):
                raise ValueError(f"{path}: a box of {filename} is not [x, y, width, height]")
            parsed.append(box)
        boxes[str(filename)] = parsed
    return boxes


def _cut(data: bytes, boxes: Sequence[Sequence[int]]) -> Iterator[bytes]:
    """Each box's region of the upright image, as PNG bytes (what a client would upload)."""
    image = decode_upright(open_image(data, max_pixels=MAX_PIXELS), MAX_PIXELS)[0]
    for piece in cut_boxes(image, boxes):
        yield png_bytes(piece)


def png_bytes(image: Image.Image) -> bytes:
    """``image`` as PNG (modes PNG cannot hold, such as CMYK, as RGB)."""
    if image.mode not in _PNG_MODES:
        image = image.convert("RGBA" if "A" in image.getbands() else "RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def cut_boxes(image: Image.Image, boxes: Sequence[Sequence[int]]) -> list[Image.Image]:
    """The regions ``[x, y, width, height]`` of ``image``, clipped to it (never empty)."""
    pieces = []
    width, height = image.size
    for x, y, w, h in boxes:
        left, top = min(max(x, 0), width - 1), min(max(y, 0), height - 1)
        right, bottom = min(max(x + w, left + 1), width), min(max(y + h, top + 1), height)
        pieces.append(image.crop((left, top, right, bottom)))
    return pieces
