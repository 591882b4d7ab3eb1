"""Whether a reading of a digit string needs a person: its review reasons, as codes.

A reason is a :class:`ReviewReason`: a :class:`ReasonCode` (what metrics count and clients
branch on), the position of the digit it is about, and a sentence for a person, made here where
the judgement is made. Nothing downstream parses the sentence.

The model's confidence (below the threshold), the reader's margins (an uncertain count or cut),
the expected length and the digit-likeness judge give the first reasons. The rest are geometric
review signals of the chosen reading: what real scans get wrong with confidence.

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
from enum import StrEnum
from typing import Final

import numpy as np

from app.reading.lattice import Lattice
from app.reading.marks import is_hairline
from app.reading.reader import Reading

__all__ = [
    "DEFAULT_REVIEW_THRESHOLD",
    "EDGE_ROOM",
    "MARKED_KINDS",
    "MARKED_THRESHOLD",
    "MAX_JOINED_WIDTH",
    "MAX_LINE_OFFSET",
    "ReasonCode",
    "ReviewLimits",
    "ReviewReason",
    "cut_by_the_edge",
    "distinct_figures",
    "geometry_reasons",
    "joined_too_wide",
    "off_the_line",
    "page_has_marks",
    "review_reasons",
    "review_threshold",
    "spans_the_image",
]

#: The review threshold when neither the request, the operator nor the served version sets
#: one: chosen on synthetic postal codes of MNIST test digits for version 1 (the whole-code
#: error among accepted readings at most 2% on codes other than the benchmark's).
DEFAULT_REVIEW_THRESHOLD: Final = 0.98

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


class ReasonCode(StrEnum):
    """Why a reading needs review: a small fixed set, in answers, OpenAPI and metrics."""

    LOW_CONFIDENCE = "low_confidence"
    """A digit was read with a confidence below the review threshold."""
    NOT_DIGIT_LIKE = "not_digit_like"
    """A digit does not look like a handwritten digit (a line, a mark or part of one)."""
    LENGTH_MISMATCH = "length_mismatch"
    """The number of digits read is not the expected length."""
    COUNT_UNCERTAIN = "count_uncertain"
    """Reading another number of digits is almost as likely."""
    CUT_UNCERTAIN = "cut_uncertain"
    """Another way of cutting the ink into digits is almost as likely."""
    JOINED_TOO_WIDE = "joined_too_wide"
    """A digit joined from several pieces is wider than a digit (two digits, or a mark)."""
    OFF_THE_LINE = "off_the_line"
    """A digit lies above or below the line of the others (a mark, another row)."""
    SPANS_THE_IMAGE = "spans_the_image"
    """A digit drawn in hairlines across the whole image (ruled lines crossing the writing)."""
    CUT_BY_THE_EDGE = "cut_by_the_edge"
    """A digit runs into the edge of an image not cropped to the writing (a neighbour's ink)."""
    SEVERAL_DIGITS = "several_digits"
    """An image sent as one digit holds several side by side (a string: read it as one)."""


@dataclasses.dataclass(frozen=True)
class ReviewReason:
    """One reason to send a reading to a person."""

    code: ReasonCode
    message: str
    """The reason for a person, with the figures that made it."""
    position: int | None = None
    """The digit it is about, counted from 1 (None: the whole string)."""


def review_threshold(
    requested: float | None, operator: float | None, calibrated: float | None
) -> float:
    """The threshold for one reading: the request's, else the operator's setting, else the
    served version's calibrated one, else :data:`DEFAULT_REVIEW_THRESHOLD`."""
    for threshold in (requested, operator, calibrated):
        if threshold is not None:
            return threshold
    return DEFAULT_REVIEW_THRESHOLD


def review_reasons(
    confidences: Sequence[float],
    threshold: float,
    expected_length: int | None,
    reading: Reading,
    unlike: Sequence[bool] | None = None,
) -> list[ReviewReason]:
    """The reasons from the digits' confidences, the reader's margins, the expected length and
    the likeness judge (``unlike``: per digit, not digit-like; see :mod:`app.reading.likeness`).

    Empty when the reading can be trusted on these grounds.
    """
    total = len(confidences)
    reasons = [
        ReviewReason(
            ReasonCode.NOT_DIGIT_LIKE,
            f"digit {i} of {total} does not look like a handwritten digit "
            "(it may be a line, a mark or part of one)",
            i,
        )
        for i, flag in enumerate(unlike or [], 1)
        if flag
    ]
    if expected_length is not None and total != expected_length:
        reasons.append(
            ReviewReason(
                ReasonCode.LENGTH_MISMATCH, f"expected {expected_length} digits but read {total}"
            )
        )
    if reading.count_is_uncertain and reading.runner_up is not None:
        reasons.append(
            ReviewReason(
                ReasonCode.COUNT_UNCERTAIN,
                f"the number of digits is uncertain: reading {reading.runner_up} digits "
                f"instead of {total} is almost as likely",
            )
        )
    elif reading.cut_is_uncertain:
        reasons.append(
            ReviewReason(
                ReasonCode.CUT_UNCERTAIN,
                "where one digit ends and the next begins is uncertain: another way of cutting "
                "the ink into digits is almost as likely",
            )
        )
    for i, confidence in enumerate(confidences, 1):
        if confidence < threshold:
            shown, limit = distinct_figures(confidence, threshold)
            reasons.append(
                ReviewReason(
                    ReasonCode.LOW_CONFIDENCE,
                    f"digit {i} of {total} was read with confidence {shown}, below the "
                    f"threshold {limit}",
                    i,
                )
            )
    return reasons


def distinct_figures(value: float, threshold: float) -> tuple[str, str]:
    """Both numbers with two decimals, or as many more as it takes to tell them apart."""
    for decimals in range(2, 9):
        shown, limit = f"{value:.{decimals}f}", f"{threshold:.{decimals}f}"
        if shown != limit:
            return shown, limit
    return f"{value:.9f}", f"{threshold:.9f}"


#: The geometric signals: per digit flags, and what to tell a person.
_GEOMETRY_MESSAGES: Final = {
    ReasonCode.JOINED_TOO_WIDE: "was joined from several pieces and is wider than a digit (it "
    "may be two digits, or a digit and a mark)",
    ReasonCode.OFF_THE_LINE: "is above or below the line of the other digits (it may be a mark "
    "or part of another line)",
    ReasonCode.SPANS_THE_IMAGE: "is drawn in hairlines across the whole image (it may be ruled "
    "lines crossing the writing)",
    ReasonCode.CUT_BY_THE_EDGE: "runs into the edge of the image (it may be part of a "
    "neighbouring cell or a line)",
}


def geometry_reasons(
    lattice: Lattice, chosen: Sequence[int], size: tuple[int, int], limits: ReviewLimits
) -> list[ReviewReason]:
    """The reasons from the geometry of the chosen digits (``size``: the image's width, height)."""
    flags = {
        ReasonCode.JOINED_TOO_WIDE: joined_too_wide(lattice, chosen, limits.max_joined_width),
        ReasonCode.OFF_THE_LINE: off_the_line(lattice, chosen, limits.max_line_offset),
        ReasonCode.SPANS_THE_IMAGE: spans_the_image(lattice, chosen, size),
        ReasonCode.CUT_BY_THE_EDGE: cut_by_the_edge(lattice, chosen, size, limits.edge_room),
    }
    total = len(chosen)
    return [
        ReviewReason(code, f"digit {i} of {total} {_GEOMETRY_MESSAGES[code]}", i)
        for code, per_digit in flags.items()
        for i, flag in enumerate(per_digit, 1)
        if flag
    ]


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
