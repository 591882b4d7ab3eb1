"""Draw the sample images in this directory: ``python examples/make_examples.py``.

The digits are pen strokes (lines and arcs) drawn here with Pillow, in dark ink on light paper
like a scan or a photo of handwriting; nothing is taken from MNIST or any other data set, so the
service sees them as it would see a user's upload. The output is deterministic: running the
script again gives the same pixels (a test checks the shipped files against it).

- ``digit.png``, ``digit-7.png``: one handwritten-style 3 and 7, for ``POST /predict`` and
  ``POST /predict/batch``.
- ``postal-code.png``: the code 75011 written in a row, for ``POST /recognize``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw

HERE = Path(__file__).resolve().parent
PAPER = 238
INK = 40

Point = tuple[float, float]


def arc(cx: float, cy: float, rx: float, ry: float, start: float, end: float) -> list[Point]:
    """Points along an elliptic arc, angles in degrees, clockwise on screen (y points down)."""
    steps = max(2, int(abs(end - start) / 6))
    return [
        (
            cx + rx * math.cos(math.radians(start + (end - start) * i / steps)),
            cy + ry * math.sin(math.radians(start + (end - start) * i / steps)),
        )
        for i in range(steps + 1)
    ]


# Each digit: strokes (polylines) in a box 0.6 wide and 1 high, origin at the top left.
GLYPHS: dict[str, list[list[Point]]] = {
    "0": [arc(0.3, 0.5, 0.26, 0.47, 0, 360)],
    "1": [[(0.36, 0.02), (0.26, 0.98)]],
    "2": [[*arc(0.3, 0.27, 0.25, 0.24, 175, 395), (0.04, 0.97), (0.6, 0.96)]],
    "3": [arc(0.28, 0.26, 0.24, 0.23, 200, 450), arc(0.28, 0.72, 0.28, 0.26, 270, 500)],
    "4": [[(0.46, 0.98), (0.46, 0.03), (0.02, 0.66), (0.6, 0.66)]],
    "5": [[(0.56, 0.03), (0.12, 0.03), (0.08, 0.45), *arc(0.3, 0.68, 0.27, 0.28, 230, 500)]],
    "6": [[(0.5, 0.02), (0.2, 0.35), *arc(0.3, 0.72, 0.25, 0.25, 195, 555)]],
    "7": [[(0.02, 0.04), (0.58, 0.04), (0.22, 0.98)]],
    "8": [arc(0.3, 0.25, 0.21, 0.23, 0, 360), arc(0.3, 0.72, 0.26, 0.26, 0, 360)],
    "9": [arc(0.3, 0.28, 0.25, 0.25, 0, 360), [(0.55, 0.3), (0.48, 0.98)]],
}


def draw_digit(
    draw: ImageDraw.ImageDraw,
    digit: str,
    origin: Point,
    height: float,
    pen: int,
    slant: float = 0.0,
) -> None:
    """Draw one digit with its top-left corner at ``origin``; ``slant`` shears it to the right."""
    x0, y0 = origin
    for stroke in GLYPHS[digit]:
        points = [(x0 + (x + slant * (1 - y)) * height, y0 + y * height) for x, y in stroke]
        draw.line(points, fill=INK, width=pen, joint="curve")
        for x, y in (points[0], points[-1]):  # round pen tips
            draw.ellipse((x - pen / 2, y - pen / 2, x + pen / 2, y + pen / 2), fill=INK)


def render(digits: Sequence[str], height: int = 140, pen: int = 14, gap: int = 34) -> Image.Image:
    """The digits side by side on a sheet of paper, with a margin around them."""
    margin = 40
    width = len(digits) * int(0.6 * height) + (len(digits) - 1) * gap + 2 * margin
    image = Image.new("L", (width, height + 2 * margin), PAPER)
    draw = ImageDraw.Draw(image)
    for index, digit in enumerate(digits):
        x = margin + index * (int(0.6 * height) + gap)
        draw_digit(draw, digit, (x, margin), height, pen, slant=0.08 if index % 2 else 0.04)
    return image


EXAMPLES = {"digit.png": "3", "digit-7.png": "7", "postal-code.png": "75011"}


def main() -> None:
    """Write every example next to this script."""
    for name, digits in EXAMPLES.items():
        render(digits).save(HERE / name, optimize=True)
        print(f"wrote {HERE / name}")


if __name__ == "__main__":
    main()
