"""Cut an image of a handwritten digit string (a postal code) into its digits.

Works on the ink map of :mod:`app.imaging` (ink bright, background 0)::

    binarize (Otsu, hysteresis) -> connected components -> drop specks
      -> merge stacked fragments of one digit -> cut wide components at projection valleys
      -> atoms, left to right -> candidates: every run of atoms that may be one digit
      -> the model reads every candidate (one call) -> the best reading (dynamic programming)

Cutting is deliberately generous: a component that may hold several touching digits gets every
plausible cut, and pieces of a broken digit stay separate atoms. Which cuts and joins are real
is decided by :func:`choose_reading`, from geometry and from how confidently the model reads
each candidate, so a 0 is not cut in two when its halves read badly and two touching digits are
cut when each reads well.

Each candidate keeps only its own ink (neighbours' strokes are masked out) and is normalized by
:func:`app.imaging.center_digit`, exactly as ``/predict`` normalizes a single digit. Only numpy
and Pillow are used; connected components are labelled on run-lengths with a vectorized
union-find, which takes milliseconds on a page-sized image.
"""

from __future__ import annotations

import bisect
import dataclasses
import itertools
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Final

import numpy as np
import numpy.typing as npt
from PIL import Image

from app.core.deadline import check_deadline
from app.core.errors import DomainError, domain_error
from app.imaging import center_digit, ink_map, reduce_image, to_grayscale

if TYPE_CHECKING:
    from app.marks import Mark

__all__ = [
    "COUNT_MARGIN",
    "FEATURES",
    "READING_MARGIN",
    "READING_WEIGHTS",
    "Box",
    "Candidate",
    "Lattice",
    "Reading",
    "best_partition",
    "build_lattice",
    "check_probabilities",
    "choose_reading",
    "connected_components",
    "find_candidates",
    "invalid_model_output",
    "normalize_candidates",
    "otsu_threshold",
    "reading_features",
    "too_many_digits",
]

FloatImage = npt.NDArray[np.float32]

#: Segmentation runs on at most this many pixels; bigger photos are reduced first (the boxes are
#: scaled back). A digit string fills a small part of such a photo, so nothing readable is lost.
MAX_WORK_PIXELS: Final = 1_000_000
#: ... and no side longer than this: a very long thin image is reduced too, so the work per
#: column (projections, valleys, cuts) stays bounded whatever the aspect ratio.
MAX_WORK_SIDE: Final = 4096
# Probabilities may exceed 1 or miss a sum of 1 by float32 rounding, never by more than this.
_PROBABILITY_SLACK: Final = 1e-3
# Otsu's threshold is clamped to this range of the ink map: below it anti-aliasing halos join
# neighbouring digits, above it thin or faint strokes break apart.
_THRESHOLD_RANGE: Final = (0.25, 0.6)
# Pixels down to this share of the threshold still join a stroke they touch (hysteresis).
_HYSTERESIS: Final = 0.5
# A component is a speck when both its sides are below this share of the digit height and its
# area below this share of the median digit area.
_SPECK_SIDE: Final = 0.35
_SPECK_AREA: Final = 0.15
# Components taller than this share of the digit height are whole digits, never fragments.
_FRAGMENT_HEIGHT: Final = 0.7
# Two components overlapping by this share of the narrower one's width are one digit.
_MERGE_OVERLAP: Final = 0.5
# Candidate cuts: only components wider than _MIN_SPLIT_WIDTH digit heights are cut, into
# pieces no narrower than _MIN_PIECE_WIDTH, at most _MAX_PIECES, cuts _MIN_CUT_SPACING apart.
_MIN_SPLIT_WIDTH: Final = 0.75
_MIN_PIECE_WIDTH: Final = 0.45
_MAX_PIECES: Final = 4
_MIN_CUT_SPACING: Final = 0.12
# Valleys of the projection (columns with the least ink within _VALLEY_REACH digit heights) are
# candidate cuts too, unless within _CUT_MARGIN of the component's edge.
_VALLEY_REACH: Final = 0.1
_CUT_MARGIN: Final = 0.2
# How far from the evenly spaced position a cut may move, as a share of one piece's width.
_CUT_WINDOW: Final = 0.35
# A candidate digit joins at most this many atoms and is at most this wide (in digit heights;
# MNIST's widest 1% of digits reach 1.45 their height).
_MAX_RUN: Final = 5
_MAX_DIGIT_ASPECT: Final = 1.7
# The reading score is a linear function of named features of each candidate digit and of the
# boundary on its left (see reading_features). The weights were learned with a structured
# perceptron (benchmarks/tune_reader.py) on synthetic postal codes built from MNIST *training*
# digits, so the benchmark on test digits is not fitted to its own images. Widths and heights
# are in digit heights; the log-probabilities are the model's (0 when reading from geometry).
READING_WEIGHTS: Final[dict[str, float]] = {
    "digit": -0.221,  # 1 per digit read
    "log_confidence": 1.0,  # log of the top probability
    "log_margin": 0.573,  # log(top / second probability)
    "wider_than_1.0": -8.05,
    "wider_than_1.2": -3.26,
    "wider_than_1.4": -0.215,
    "narrower_than_0.3": -0.842,
    "narrower_than_0.2": -0.126,
    "shorter_than_0.9": -13.5,
    "shorter_than_0.7": -5.6,
    "taller_than_1.2": -0.0486,
    "less_ink_than_0.5": -6.84,
    "less_ink_than_0.25": -1.05,
    "extra_atoms": 0.314,  # atoms joined into this digit beyond the first
    "joined_components": -2.19,  # separate components joined into this digit
    "joined_gap": 0.475,  # white space between the components joined, summed
    "cut_ink": -1.55,  # ink crossed by the cut on the left, in stroke widths
    "close_left": 0.185,  # how much less than 0.1 the gap to the component on the left is
    "near_left": 0.731,  # how much less than 0.3 the gap to the component on the left is
}
FEATURES: Final = tuple(READING_WEIGHTS)
# When the best reading with another number of digits scores within this much of the chosen
# one, the count itself is uncertain and the reading goes to review. On codes of MNIST training
# digits read at confidence 0.95, a margin of 2 halves the errors accepted (3.4% to 1.8%) for 2%
# fewer codes accepted: most confident errors are a digit too many or too few.
COUNT_MARGIN: Final = 2.0
# When ANY other way of cutting the ink (same count or not) scores within this much of the
# chosen one, the cut itself is uncertain and the reading goes to review. This contains the
# count test (another count is another cut). Measured on codes of MNIST training digits (seed
# 31, 2,000 codes) and of test digits with a seed other than the benchmark's (seed 7, 1,500
# codes): at every digit threshold from 0.90 to 0.98 it sends 0.5-1.5% more codes to review than
# COUNT_MARGIN alone and lowers the error among those accepted (at 0.95: 2.59% -> 2.06% and
# 3.82% -> 3.62%); margins of 1 and 3 did no better.
READING_MARGIN: Final = 2.0


@dataclasses.dataclass(frozen=True)
class Box:
    """An axis-aligned box in image pixels (``x``, ``y`` of the top-left corner)."""

    x: int
    y: int
    width: int
    height: int


@dataclasses.dataclass
class _Part:
    """A group of pixels that will become one segment (work coordinates, half-open ranges)."""

    labels: tuple[int, ...]
    x0: int
    x1: int
    y0: int
    y1: int
    area: int

    @property
    def width(self) -> int:
        return self.x1 - self.x0

    @property
    def height(self) -> int:
        return self.y1 - self.y0


def otsu_threshold(values: npt.NDArray[np.floating], bins: int = 256) -> float:
    """Otsu's threshold of values in 0..1: the level that best separates two classes."""
    hist, edges = np.histogram(values, bins=bins, range=(0.0, 1.0))
    hist = hist.astype(np.float64)
    centres = (edges[:-1] + edges[1:]) / 2
    weight0 = np.cumsum(hist)
    weight1 = weight0[-1] - weight0
    mass0 = np.cumsum(hist * centres)
    mean0 = mass0 / np.maximum(weight0, 1e-12)
    mean1 = (mass0[-1] - mass0) / np.maximum(weight1, 1e-12)
    between = weight0 * weight1 * (mean0 - mean1) ** 2
    return float(edges[int(np.argmax(between)) + 1])


def connected_components(binary: npt.NDArray[np.bool_]) -> tuple[npt.NDArray[np.int32], int]:
    """Label the 8-connected components of a boolean image.

    Returns ``(labels, count)`` with labels 1..count (0 is background), numbered in the order
    of each component's first pixel in raster order.

    Works on horizontal runs of pixels: runs on neighbouring rows that touch (diagonals
    included) are joined with a union-find whose hooking and path compression are vectorized,
    so the Python-level work is a handful of numpy passes, not one step per pixel.
    """
    mask = np.asarray(binary, dtype=bool)
    height, width = mask.shape
    labels = np.zeros((height, width), np.int32)
    padded = np.zeros((height, width + 2), np.int8)
    padded[:, 1:-1] = mask
    steps = np.diff(padded, axis=1)
    # np.nonzero is row-major, so the k-th start and the k-th end belong to the same run.
    rows, starts = np.nonzero(steps == 1)
    _, ends = np.nonzero(steps == -1)
    n_runs = rows.size
    if n_runs == 0:
        return labels, 0
    stride = width + 2
    start_key = rows.astype(np.int64) * stride + starts
    end_key = rows.astype(np.int64) * stride + ends
    # Run b (row r) touches run a (row r-1) when a.start <= b.end and b.start <= a.end (ends
    # exclusive, so diagonal neighbours count). Runs in a row are sorted, so the touching runs
    # of the row above form one contiguous range, found by binary search.
    above = (rows.astype(np.int64) - 1) * stride
    lo = np.searchsorted(end_key, above + starts, side="left")
    hi = np.searchsorted(start_key, above + ends, side="right")
    counts = np.where(rows > 0, np.maximum(hi - lo, 0), 0)
    total = int(counts.sum())
    run_b = np.repeat(np.arange(n_runs), counts)
    offsets = np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)
    run_a = np.repeat(lo, counts) + offsets

    parent = np.arange(n_runs)
    while True:
        root_a, root_b = parent[run_a], parent[run_b]
        differ = root_a != root_b
        if not differ.any():
            break
        # Hook the larger root under the smaller: indices only decrease, so no cycles form.
        np.minimum.at(
            parent,
            np.maximum(root_a[differ], root_b[differ]),
            np.minimum(root_a[differ], root_b[differ]),
        )
        while True:
            grand = parent[parent]
            if np.array_equal(grand, parent):
                break
            parent = grand
    _, inverse = np.unique(parent, return_inverse=True)
    run_label = inverse.reshape(-1).astype(np.int32) + 1
    lengths = ends - starts
    pixel_run = np.repeat(np.arange(n_runs), lengths)
    pixel_col = np.repeat(starts - np.cumsum(lengths) + lengths, lengths) + np.arange(
        int(lengths.sum())
    )
    labels[rows[pixel_run], pixel_col] = run_label[pixel_run]
    return labels, int(run_label.max())


def _strong_components(
    ink: FloatImage, low: float, high: float
) -> tuple[npt.NDArray[np.int32], int]:
    """Hysteresis: components of the ink above ``low`` that reach ``high`` somewhere.

    A faint or thin stroke stays joined to its digit through its weaker pixels, while faint
    smudges that never reach ``high`` are dropped.
    """
    labels, count = connected_components(ink > low)
    strong = np.zeros(count + 1, bool)
    strong[labels[ink > high]] = True
    strong[0] = False
    renumber = np.where(strong, np.cumsum(strong), 0).astype(np.int32)
    return renumber[labels], int(strong.sum())


@dataclasses.dataclass(frozen=True)
class _Components:
    """Bounding boxes and areas of labelled components, as arrays (``ids[i] + 1`` is the label).

    Arrays, not one object per component: a page of noise has hundreds of thousands of
    components, and everything up to the count check must cost the same whatever their number.
    """

    ids: npt.NDArray[np.int64]
    x0: npt.NDArray[np.int64]
    x1: npt.NDArray[np.int64]
    y0: npt.NDArray[np.int64]
    y1: npt.NDArray[np.int64]
    area: npt.NDArray[np.int64]

    @property
    def width(self) -> npt.NDArray[np.int64]:
        return self.x1 - self.x0

    @property
    def height(self) -> npt.NDArray[np.int64]:
        return self.y1 - self.y0

    def subset(self, keep: npt.NDArray[np.bool_]) -> _Components:
        return _Components(
            self.ids[keep],
            self.x0[keep],
            self.x1[keep],
            self.y0[keep],
            self.y1[keep],
            self.area[keep],
        )

    def parts(self) -> list[_Part]:
        return [
            _Part((int(i) + 1,), int(a), int(b), int(c), int(d), int(e))
            for i, a, b, c, d, e in zip(
                self.ids, self.x0, self.x1, self.y0, self.y1, self.area, strict=True
            )
        ]


def _component_boxes(labels: npt.NDArray[np.int32], count: int) -> _Components:
    """Bounding box and area of every labelled component."""
    ys, xs = np.nonzero(labels)
    ids = labels[ys, xs].astype(np.int64) - 1
    area = np.bincount(ids, minlength=count)
    x0 = np.full(count, labels.shape[1], np.int64)
    y0 = np.full(count, labels.shape[0], np.int64)
    x1 = np.zeros(count, np.int64)
    y1 = np.zeros(count, np.int64)
    np.minimum.at(x0, ids, xs)
    np.minimum.at(y0, ids, ys)
    np.maximum.at(x1, ids, xs + 1)
    np.maximum.at(y1, ids, ys + 1)
    return _Components(np.arange(count, dtype=np.int64), x0, x1, y0, y1, area.astype(np.int64))


def _digit_height(components: _Components) -> float:
    """The typical digit height: the median height of the substantial components."""
    biggest = int(components.area.max())
    return float(np.median(components.height[components.area >= 0.2 * biggest]))


def _digit_area(components: _Components, digit_height: float) -> float:
    """The typical ink area of a digit: the median area of the tall components."""
    return float(np.median(components.area[components.height >= 0.5 * digit_height]))


def _drop_specks(components: _Components, digit_height: float) -> _Components:
    """Remove dust and noise: components small in both sides and in area."""
    median_area = _digit_area(components, digit_height)
    side = _SPECK_SIDE * digit_height
    return components.subset(
        (components.height >= side)
        | (components.width >= side)
        | (components.area >= _SPECK_AREA * median_area)
    )


def _union(a: _Part, b: _Part) -> _Part:
    return _Part(
        a.labels + b.labels,
        min(a.x0, b.x0),
        max(a.x1, b.x1),
        min(a.y0, b.y0),
        max(a.y1, b.y1),
        a.area + b.area,
    )


def _merge_fragments(parts: list[_Part], digit_height: float) -> list[_Part]:
    """Join pieces of one broken digit: components stacked over the same columns.

    Two components merge when their column ranges overlap by at least half of the narrower
    one's width and at least one of them is shorter than a whole digit; two full-height
    components side by side are neighbours that lean into each other, not one digit.
    """
    parts = sorted(parts, key=lambda p: p.x0)
    merged = True
    while merged:
        merged = False
        for i in range(len(parts)):
            for j in range(i + 1, len(parts)):
                a, b = parts[i], parts[j]
                if b.x0 >= a.x1:
                    break
                overlap = min(a.x1, b.x1) - max(a.x0, b.x0)
                fragment = min(a.height, b.height) < _FRAGMENT_HEIGHT * digit_height
                if fragment and overlap >= _MERGE_OVERLAP * min(a.width, b.width):
                    parts[i] = _union(a, b)
                    del parts[j]
                    merged = True
                    break
            if merged:
                break
    return parts


def too_many_digits(found: int, max_digits: int, *, at_least: bool = False) -> DomainError:
    """The 422 answered when an image holds more digits than the service reads.

    ``at_least`` when the image was refused before it was read: ``found`` is then the fewest
    digits any reading of its marks could have.
    """
    counted = f"at least {found}" if at_least else str(found)
    return domain_error(
        "too_many_digits",
        f"Found {counted} digits, more than the {max_digits} this service reads in one image. "
        "Send a single line of at most that many digits, or crop the image to the number.",
        details={"found": found, "max_digits": max_digits},
    )


def invalid_model_output() -> DomainError:
    """The 503 answered when the model's scores are not probabilities: nothing can be read."""
    return domain_error(
        "model_output_invalid",
        "The served model returned scores that are not probabilities (not finite, negative, "
        "above 1, or not one per digit 0-9), so no reading can be trusted and none is given. "
        "Try again later; the operator should check the served version (GET /model).",
        retry_after=30,
    )


def check_probabilities(probabilities: npt.ArrayLike, count: int) -> npt.NDArray[np.float64]:
    """The model's scores for ``count`` images as float64 [count, 10], checked to be probabilities.

    Every later step (logarithms, sums, the best-reading search) relies on finite scores in
    [0, 1]; a model that answers NaN or negative values is refused here, before any of them.

    Raises:
        DomainError: 503 ``model_output_invalid`` when they are not.
    """
    scores = np.asarray(probabilities, dtype=np.float64)
    if (
        scores.shape != (count, 10)
        or not np.isfinite(scores).all()
        or float(scores.min(initial=0.0)) < 0.0
        or float(scores.max(initial=0.0)) > 1.0 + _PROBABILITY_SLACK
        or bool((np.abs(scores.sum(axis=1) - 1.0) > _PROBABILITY_SLACK).any())
    ):
        raise invalid_model_output()
    return scores


def _no_digits() -> DomainError:
    return domain_error(
        "no_digits_found",
        "No digits found: the image is blank or its contrast is too low. "
        "Photograph the number larger, in focus, with dark ink on plain light paper "
        "(or light on dark).",
    )


def _dilate(mask: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
    """3×3 binary dilation."""
    out = mask.copy()
    out[1:, :] |= mask[:-1, :]
    out[:-1, :] |= mask[1:, :]
    grown = out.copy()
    grown[:, 1:] |= out[:, :-1]
    grown[:, :-1] |= out[:, 1:]
    return grown


@dataclasses.dataclass(frozen=True)
class _Atom:
    """The smallest unit of ink: a component, or a slice of one between two candidate cuts."""

    labels: tuple[int, ...]
    columns: tuple[int, int] | None
    x0: int
    x1: int
    y0: int
    y1: int


@dataclasses.dataclass(frozen=True)
class _Boundary:
    """What separates two consecutive atoms: a cut through ink, or a gap between components."""

    ink: float
    """Ink crossed by the cut, in stroke widths (0 between separate components)."""
    gap: float | None
    """Horizontal gap between the components in digit heights (negative when they overlap);
    None for a cut inside one component."""


@dataclasses.dataclass(frozen=True)
class Candidate:
    """A run of consecutive atoms that may be one digit, with its ink ready to normalize."""

    first: int
    last: int
    box: Box
    ink: FloatImage
    width_ratio: float
    """Width of the ink in digit heights (the median height of the string's digits)."""
    height_ratio: float
    """Height of the ink in digit heights."""
    area_ratio: float
    """Ink area relative to the median digit's."""


@dataclasses.dataclass(frozen=True)
class Lattice:
    """Every way of reading the ink as a row of digits, before the model has looked at it.

    The ink is cut into ``atom_count`` atoms ordered left to right; a reading is a partition of
    the atoms into consecutive runs, each run one of ``candidates``. ``boundaries[i]`` says
    what separates atom ``i`` from atom ``i + 1``.
    """

    candidates: tuple[Candidate, ...]
    atom_count: int
    boundaries: tuple[_Boundary, ...]
    ignored: tuple[Mark, ...] = ()
    """What was found and not read: margins, ruled lines, specks, punctuation (app.marks)."""


def _stroke_width(binary: npt.NDArray[np.bool_]) -> float:
    """Mean pen width in pixels: 2 × area / perimeter of the ink."""
    area = int(binary.sum())
    padded = np.pad(binary, 1)
    perimeter = int((padded[:, 1:] != padded[:, :-1]).sum() + (padded[1:] != padded[:-1]).sum())
    return max(1.0, 2.0 * area / max(perimeter, 1))


def _cut_columns(
    profile: npt.NDArray[np.float64], digit_height: float, limit: int | None = None
) -> list[int]:
    """Candidate cut columns of a component wide enough to hold several digits.

    For every plausible count k of digits in the component, the k-1 cuts are put at the
    emptiest column near the evenly spaced positions; the union of all of them is returned,
    leaving to the reader (recognition and geometry together) which cuts are real. The search
    stops once more than ``limit`` cuts are kept (the caller then refuses the image).
    """
    width = profile.size
    if width < _MIN_SPLIT_WIDTH * digit_height:
        return []
    most = min(_MAX_PIECES, int(np.ceil(width / (_MIN_PIECE_WIDTH * digit_height))))
    found: set[int] = set()
    for pieces in range(2, most + 1):
        step = width / pieces
        reach = max(1, round(_CUT_WINDOW * step))
        for k in range(1, pieces):
            centre = round(k * step)
            lo, hi = max(1, centre - reach), min(width - 1, centre + reach)
            if lo >= hi:
                continue
            columns = np.arange(lo, hi + 1)
            # The emptiest column; among equals, the one nearest the expected position.
            cost = profile[lo : hi + 1] + np.abs(columns - centre) / (4 * reach)
            found.add(int(columns[np.argmin(cost)]))
    # Every clear valley of the projection is a candidate too: touching digits meet where the
    # ink is thinnest, wherever that falls.
    margin = max(1, round(_CUT_MARGIN * digit_height))
    reach = max(1, round(_VALLEY_REACH * digit_height))
    padded = np.pad(profile, reach, constant_values=np.inf)
    lowest = np.lib.stride_tricks.sliding_window_view(padded, 2 * reach + 1).min(axis=1)
    valleys = np.flatnonzero(profile <= lowest)
    found.update(int(c) for c in valleys if margin <= c <= width - margin)
    # Greedy, emptiest column first: a column is kept when it is far enough from every cut
    # kept so far, which for sorted cuts means from its two neighbours.
    cuts: list[int] = []
    spacing = _MIN_CUT_SPACING * digit_height
    for column in sorted(found, key=lambda c: profile[c]):
        at = bisect.bisect_left(cuts, column)
        if (at == 0 or column - cuts[at - 1] >= spacing) and (
            at == len(cuts) or cuts[at] - column >= spacing
        ):
            cuts.insert(at, column)
            if limit is not None and len(cuts) > limit:
                break
    return cuts


def _atoms(
    parts: list[_Part],
    labels: npt.NDArray[np.int32],
    digit_height: float,
    stroke: float,
    max_digits: int,
) -> tuple[list[_Atom], list[_Boundary]]:
    """Cut wide parts at their candidate columns: atoms left to right, and the boundaries.

    Raises:
        DomainError: 422 ``too_many_digits`` as soon as the cuts make more atoms than
            ``max_digits`` digits can hold (a long bar would otherwise be cut at nearly every
            column, and every run of those pieces become a candidate).
    """
    max_atoms = _MAX_RUN * max_digits
    pieces: list[_Atom] = []
    boundary: list[_Boundary] = []
    for done, part in enumerate(sorted(parts, key=lambda p: (p.x0 + p.x1) / 2)):
        check_deadline()
        window = np.isin(labels[part.y0 : part.y1, part.x0 : part.x1], part.labels)
        profile = window.sum(axis=0).astype(np.float64)
        # Every part makes at least one atom: the cuts of this one may use what is left.
        room = max_atoms - len(pieces) - (len(parts) - done)
        cuts = _cut_columns(profile, digit_height, limit=max(0, room))
        if len(cuts) > room:
            at_least = len(pieces) + len(cuts) + len(parts) - done
            raise too_many_digits(math.ceil(at_least / _MAX_RUN), max_digits, at_least=True)
        edges = [0, *cuts, part.width]
        atoms: list[_Atom] = []
        costs: list[float] = []
        for left, right in itertools.pairwise(edges):
            rows = np.flatnonzero(window[:, left:right].any(axis=1))
            if rows.size == 0:
                continue
            if atoms:
                costs.append(float(profile[left]) / stroke)
            atoms.append(
                _Atom(
                    part.labels,
                    None if not cuts else (part.x0 + left, part.x0 + right),
                    part.x0 + left,
                    part.x0 + right,
                    part.y0 + int(rows[0]),
                    part.y0 + int(rows[-1]) + 1,
                )
            )
        if pieces:
            gap = (atoms[0].x0 - pieces[-1].x1) / digit_height
            boundary.append(_Boundary(0.0, gap))
        pieces.extend(atoms)
        boundary.extend(_Boundary(cost, None) for cost in costs)
    return pieces, boundary


def _group_ink(
    atoms: list[_Atom], labels: npt.NDArray[np.int32], ink: FloatImage
) -> tuple[FloatImage, tuple[int, int]]:
    """The atoms' own ink with a one-pixel anti-aliased rim; all other ink zeroed.

    Returns the crop and the work coordinates (x0, y0) of its top-left corner.
    """
    height, width = labels.shape
    x0 = max(0, min(a.x0 for a in atoms) - 1)
    y0 = max(0, min(a.y0 for a in atoms) - 1)
    x1 = min(width, max(a.x1 for a in atoms) + 1)
    y1 = min(height, max(a.y1 for a in atoms) + 1)
    window = labels[y0:y1, x0:x1]
    cols = np.arange(x0, x1)
    own = np.zeros(window.shape, bool)
    for atom in atoms:
        mask = np.isin(window, atom.labels)
        if atom.columns is not None:
            mask &= ((cols >= atom.columns[0]) & (cols < atom.columns[1]))[None, :]
        own |= mask
    keep = _dilate(own) & ((window == 0) | own)
    crop = np.where(keep, ink[y0:y1, x0:x1], 0.0).astype(np.float32)
    return crop, (x0, y0)


def build_lattice(ink: FloatImage, *, max_digits: int) -> Lattice:
    """Cut an ink map (float32 [H, W], ink bright) into atoms and list the candidate digits.

    Boxes are in the ink map's pixel coordinates.

    Raises:
        DomainError: 422 ``no_digits_found`` when there is no ink, 422 ``too_many_digits`` when
            even the most economical reading has more than ``max_digits`` digits.
    """
    arr = np.asarray(ink, dtype=np.float32)
    if arr.size == 0 or float(arr.max(initial=0.0)) <= 0.0:
        raise _no_digits()
    level = min(max(otsu_threshold(arr), _THRESHOLD_RANGE[0]), _THRESHOLD_RANGE[1])
    low = _HYSTERESIS * level
    # app.marks builds on this module's components and Box, hence imported here.
    from app.marks import remove_marks

    arr, ignored = remove_marks(arr, low)
    if float(arr.max(initial=0.0)) <= 0.0:
        raise _no_digits()
    labels, count = _strong_components(arr, low, level)
    binary = labels > 0
    if count == 0:
        raise _no_digits()
    components = _component_boxes(labels, count)
    digit_height = _digit_height(components)
    components = _drop_specks(components, digit_height)
    digit_area = _digit_area(components, digit_height)
    # A run holds at most _MAX_RUN atoms, so this many parts can never fit in max_digits digits;
    # refusing here, before one object per component exists, bounds the work on a page of noise.
    if components.ids.size > _MAX_RUN * max_digits:
        raise too_many_digits(int(components.ids.size), max_digits)
    parts = _merge_fragments(components.parts(), digit_height)
    atoms, boundaries = _atoms(parts, labels, digit_height, _stroke_width(binary), max_digits)
    candidates = []
    for first in range(len(atoms)):
        check_deadline()
        for last in range(first + 1, min(first + _MAX_RUN, len(atoms)) + 1):
            run = atoms[first:last]
            width = max(a.x1 for a in run) - min(a.x0 for a in run)
            if last - first > 1 and width > _MAX_DIGIT_ASPECT * digit_height:
                break
            crop, (x0, y0) = _group_ink(run, labels, arr)
            rows = np.flatnonzero(crop.max(axis=1) > low)
            cols = np.flatnonzero(crop.max(axis=0) > low)
            box = Box(
                x0 + int(cols[0]),
                y0 + int(rows[0]),
                int(cols[-1] - cols[0]) + 1,
                int(rows[-1] - rows[0]) + 1,
            )
            candidates.append(
                Candidate(
                    first,
                    last,
                    box,
                    crop,
                    box.width / digit_height,
                    box.height / digit_height,
                    float((crop > low).sum()) / digit_area,
                )
            )
    return Lattice(tuple(candidates), len(atoms), tuple(boundaries), ignored)


def reading_features(
    lattice: Lattice, probabilities: npt.NDArray[np.floating] | None
) -> npt.NDArray[np.float64]:
    """The :data:`FEATURES` of every candidate, float64 [candidates, features].

    ``probabilities`` is the model's answer for every candidate ([candidates, 10]); None reads
    from geometry alone (the two probability features are then 0).

    Raises:
        DomainError: 503 ``model_output_invalid`` when ``probabilities`` are not probabilities
            (:func:`check_probabilities`).
    """
    if probabilities is not None:
        probabilities = check_probabilities(probabilities, len(lattice.candidates))
    rows = np.zeros((len(lattice.candidates), len(FEATURES)), np.float64)
    for index, cand in enumerate(lattice.candidates):
        w, h = cand.width_ratio, cand.height_ratio
        inner = lattice.boundaries[cand.first : cand.last - 1]
        gaps = [b.gap for b in inner if b.gap is not None]
        left = lattice.boundaries[cand.first - 1] if cand.first > 0 else None
        top, second = 0.0, 0.0
        if probabilities is not None:
            second, top = np.log(np.sort(probabilities[index])[-2:] + 1e-6)
        rows[index] = (
            1.0,
            top,
            top - second,
            max(0.0, w - 1.0),
            max(0.0, w - 1.2),
            max(0.0, w - 1.4),
            max(0.0, 0.3 - w),
            max(0.0, 0.2 - w),
            max(0.0, 0.9 - h),
            max(0.0, 0.7 - h),
            max(0.0, h - 1.2),
            max(0.0, 0.5 - cand.area_ratio),
            max(0.0, 0.25 - cand.area_ratio),
            cand.last - cand.first - 1,
            len(gaps),
            sum(max(0.0, g) for g in gaps),
            left.ink if left is not None and left.gap is None else 0.0,
            max(0.0, 0.1 - left.gap) if left is not None and left.gap is not None else 0.0,
            max(0.0, 0.3 - left.gap) if left is not None and left.gap is not None else 0.0,
        )
    return rows


def best_partition(lattice: Lattice, scores: npt.NDArray[np.float64]) -> list[int]:
    """The candidates (indices, left to right) covering every atom once with the top total score.

    Dynamic programming over atom positions: each candidate extends the best reading of the
    atoms before it.
    """
    n = lattice.atom_count
    best = np.full(n + 1, -np.inf)
    best[0] = 0.0
    back = np.full(n + 1, -1, np.int64)
    # In order of the last atom covered, so a candidate's start position is final when read.
    for index in sorted(range(len(scores)), key=lambda i: lattice.candidates[i].last):
        cand = lattice.candidates[index]
        score = best[cand.first] + scores[index]
        if score > best[cand.last]:
            best[cand.last] = score
            back[cand.last] = index
    chosen: list[int] = []
    end = n
    while end > 0:
        index = int(back[end])
        # No candidate reaches here with a finite score (scores that are NaN compare false):
        # there is no reading, and following index -1 could loop forever.
        if index < 0:
            raise invalid_model_output()
        chosen.append(index)
        end = lattice.candidates[index].first
    return chosen[::-1]


@dataclasses.dataclass(frozen=True)
class Reading:
    """The reader's choice: which candidates are the digits, and how sure it is of their count."""

    candidates: tuple[int, ...]
    """Indices into the lattice's candidates, left to right."""
    count_margin: float
    """How much the chosen reading outscores the best reading with another number of digits
    (infinite when no other count is possible)."""
    runner_up: int | None
    """That other number of digits (None when there is none)."""
    margin: float = float("inf")
    """How much the chosen reading outscores the best other reading, whatever its number of
    digits (infinite when the ink can be cut only one way). Never more than ``count_margin``."""
    required_count_margin: float = COUNT_MARGIN
    """The count margin below which the count is uncertain (the version's calibration, else
    :data:`COUNT_MARGIN`)."""
    required_margin: float = READING_MARGIN
    """The margin below which the cut is uncertain (the version's calibration, else
    :data:`READING_MARGIN`)."""

    @property
    def count_is_uncertain(self) -> bool:
        """Whether another number of digits scores almost as well (``required_count_margin``)."""
        return self.count_margin < self.required_count_margin

    @property
    def cut_is_uncertain(self) -> bool:
        """Whether another cut of the ink scores almost as well (``required_margin``)."""
        return self.margin < self.required_margin


def _best_by_count(lattice: Lattice, scores: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """The best total score of a reading with k digits, for k = 0..atom_count (-inf if none)."""
    n = lattice.atom_count
    best = np.full((n + 1, n + 1), -np.inf)
    best[0, 0] = 0.0
    for index in sorted(range(len(scores)), key=lambda i: lattice.candidates[i].last):
        cand = lattice.candidates[index]
        extended = best[cand.first, :-1] + scores[index]
        best[cand.last, 1:] = np.maximum(best[cand.last, 1:], extended)
    result: npt.NDArray[np.float64] = best[n]
    return result


def _best_total(lattice: Lattice, scores: npt.NDArray[np.float64]) -> float:
    """The top total score of a reading covering every atom (-inf when none can)."""
    best = np.full(lattice.atom_count + 1, -np.inf)
    best[0] = 0.0
    for index in sorted(range(len(scores)), key=lambda i: lattice.candidates[i].last):
        cand = lattice.candidates[index]
        best[cand.last] = max(best[cand.last], best[cand.first] + scores[index])
    return float(best[-1])


def _second_best_total(
    lattice: Lattice, scores: npt.NDArray[np.float64], chosen: list[int]
) -> float:
    """The top total score of a reading other than ``chosen`` (-inf when there is none).

    Any other reading leaves out at least one of the chosen candidates (a partition holding all
    of them is the chosen one), so the runner-up is the best reading without one of them.
    """
    second = -np.inf
    for index in chosen:
        without = scores.copy()
        without[index] = -np.inf
        second = max(second, _best_total(lattice, without))
    return float(second)


def choose_reading(
    lattice: Lattice,
    probabilities: npt.NDArray[np.floating] | None,
    *,
    max_digits: int | None = None,
    weights: Mapping[str, float] = READING_WEIGHTS,
    count_margin: float = COUNT_MARGIN,
    reading_margin: float = READING_MARGIN,
) -> Reading:
    """The best reading of the lattice, and its score margins over other readings and counts.

    Each candidate scores the dot product of ``weights`` and its :func:`reading_features`; the
    reading is the partition of the atoms with the highest total (:func:`best_partition`).
    ``probabilities`` is the model's answer for every candidate, or None to read from geometry
    alone. ``count_margin`` and ``reading_margin`` are the margins below which the count and
    the cut are uncertain (a model version's calibration; by default the code's).

    Raises:
        DomainError: 422 ``too_many_digits`` when the reading has more than ``max_digits``; 503
            ``model_output_invalid`` when ``probabilities`` are not probabilities.
    """
    vector = np.array([weights[name] for name in FEATURES], np.float64)
    scores = reading_features(lattice, probabilities) @ vector
    if not np.isfinite(scores).all():
        raise invalid_model_output()
    chosen = best_partition(lattice, scores)
    if max_digits is not None and len(chosen) > max_digits:
        raise too_many_digits(len(chosen), max_digits)
    top = float(scores[chosen].sum())
    second = _second_best_total(lattice, scores, chosen)
    margin = top - second if np.isfinite(second) else float("inf")
    by_count = _best_by_count(lattice, scores)
    others = by_count.copy()
    others[len(chosen)] = -np.inf
    runner_up = int(np.argmax(others))
    if not np.isfinite(others[runner_up]):
        return Reading(tuple(chosen), float("inf"), None, margin, count_margin, reading_margin)
    count_gap = float(by_count[len(chosen)] - others[runner_up])
    return Reading(tuple(chosen), count_gap, runner_up, margin, count_margin, reading_margin)


def _work_scale(width: int, height: int) -> float:
    pixels = width * height
    scale = 1.0 if pixels <= MAX_WORK_PIXELS else float(np.sqrt(MAX_WORK_PIXELS / pixels))
    return min(scale, MAX_WORK_SIDE / max(width, height))


def find_candidates(
    img: Image.Image, *, max_digits: int, size: tuple[int, int] | None = None
) -> Lattice:
    """Build the lattice of a decoded image; boxes in the image's own pixel coordinates.

    Large photos are reduced to :data:`MAX_WORK_PIXELS` (and :data:`MAX_WORK_SIDE`) first,
    averaging pixels on the Pillow side before any float array exists, which bounds the time
    and memory of a request whatever the upload's size or shape. ``size`` is the size boxes are
    reported in when ``img`` was decoded smaller than the upload (a JPEG decoded at reduced
    scale); by default the image's own.

    Raises:
        DomainError: 422 ``no_digits_found`` or 422 ``too_many_digits``.
    """
    width, height = size or img.size
    scale = _work_scale(*img.size)
    if scale < 1.0:
        img = reduce_image(
            img, (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
        )
    from app.marks import strip_margins  # built on this module's Box, hence imported here

    gray = to_grayscale(img)
    check_deadline()
    gray, margins = strip_margins(gray)
    check_deadline()
    ink = ink_map(gray)
    check_deadline()
    lattice = build_lattice(ink, max_digits=max_digits)
    if margins:
        lattice = dataclasses.replace(lattice, ignored=margins + lattice.ignored)
    if gray.shape == (height, width):
        return lattice
    sx, sy = width / gray.shape[1], height / gray.shape[0]
    rescaled = []
    for cand in lattice.candidates:
        b = cand.box
        x0, y0 = int(b.x * sx), int(b.y * sy)
        x1 = min(width, int(np.ceil((b.x + b.width) * sx)))
        y1 = min(height, int(np.ceil((b.y + b.height) * sy)))
        rescaled.append(dataclasses.replace(cand, box=Box(x0, y0, x1 - x0, y1 - y0)))
    marks = tuple(dataclasses.replace(m, box=_scale_box(m.box, sx, sy)) for m in lattice.ignored)
    return Lattice(tuple(rescaled), lattice.atom_count, lattice.boundaries, marks)


def _scale_box(box: Box, sx: float, sy: float) -> Box:
    x0, y0 = int(box.x * sx), int(box.y * sy)
    return Box(x0, y0, max(1, round(box.width * sx)), max(1, round(box.height * sy)))


def normalize_candidates(lattice: Lattice) -> npt.NDArray[np.uint8]:
    """Every candidate normalized as ``/predict`` normalizes a digit: uint8 [N, 28, 28]."""
    digits = []
    for candidate in lattice.candidates:
        check_deadline()
        digits.append(center_digit(candidate.ink))
    return np.stack(digits).astype(np.uint8)
