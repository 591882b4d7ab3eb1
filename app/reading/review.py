"""Geometric review signals of a chosen reading: what real scans get wrong with confidence.

The model's confidence and the digit-likeness judge each digit alone. On scans of forms and
registers the confident errors that remain are of the *string*: a digit too many or too few. A
fragment of a neighbouring cell or of a rule, cut by the crop, is read as a 1; two digits (or a
digit and an underline) joined into one read as one; a mark above or below the line of writing
read as a digit. Three signals catch these from the geometry of the chosen digits:

* **joined too wide**: a digit joined from several pieces that is wider than correctly read
  joined digits are (two digits read as one);
* **off the line**: a digit whose vertical centre is far from the others' (a mark above or
  below the line of writing, a fragment of another row);
* **cut by the edge**: a digit whose ink runs into one edge of an image that is not cropped
  tight to the writing (ink of a neighbouring cell or a rule, not a digit of this string);
* **a frame of lines**: a digit drawn as thin as a hairline whose box is the whole image (rules
  crossing each other and the writing, all one piece of ink: a confident 4 or 7).

On a page where scan margins or ruled lines were removed the evidence is weaker, and
the version's ``marked_threshold`` (a review threshold for such pages) applies.

The limits are fitted per model version on synthetic scan-like codes of MNIST training digits
(``training/scan_codes.py``, ``training/calibrate.py``); the defaults are version 1's.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Final

import numpy as np

from app.reading.lattice import Lattice
from app.reading.marks import is_hairline

__all__ = [
    "EDGE_ROOM",
    "MARKED_KINDS",
    "MARKED_THRESHOLD",
    "MAX_JOINED_WIDTH",
    "MAX_LINE_OFFSET",
    "ReviewLimits",
    "cut_by_the_edge",
    "joined_too_wide",
    "off_the_line",
    "page_has_marks",
    "spans_the_image",
]

#: Defaults (fitted for version 1 on synthetic scan-like codes of MNIST training digits): a
#: digit joined from several pieces wider than this many digit heights ...
MAX_JOINED_WIDTH: Final = 1.291
#: ... a digit whose centre is further than this many digit heights from the line's ...
MAX_LINE_OFFSET: Final = 0.172
#: Digits touching one edge of the image are cut by it when the image is more than this many
#: times longer, on that axis, than the digits read (not a tight crop). Geometry, not fitted.
EDGE_ROOM: Final = 1.5
#: ... and the review threshold on a page where scan margins or ruled lines were removed.
MARKED_THRESHOLD: Final = 0.999
#: Marks whose presence makes a page "marked" (a form or register rather than clean paper).
MARKED_KINDS: Final = frozenset({"margin", "ruled_line"})


@dataclasses.dataclass(frozen=True)
class ReviewLimits:
    """The limits of the geometric review signals for one model version."""

    max_joined_width: float = MAX_JOINED_WIDTH
    max_line_offset: float = MAX_LINE_OFFSET
    edge_room: float = EDGE_ROOM
    marked_threshold: float | None = MARKED_THRESHOLD
    """Review threshold on a page where marks were removed (None: the usual threshold)."""


def joined_too_wide(lattice: Lattice, chosen: Sequence[int], limit: float) -> list[bool]:
    """Per chosen digit: joined from two or more atoms and wider than ``limit`` digit heights."""
    out = []
    for index in chosen:
        cand = lattice.candidates[index]
        out.append(cand.last - cand.first >= 2 and cand.width_ratio > limit)
    return out


def line_offsets(lattice: Lattice, chosen: Sequence[int]) -> list[float]:
    """Per chosen digit: how far its vertical centre is from the median centre, in digit
    heights (the median height of the chosen digits). 0 for a lone digit."""
    if len(chosen) < 2:
        return [0.0] * len(chosen)
    boxes = [lattice.candidates[i].box for i in chosen]
    centres = np.array([b.y + b.height / 2 for b in boxes], np.float64)
    height = float(np.median([b.height for b in boxes]))
    return [float(v) for v in np.abs(centres - np.median(centres)) / max(height, 1.0)]


def off_the_line(lattice: Lattice, chosen: Sequence[int], limit: float) -> list[bool]:
    """Per chosen digit: its centre is more than ``limit`` digit heights off the line."""
    return [offset > limit for offset in line_offsets(lattice, chosen)]


def cut_by_the_edge(
    lattice: Lattice, chosen: Sequence[int], size: tuple[int, int], room: float
) -> list[bool]:
    """Per chosen digit: its ink runs into one edge of an image that has room on that axis.

    Along each axis, the digits read span an extent; when that extent touches exactly one of
    the image's two edges while the image is more than ``room`` times longer on that axis, the
    crop was not tight to the writing and the digits touching that edge are cut by it (a tight
    crop, such as a single scanned digit, touches both edges or neither). ``size`` is (width,
    height) in the boxes' coordinates.
    """
    if not chosen:
        return []
    boxes = [lattice.candidates[i].box for i in chosen]
    flags = [False] * len(boxes)
    spans = (
        ([b.x for b in boxes], [b.x + b.width for b in boxes], size[0]),
        ([b.y for b in boxes], [b.y + b.height for b in boxes], size[1]),
    )
    for starts, ends, side in spans:
        low, high = min(starts) <= 0, max(ends) >= side
        if low == high or side <= room * max(1, max(ends) - min(starts)):
            continue
        for k, (start, end) in enumerate(zip(starts, ends, strict=True)):
            flags[k] = flags[k] or (start <= 0 if low else end >= side)
    return flags


def spans_the_image(lattice: Lattice, chosen: Sequence[int], size: tuple[int, int]) -> list[bool]:
    """Per chosen digit: a hairline (:func:`app.reading.marks.is_hairline`) whose box
    touches all four edges of the image (``size``: width, height): lines, not handwriting. A
    thick digit cropped tight to its frame is not flagged."""
    width, height = size
    out = []
    for index in chosen:
        cand = lattice.candidates[index]
        b = cand.box
        whole = b.x <= 0 and b.y <= 0 and b.x + b.width >= width and b.y + b.height >= height
        out.append(whole and is_hairline(cand.ink))
    return out


def page_has_marks(lattice: Lattice) -> bool:
    """Whether scan margins or ruled lines were removed from the image (a form or register)."""
    return any(mark.kind in MARKED_KINDS for mark in lattice.ignored)
