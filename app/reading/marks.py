"""Find and drop what, in an image of a digit string, is not handwriting of digits.

Real scans carry more than the digits: the black margin of the scanner along a side, the ruled
lines of a form or register (often crossing a digit), the grain of printed or textured paper,
specks, lines of other text, and the punctuation people write in amounts and codes (``.`` ``,``
``-`` ``=``). Read as digits they become confident 1s and 7s. This module works on the ink map
(ink bright, background 0) before the string is cut into digits::

    long straight runs of ink (>= 2.5 digit heights) -> margins and ruled lines
      -> the remaining components -> the digit height and the line of writing
      -> specks, strays outside the line, dots, commas and dashes

Everything found is erased from the ink and listed (:class:`Mark`, with a box) so the answer
can say what was ignored. Geometry only: no threshold here is fitted on real scans.
"""

from __future__ import annotations

import dataclasses
from typing import Final, Literal

import numpy as np
import numpy.typing as npt

from app.reading.components import Box, connected_components

__all__ = ["Mark", "MarkKind", "is_hairline", "remove_marks", "strip_margins"]

FloatImage = npt.NDArray[np.float32]
BoolImage = npt.NDArray[np.bool_]
MarkKind = Literal["margin", "ruled_line", "speck", "stray", "punctuation"]

# A straight run of ink is a line (not a stroke of a digit) from this many digit heights long,
# and at least this share of the image's side.
_LINE_HEIGHTS: Final = 2.5
_LINE_SHARE: Final = 0.5
# A scan margin: solid ink along an edge, over most of that side, at least this thick (in
# digit heights; a thinner band is a ruled line or the frame of a box).
_MARGIN_THICKNESS: Final = 0.3
_MARGIN_FILL: Final = 0.5
_MARGIN_SPAN: Final = 0.8
# Stroke width as a share of the longer side below which a candidate is a hairline: MNIST's
# strokes are thinner than this in about 5% of its test digits (see _THIN_STROKE in
# app.reading.normalize).
_HAIRLINE: Final = 0.05
# More components than this and the image is not looked at piece by piece (see remove_marks).
_MAX_COMPONENTS: Final = 1000
# A stroke crosses a line when there is ink within this many pixels above and below it.
_CROSS_REACH: Final = 2
# ... and the crossing is at most this wide, in digit heights.
_CROSS_WIDTH: Final = 0.3
# Components not spanning the image give the digit height unless they hold less than this
# share of the ink outside long runs.
_MIN_INNER: Final = 0.25
# Scan margins at the grey level: a band along an edge at least this dark a share of its lines
# (then through lines at least _MARGIN_EDGE dark, plus _MARGIN_BLUR of the side for the blurred
# edge), at most _MARGIN_MAX_SHARE of the side, in an image with both sides at least
# _MARGIN_MIN_SIDE and a margin this much darker than the paper (grey levels).
_MARGIN_SOLID: Final = 0.9
_MARGIN_EDGE: Final = 0.5
_MARGIN_BLUR: Final = 0.02
_MARGIN_MAX_SHARE: Final = 0.6
_MARGIN_MIN_SIDE: Final = 64
_MARGIN_CONTRAST: Final = 40.0
# Beside a margin, lines whose median is darker than the paper by this share of the margin's
# contrast are its shadow.
_MARGIN_SHADE: Final = 0.5
# A ruled line is thin: at least this many times longer than thick (a 1 is not).
_LINE_THINNESS: Final = 10.0
# When less than this share of the ink (margins aside) is left once the lines are removed, the
# "lines" are the writing itself.
_MIN_REST: Final = 0.1
# The same speck rule as app.reading.components: small in both sides and in area.
_SPECK_SIDE: Final = 0.35
_SPECK_AREA: Final = 0.15
# A dot or comma: both sides below this many digit heights, centred low in the line.
_DOT_SIDE: Final = 0.4
_DOT_LOW: Final = 0.6
# A dash: at most this tall (digit heights) and at least this many times wider than tall.
_DASH_HEIGHT: Final = 0.3
_DASH_ASPECT: Final = 1.5
# Components taller than this share of the digit height are digits, never punctuation.
_TALL: Final = 0.6


@dataclasses.dataclass(frozen=True)
class Mark:
    """Something found in the image and ignored: what it is and where (ink-map pixels)."""

    kind: MarkKind
    box: Box


@dataclasses.dataclass(frozen=True)
class _Component:
    """One connected component: its box and its own pixels inside the box."""

    x0: int
    y0: int
    width: int
    height: int
    area: int
    mask: BoolImage


def components(binary: BoolImage) -> list[_Component]:
    """The 8-connected components of a boolean image, each with its box and pixels."""
    labels, count = connected_components(binary)
    if count == 0:
        return []
    ys, xs = np.nonzero(labels)
    ids = labels[ys, xs].astype(np.int64) - 1
    order = np.argsort(ids, kind="stable")
    bounds = np.searchsorted(ids[order], np.arange(count + 1))
    out = []
    for index in range(count):
        chosen = order[bounds[index] : bounds[index + 1]]
        cy, cx = ys[chosen], xs[chosen]
        y0, x0 = int(cy.min()), int(cx.min())
        mask = np.zeros((int(cy.max()) - y0 + 1, int(cx.max()) - x0 + 1), bool)
        mask[cy - y0, cx - x0] = True
        out.append(_Component(x0, y0, mask.shape[1], mask.shape[0], int(chosen.size), mask))
    return out


def _long_runs(mask: BoolImage, length: int) -> BoolImage:
    """Pixels of ``mask`` in horizontal runs of at least ``length`` (rows tolerant by one).

    A line drawn by hand or scanned askew drifts across rows; the rows are joined with their
    neighbours (a vertical dilation by one) before runs are measured, so such a line is still
    one run, and only the pixels of ``mask`` itself are returned.
    """
    height, width = mask.shape
    joined = mask.copy()
    joined[1:] |= mask[:-1]
    joined[:-1] |= mask[1:]
    padded = np.zeros((height, width + 2), np.int8)
    padded[:, 1:-1] = joined
    steps = np.diff(padded, axis=1)
    rows, starts = np.nonzero(steps == 1)
    _, ends = np.nonzero(steps == -1)
    long = (ends - starts) >= length
    delta = np.zeros((height, width + 1), np.int32)
    np.add.at(delta, (rows[long], starts[long]), 1)
    np.add.at(delta, (rows[long], ends[long]), -1)
    covered = np.cumsum(delta, axis=1)[:, :width] > 0
    out: BoolImage = covered & mask
    return out


def _box(ys: npt.NDArray[np.intp], xs: npt.NDArray[np.intp]) -> Box:
    x0, y0 = int(xs.min()), int(ys.min())
    return Box(x0, y0, int(xs.max()) - x0 + 1, int(ys.max()) - y0 + 1)


def _line_like(part: _Component) -> bool:
    """A thin straight stroke: at least :data:`_LINE_THINNESS` times longer than thick."""
    length = max(part.width, part.height)
    return length * length >= _LINE_THINNESS * part.area


def _digit_height(parts: list[_Component]) -> float | None:
    """The median height of the substantial components (None when there are none).

    Substantial: at least a fifth of the biggest component's area. Line-like components (a
    ruled line's pieces, but also a 1 in a fine pen) count only when no substantial component
    is anything else: a line's length says nothing of the digits' height.
    """
    if not parts:
        return None
    # Substantial against every component, line-like or not: a dot beside a string of 1s is
    # not the height of the writing.
    biggest = max(p.area for p in parts)
    substantial = [p for p in parts if p.area >= 0.2 * biggest]
    chosen = [p for p in substantial if not _line_like(p)] or substantial
    return float(np.median([p.height for p in chosen]))


def _margins(found: BoolImage, marks: list[Mark]) -> BoolImage:
    """The pixels of ``found`` inside the boxes of margin marks."""
    out = np.zeros_like(found)
    for mark in marks:
        if mark.kind == "margin":
            b = mark.box
            out[b.y : b.y + b.height, b.x : b.x + b.width] = found[
                b.y : b.y + b.height, b.x : b.x + b.width
            ]
    return out


def _lines(binary: BoolImage) -> tuple[BoolImage, list[Mark]]:
    """Margins and ruled lines: the mask of their pixels and one mark per connected band."""
    height, width = binary.shape
    # The digits' height, from the components that do not span the image (margins and lines
    # do; so does a lone digit cropped tight, which then has no lines to look for).
    parts = components(binary)
    inner = [
        p for p in parts if p.width < _MARGIN_SPAN * width and p.height < _MARGIN_SPAN * height
    ]
    # Touching digits that fill a short image span it too: when the components left are a
    # small share of the ink that is not in long runs, they are dashes and specks, and the
    # digits' height is that of all the substantial components.
    rough = _long_runs(binary, round(_LINE_SHARE * width))
    rough |= _long_runs(binary.T, round(_LINE_SHARE * height)).T
    if sum(p.area for p in inner) < _MIN_INNER * (binary & ~rough).sum():
        inner = parts
    digit = _digit_height(inner)
    if digit is None:
        return np.zeros_like(binary), []
    reach = max(2, round(_LINE_HEIGHTS * digit))
    lines_h = _long_runs(binary, max(reach, round(_LINE_SHARE * width)))
    lines_v = _long_runs(binary.T, max(reach, round(_LINE_SHARE * height))).T
    found = np.zeros_like(binary)
    marks = []
    pieces = [(p, p.width, width) for p in components(lines_h)]
    pieces += [(p, p.height, height) for p in components(lines_v)]
    for part, length, side in pieces:
        thickness = part.area / length
        at_edge = part.x0 == 0 or part.y0 == 0 or part.x0 + part.width == width
        at_edge = at_edge or part.y0 + part.height == height
        solid = part.area >= _MARGIN_FILL * part.width * part.height
        thick = thickness >= _MARGIN_THICKNESS * digit
        if at_edge and solid and thick and length >= _MARGIN_SPAN * side:
            kind: MarkKind = "margin"
        elif length >= _LINE_THINNESS * thickness:
            kind = "ruled_line"
        else:
            continue
        window = found[part.y0 : part.y0 + part.height, part.x0 : part.x0 + part.width]
        window |= part.mask
        marks.append(Mark(kind, Box(part.x0, part.y0, part.width, part.height)))
    rest = binary & ~found
    if rest.sum() < _MIN_REST * (binary & ~_margins(found, marks)).sum():
        # Nearly all the ink is "lines": then they are the writing (a lone 1), not a form's.
        marks = [m for m in marks if m.kind == "margin"]
        found = _margins(found, marks)
    if not marks:
        return found, []
    # Where a stroke crosses a ruled line its ink goes on, so the digit is not cut in two.
    kept = _crossings(binary & ~found, found & lines_h & ~lines_v, round(_CROSS_WIDTH * digit))
    erase = found & ~kept
    # The anti-aliased rim of a line is part of it too (not of the strokes crossing it).
    rim = _dilate(erase) & ~_dilate(kept)
    return erase | rim, marks


def _dilate(mask: BoolImage) -> BoolImage:
    """3×3 binary dilation."""
    out = mask.copy()
    out[1:] |= mask[:-1]
    out[:-1] |= mask[1:]
    grown = out.copy()
    grown[:, 1:] |= out[:, :-1]
    grown[:, :-1] |= out[:, 1:]
    return grown


def _crossings(other: BoolImage, line: BoolImage, widest: int) -> BoolImage:
    """Pixels of a horizontal ``line`` where a stroke crosses it: ``other`` ink above and below.

    Per column, the line's topmost and bottommost pixels are found; where the pixels
    :data:`_CROSS_REACH` rows beyond both hold ink that is not the line's, the column is a
    crossing and its line pixels stay, if the crossing is no wider than ``widest`` columns (a
    pen stroke, not a band of other ink along the line).
    """
    reach = _CROSS_REACH
    height, width = line.shape
    has = line.any(axis=0)
    if not has.any():
        return np.zeros_like(line)
    rows = np.arange(height)[:, None]
    top = np.where(line, rows, height).min(axis=0)
    bottom = np.where(line, rows, -1).max(axis=0)
    cols = np.flatnonzero(has)
    above = np.zeros(width, bool)
    below = np.zeros(width, bool)
    for step in range(1, reach + 1):
        up, down = top[cols] - step, bottom[cols] + step
        ok_up, ok_down = up >= 0, down < height
        above[cols[ok_up]] |= other[up[ok_up], cols[ok_up]]
        below[cols[ok_down]] |= other[down[ok_down], cols[ok_down]]
    crossing = above & below
    # Near a line's ends the ink above and below is a corner of the form, not a stroke.
    crossing[: cols[0] + widest] = False
    crossing[max(0, cols[-1] + 1 - widest) :] = False
    padded = np.concatenate([[False], crossing, [False]]).astype(np.int8)
    starts = np.flatnonzero(np.diff(padded) == 1)
    ends = np.flatnonzero(np.diff(padded) == -1)
    for start, end in zip(starts, ends, strict=True):
        if end - start > widest:
            crossing[start:end] = False
    out: BoolImage = line & crossing[None, :]
    return out


def _small_marks(binary: BoolImage) -> tuple[BoolImage, list[Mark]]:
    """Specks, strays outside the line of writing, dots, commas and dashes."""
    parts = components(binary)
    if not parts:
        return np.zeros_like(binary), []
    found = _digit_height(parts)
    if found is None:
        return np.zeros_like(binary), []
    digit = found
    tall = [p for p in parts if p.height >= _TALL * digit]
    if not tall:
        return np.zeros_like(binary), []
    area = float(np.median([p.area for p in tall]))
    top = float(np.median([p.y0 for p in tall]))
    bottom = float(np.median([p.y0 + p.height for p in tall]))
    band = max(1.0, bottom - top)
    drop = np.zeros_like(binary)
    marks: list[Mark] = []
    for part in parts:
        if part.height >= _TALL * digit:
            continue
        x1 = part.x0 + part.width
        beside = not any(min(x1, t.x0 + t.width) - max(part.x0, t.x0) > 0 for t in tall)
        centre = (part.y0 + part.height / 2 - top) / band
        small = part.height < _SPECK_SIDE * digit and part.width < _SPECK_SIDE * digit
        kind: MarkKind | None = None
        dot = max(part.height, part.width) < _DOT_SIDE * digit and centre > _DOT_LOW
        dash = part.height <= _DASH_HEIGHT * digit and part.width >= _DASH_ASPECT * part.height
        if part.y0 >= bottom + 0.1 * digit or part.y0 + part.height <= top - 0.1 * digit:
            kind = "stray"
        elif beside and (dot or dash):
            kind = "punctuation"
        elif small and part.area < _SPECK_AREA * area:
            kind = "speck"
        if kind is None:
            continue
        window = drop[part.y0 : part.y0 + part.height, part.x0 : x1]
        window |= part.mask
        marks.append(Mark(kind, Box(part.x0, part.y0, part.width, part.height)))
    return drop, marks


def remove_marks(ink: FloatImage, level: float) -> tuple[FloatImage, tuple[Mark, ...]]:
    """The ink with margins, lines, specks, strays and punctuation erased; and what was erased.

    ``level`` is the ink level from which a pixel is ink (the segmentation's low threshold).
    Boxes are in the ink map's pixels. When nothing but marks is found, the result has no ink.
    """
    arr = np.asarray(ink, dtype=np.float32)
    binary = arr > level
    if not binary.any():
        return arr, ()
    if connected_components(binary)[1] > _MAX_COMPONENTS:
        # A page of noise: far more pieces than any string of digits has. Looking at each would
        # cost time in proportion; the segmentation refuses such a page on its own count.
        return arr, ()
    lines, line_marks = _lines(binary)
    rest = binary & ~lines
    small, small_marks = _small_marks(rest)
    if not line_marks and not small_marks:
        return arr, ()
    erase = lines | small
    cleaned: FloatImage = np.where(erase, 0.0, arr).astype(np.float32)
    return cleaned, tuple(line_marks + small_marks)


def _dark_prefix(dark_share: npt.NDArray[np.float64], shade: npt.NDArray[np.bool_]) -> int:
    """How many lines from the start are a dark band: solid near the edge, through its edge.

    ``dark_share`` is each line's share of dark pixels, ``shade`` whether the line's median is
    clearly darker than the paper (the shadow along a margin). A few lines at the very edge may
    be light (the scanner's own border).
    """
    size = dark_share.size
    lead = max(1, round(_MARGIN_BLUR * size))
    starts = np.flatnonzero(dark_share[: lead + 1] >= _MARGIN_SOLID)
    if starts.size == 0:
        return 0
    solid = np.flatnonzero(dark_share[starts[0] :] < _MARGIN_SOLID)
    end = int(starts[0] + solid[0]) if solid.size else size
    # The band's edge is seldom straight (a scan is skewed) and casts a shadow: take the lines
    # still mostly dark or shaded, and a few more for the blurred edge.
    while end < size and (dark_share[end] >= _MARGIN_EDGE or shade[end]):
        end += 1
    return min(size, end + lead)


def strip_margins(gray: FloatImage) -> tuple[FloatImage, tuple[Mark, ...]]:
    """Paint over the dark scan margins along the edges with the paper's grey level.

    A margin is a band along an edge, nearly all of it much darker than the paper, over the
    whole of that side. Left in, its ink is the strongest in the image and sets the scale
    (and the threshold) the digits are measured against, so faint pen strokes vanish; removed
    at the grey level, the digits are measured against the paper. Images smaller than
    :data:`_MARGIN_MIN_SIDE` (a tight crop of one digit) are left as they are.
    """
    g = np.asarray(gray, dtype=np.float32)
    height, width = g.shape
    if min(height, width) < _MARGIN_MIN_SIDE:
        return g, ()
    paper = float(np.median(g))
    dark = float(np.percentile(g, 2))
    if paper - dark < _MARGIN_CONTRAST:
        return g, ()
    is_dark = g < (paper + dark) / 2
    cols, rows = is_dark.mean(axis=0), is_dark.mean(axis=1)
    shaded = paper - _MARGIN_SHADE * (paper - dark)
    col_shade = np.median(g, axis=0) < shaded
    row_shade = np.median(g, axis=1) < shaded
    bands = {
        "left": _dark_prefix(cols, col_shade),
        "right": _dark_prefix(cols[::-1], col_shade[::-1]),
        "top": _dark_prefix(rows, row_shade),
        "bottom": _dark_prefix(rows[::-1], row_shade[::-1]),
    }
    keep = np.ones_like(is_dark)
    marks = []
    for side, size in bands.items():
        span = width if side in ("left", "right") else height
        if size == 0 or size > _MARGIN_MAX_SHARE * span:
            continue
        box = {
            "left": Box(0, 0, size, height),
            "right": Box(width - size, 0, size, height),
            "top": Box(0, 0, width, size),
            "bottom": Box(0, height - size, width, size),
        }[side]
        keep[box.y : box.y + box.height, box.x : box.x + box.width] = False
        marks.append(Mark("margin", box))
    if not marks:
        return g, ()
    paper_inside = float(np.median(g[keep]))
    if not (g[keep] < paper_inside - _MARGIN_CONTRAST).any():
        # Nothing but the "margin" is darker than the paper: it is the writing itself.
        return g, ()
    out: FloatImage = np.where(keep, g, paper_inside).astype(np.float32)
    return out, tuple(marks)


def is_hairline(ink: FloatImage) -> bool:
    """Whether a candidate's strokes are far thinner than handwriting's for its size.

    Stroke width (2 × area / perimeter of the pixels above half the peak) under
    :data:`_HAIRLINE` of the ink's longer side: thinner than nearly all MNIST digits' strokes.
    On a form, that is what a piece of ruled line looks like.
    """
    arr = np.asarray(ink, dtype=np.float32)
    peak = float(arr.max(initial=0.0))
    if peak <= 0.0:
        return False
    solid = arr > 0.5 * peak
    rows = np.flatnonzero(solid.any(axis=1))
    cols = np.flatnonzero(solid.any(axis=0))
    longer = max(rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1)
    padded = np.pad(solid, 1)
    perimeter = int((padded[:, 1:] != padded[:, :-1]).sum() + (padded[1:] != padded[:-1]).sum())
    width = 2.0 * float(solid.sum()) / max(perimeter, 1)
    return width < _HAIRLINE * float(longer)
