"""The probe set every model version must answer sensibly before it is served.

The probe is built from code, never from a dataset: the ten digits drawn as pen strokes
(polylines and arcs, a few variations of slant, width and proportions each), rendered with
Pillow as dark ink on white paper and normalized exactly as an upload is
(:func:`app.reading.normalize.ink_map`, :func:`app.reading.normalize.center_digit`). Two more
images test the arithmetic only: a blank field and a field full of ink.

:func:`check_outputs` holds the checks: the answers pass the check every model call passes
(:func:`app.serving.output_check.check_output`: finite probabilities in [0, 1] that sum to 1,
``digit`` in 0..9), ``digit`` is the argmax, and accuracy on the drawn digits is at least a
floor. A model that fails any of them is not servable, whatever its signature says.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Final

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw

from app.reading.normalize import center_digit, ink_map
from app.serving.output_check import ModelOutputError, check_output

Point = tuple[float, float]
Stroke = list[Point]
PredictFn = Callable[[npt.NDArray[np.uint8]], tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]]

_CANVAS: Final = 200


class ProbeError(Exception):
    """The model's answers on the probe set are not servable; the message says which check."""


@dataclass(frozen=True)
class ProbeResult:
    """How a model did on the probe set."""

    accuracy: float
    """Share of the drawn digits read correctly."""
    digits: int
    """How many drawn digits the probe holds (the blank and full images are not counted)."""


@dataclass(frozen=True)
class ProbeSet:
    """Images uint8 [N, 28, 28] (MNIST polarity), the drawn digits' labels, and how many."""

    images: npt.NDArray[np.uint8]
    labels: npt.NDArray[np.int64]
    """One label per drawn digit; the drawn digits come first in ``images``."""


def _arc(
    cx: float, cy: float, rx: float, ry: float, start: float, end: float, steps: int = 24
) -> Stroke:
    """Points on an ellipse from angle ``start`` to ``end`` (degrees; 0 = right, 90 = down)."""
    return [
        (
            cx + rx * math.cos(math.radians(start + (end - start) * i / steps)),
            cy + ry * math.sin(math.radians(start + (end - start) * i / steps)),
        )
        for i in range(steps + 1)
    ]


def _glyphs(variant: int) -> dict[int, list[Stroke]]:
    """The strokes of each digit in a unit square (y down); ``variant`` picks a handwriting."""
    flag = variant % 2 == 1  # a "1" with a flag, a "7" with a bar, an open or closed "4"
    glyphs: dict[int, list[Stroke]] = {
        0: [_arc(0.5, 0.5, 0.3, 0.45, 0, 360, 40)],
        1: [[(0.42, 0.2), (0.58, 0.05), (0.55, 0.95)]] if flag else [[(0.52, 0.05), (0.48, 0.95)]],
        2: [[*_arc(0.5, 0.3, 0.3, 0.25, 190, 380), (0.18, 0.95), (0.85, 0.95)]],
        3: [_arc(0.45, 0.28, 0.3, 0.23, 210, 450), _arc(0.45, 0.72, 0.33, 0.23, 270, 510)],
        4: (
            [[(0.62, 0.95), (0.62, 0.05), (0.12, 0.65), (0.88, 0.65)]]
            if flag
            else [[(0.25, 0.05), (0.18, 0.6), (0.85, 0.6)], [(0.68, 0.25), (0.66, 0.95)]]
        ),
        5: [[(0.8, 0.05), (0.32, 0.05), (0.27, 0.45), *_arc(0.48, 0.67, 0.32, 0.27, 240, 490)]],
        6: [[(0.72, 0.05), (0.42, 0.3), (0.24, 0.62), *_arc(0.5, 0.7, 0.26, 0.25, 180, 540)]],
        7: [[(0.15, 0.05), (0.85, 0.05), (0.42, 0.95)]]
        + ([[(0.4, 0.5), (0.78, 0.5)]] if flag else []),
        8: [_arc(0.5, 0.27, 0.22, 0.22, 90, 450), _arc(0.5, 0.71, 0.28, 0.24, 270, 630)],
        9: [[*_arc(0.5, 0.3, 0.25, 0.25, 0, 360, 36), (0.75, 0.3), (0.68, 0.95)]],
    }
    return glyphs


#: Handwriting variations: (slant, stroke width in canvas pixels, horizontal scale).
_STYLES: Final[Sequence[tuple[float, int, float]]] = (
    (0.0, 14, 1.0),
    (0.18, 11, 0.85),
    (-0.12, 18, 1.0),
    (0.1, 16, 0.7),
)


def _render(strokes: list[Stroke], slant: float, width: int, scale_x: float) -> Image.Image:
    """Dark ink on white paper, as a scan of the digit would show it."""
    img = Image.new("L", (_CANVAS, _CANVAS), 255)
    draw = ImageDraw.Draw(img)
    margin, size = 30.0, _CANVAS - 60.0
    for stroke in strokes:
        points = [
            (
                margin + size * (0.5 + (x - 0.5) * scale_x + slant * (0.5 - y)),
                margin + size * y,
            )
            for x, y in stroke
        ]
        draw.line(points, fill=20, width=width, joint="curve")
        r = width / 2
        for px, py in (points[0], points[-1]):
            draw.ellipse((px - r, py - r, px + r, py + r), fill=20)
    return img


@cache
def probe_set() -> ProbeSet:
    """The probe images (built once per process; a few dozen digits, then blank and full)."""
    images: list[npt.NDArray[np.uint8]] = []
    labels: list[int] = []
    for variant, (slant, width, scale_x) in enumerate(_STYLES):
        for digit, strokes in _glyphs(variant).items():
            gray = np.asarray(_render(strokes, slant, width, scale_x), np.float32)
            images.append(center_digit(ink_map(gray)))
            labels.append(digit)
    images.append(np.zeros((28, 28), np.uint8))
    images.append(np.full((28, 28), 255, np.uint8))
    stacked = np.stack(images)
    stacked.setflags(write=False)
    return ProbeSet(images=stacked, labels=np.asarray(labels, np.int64))


def check_outputs(
    probabilities: npt.NDArray[np.float32],
    digits: npt.NDArray[np.int64],
    probe: ProbeSet,
    min_accuracy: float,
) -> ProbeResult:
    """Check a model's answers on the images of ``probe`` (:func:`probe_set`).

    Raises:
        ProbeError: naming the first check that failed.
    """
    count = len(probe.images)
    try:
        check_output(probabilities, digits, count, what="probe images")
    except ModelOutputError as exc:
        raise ProbeError(exc.problem) from exc
    # A tie may be broken either way; anything else must be the argmax.
    chosen = probabilities[np.arange(count), digits]
    not_argmax = chosen < probabilities.max(axis=1) - 1e-6
    if not_argmax.any():
        raise ProbeError(
            f"'digit' is not the most probable class on {int(not_argmax.sum())} of {count} "
            "probe images"
        )
    labels = probe.labels
    drawn = len(labels)
    accuracy = float((digits[:drawn] == labels).mean()) if drawn else 1.0
    if accuracy < min_accuracy:
        raise ProbeError(
            f"reads {accuracy:.0%} of the {drawn} probe digits correctly, below the floor of "
            f"{min_accuracy:.0%} (DIGITS_PROBE_MIN_ACCURACY)"
        )
    return ProbeResult(accuracy=accuracy, digits=drawn)


def run_probe(predict: PredictFn, min_accuracy: float) -> ProbeResult:
    """Run ``predict`` on the probe set in one call and check its answers.

    Raises:
        ProbeError: when an answer is not servable (see :func:`check_outputs`).
    """
    probe = probe_set()
    try:
        probabilities, digits = predict(probe.images.copy())
    except Exception as exc:  # a model that cannot answer the probe is just as unservable
        raise ProbeError(f"probe call failed: {type(exc).__name__}") from exc
    return check_outputs(np.asarray(probabilities), np.asarray(digits), probe, min_accuracy)
