"""Ink components: binarize (Otsu, hysteresis), label connected components on run-lengths with a
vectorized union-find, drop specks and merge the stacked fragments of one digit.
"""

from __future__ import annotations

import dataclasses
from typing import Final

import numpy as np
import numpy.typing as npt

__all__ = ["Box", "connected_components", "otsu_threshold"]

FloatImage = npt.NDArray[np.float32]

# A component is a speck when both its sides are below this share of the digit height and its
# area below this share of the median digit area.
_SPECK_SIDE: Final = 0.35
_SPECK_AREA: Final = 0.15

# Components taller than this share of the digit height are whole digits, never fragments.
_FRAGMENT_HEIGHT: Final = 0.7

# Two components overlapping by this share of the narrower one's width are one digit.
_MERGE_OVERLAP: Final = 0.5


@dataclasses.dataclass(frozen=True)
class Box:
    """An axis-aligned box in image pixels (``x``, ``y`` of the top-left corner)."""

    x: int
    y: int
    width: int
    height: int


@dataclasses.dataclass
class Part:
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


def strong_components(
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

    def parts(self) -> list[Part]:
        return [
            Part((int(i) + 1,), int(a), int(b), int(c), int(d), int(e))
            for i, a, b, c, d, e in zip(
                self.ids, self.x0, self.x1, self.y0, self.y1, self.area, strict=True
            )
        ]


def component_boxes(labels: npt.NDArray[np.int32], count: int) -> _Components:
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


def typical_digit_height(components: _Components) -> float:
    """The typical digit height: the median height of the substantial components."""
    biggest = int(components.area.max())
    return float(np.median(components.height[components.area >= 0.2 * biggest]))


def typical_digit_area(components: _Components, digit_height: float) -> float:
    """The typical ink area of a digit: the median area of the tall components."""
    return float(np.median(components.area[components.height >= 0.5 * digit_height]))


def drop_specks(components: _Components, digit_height: float) -> _Components:
    """Remove dust and noise: components small in both sides and in area."""
    median_area = typical_digit_area(components, digit_height)
    side = _SPECK_SIDE * digit_height
    return components.subset(
        (components.height >= side)
        | (components.width >= side)
        | (components.area >= _SPECK_AREA * median_area)
    )


def _union(a: Part, b: Part) -> Part:
    return Part(
        a.labels + b.labels,
        min(a.x0, b.x0),
        max(a.x1, b.x1),
        min(a.y0, b.y0),
        max(a.y1, b.y1),
        a.area + b.area,
    )


def merge_fragments(parts: list[Part], digit_height: float) -> list[Part]:
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
