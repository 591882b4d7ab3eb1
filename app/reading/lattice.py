"""Cut an ink map into candidates: every run of atoms that may be one digit.

Wide components get every plausible cut at projection valleys and pieces of a broken digit stay
separate atoms, so the lattice holds every way the marks may split into digits; which one is
right is decided by :mod:`app.reading.reader`. Each candidate keeps only its own ink and is
normalized by :func:`app.reading.normalize.center_digit`, exactly as ``/predict`` normalizes one
digit.
"""

from __future__ import annotations

import bisect
import dataclasses
import itertools
import math
from typing import Final

import numpy as np
import numpy.typing as npt
from PIL import Image

from app.core.deadline import check_deadline
from app.core.errors import DomainError, domain_error
from app.reading.components import (
    Box,
    FloatImage,
    Part,
    component_boxes,
    drop_specks,
    merge_fragments,
    otsu_threshold,
    strong_components,
    typical_digit_area,
    typical_digit_height,
)
from app.reading.marks import Mark, remove_marks, strip_margins
from app.reading.normalize import center_digit, ink_map, reduce_image, to_grayscale

__all__ = [
    "Candidate",
    "Lattice",
    "build_lattice",
    "find_candidates",
    "normalize_candidates",
    "too_many_digits",
]

#: Segmentation runs on at most this many pixels; bigger photos are reduced first (the boxes are
#: scaled back). A digit string fills a small part of such a photo, so nothing readable is lost.
MAX_WORK_PIXELS: Final = 1_000_000

#: ... and no side longer than this: a very long thin image is reduced too, so the work per
#: column (projections, valleys, cuts) stays bounded whatever the aspect ratio.
MAX_WORK_SIDE: Final = 4096

# Otsu's threshold is clamped to this range of the ink map: below it anti-aliasing halos join
# neighbouring digits, above it thin or faint strokes break apart.
_THRESHOLD_RANGE: Final = (0.25, 0.6)

# Pixels down to this share of the threshold still join a stroke they touch (hysteresis).
_HYSTERESIS: Final = 0.5

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
    """What was found and not read: margins, ruled lines, specks, punctuation (reading.marks)."""


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
    parts: list[Part],
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
    # app.reading.marks builds on this module's components and Box, hence imported here.

    arr, ignored = remove_marks(arr, low)
    if float(arr.max(initial=0.0)) <= 0.0:
        raise _no_digits()
    labels, count = strong_components(arr, low, level)
    binary = labels > 0
    if count == 0:
        raise _no_digits()
    components = component_boxes(labels, count)
    digit_height = typical_digit_height(components)
    components = drop_specks(components, digit_height)
    digit_area = typical_digit_area(components, digit_height)
    # A run holds at most _MAX_RUN atoms, so this many parts can never fit in max_digits digits;
    # refusing here, before one object per component exists, bounds the work on a page of noise.
    if components.ids.size > _MAX_RUN * max_digits:
        raise too_many_digits(int(components.ids.size), max_digits)
    parts = merge_fragments(components.parts(), digit_height)
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
