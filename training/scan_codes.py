"""Synthetic "scan-like" digit strings built from MNIST **training** digits.

Real scans of forms and registers carry nuisances that clean synthetic codes lack: ruled lines
crossing or touching the digits, a black scanner margin along a side, fragments of the
neighbouring cells cut by the crop, thin pen strokes, touching digits and punctuation. These
codes add them (each with some probability) to the postal codes of
:mod:`training.postal_codes`, so that what the review rule needs (its thresholds) can be fitted
on MNIST-derived data only: the real sets stay for measuring.

Dark ink on light paper, grey, seeded: a seed always gives the same images. The digits are drawn
from the images given, which must be MNIST training digits when the codes fit anything.
"""

from __future__ import annotations

import dataclasses
import io

import numpy as np
from PIL import Image, ImageFilter

from app.reading.components import Box
from training.postal_codes import Layout, PostalCode, render_postal_code

#: The scan-like mix: smaller, closer digits than postal codes, dark on light, grey.
SCAN_LAYOUT = Layout(
    digit_height=(18.0, 60.0),
    gap=(0.05, 0.45),
    touching_probability=0.3,
    overlap=(0.0, 0.15),
    margin=(0.3, 1.2),
    noise_sigma=(0.0, 6.0),
    colour_probability=0.0,
    dark_on_light_probability=1.0,
)
#: How likely each nuisance is in one code.
P_THIN = 0.4
P_RULE = 0.6
P_VERTICAL_RULE = 0.35
P_MARGIN = 0.3
P_FRAGMENT = 0.4
P_PUNCTUATION = 0.3


@dataclasses.dataclass(frozen=True)
class ScanCode(PostalCode):
    """A scan-like code: a postal code plus the nuisances it carries."""

    nuisances: tuple[str, ...] = ()


def _ink_height(boxes: tuple[Box, ...]) -> float:
    return float(np.median([b.height for b in boxes]))


def add_nuisances(
    rng: np.random.Generator,
    code: PostalCode,
    fragment_source: np.ndarray,
) -> ScanCode:
    """Draw the scan nuisances onto a dark-on-light grey code; boxes follow any padding."""
    gray = np.asarray(Image.open(io.BytesIO(code.png)).convert("L"), dtype=np.float32)
    base = _ink_height(code.boxes)
    nuisances: list[str] = []
    if base > 28 and rng.random() < P_THIN:
        # A fine pen: strokes one pixel thinner on each side.
        gray = np.asarray(
            Image.fromarray(gray.astype(np.uint8)).filter(ImageFilter.MaxFilter(3)), np.float32
        )
        nuisances.append("thin")
    paper = float(np.median(gray))
    pen = float(np.percentile(gray, 0.5))
    # A cell of a form or register: room around the writing for lines and for the neighbouring
    # cells' ink, several digit heights each way.
    extra_w = max(0.0, base * rng.uniform(3.0, 6.0) - gray.shape[1])
    extra_h = max(0.0, base * rng.uniform(2.0, 6.0) - gray.shape[0])
    share_w, share_h = rng.uniform(0.1, 0.9), rng.uniform(0.1, 0.9)
    pad_left, pad_right = round(extra_w * share_w), round(extra_w * (1 - share_w))
    pad_top, pad_bottom = round(extra_h * share_h), round(extra_h * (1 - share_h))
    height = gray.shape[0] + pad_top + pad_bottom
    width = gray.shape[1] + pad_left + pad_right
    page = np.full((height, width), paper, np.float32)
    page[pad_top : pad_top + gray.shape[0], pad_left : pad_left + gray.shape[1]] = gray
    boxes = tuple(Box(b.x + pad_left, b.y + pad_top, b.width, b.height) for b in code.boxes)
    bottom = max(b.y + b.height for b in boxes)
    top = min(b.y for b in boxes)

    def stroke(mask: np.ndarray, darkness: float) -> None:
        page[mask] = np.minimum(page[mask], paper + darkness * (pen - paper))

    yy, xx = np.mgrid[0:height, 0:width]
    if rng.random() < P_RULE:
        for _ in range(int(rng.integers(1, 3))):
            # Under the writing (touching or crossing its foot), through it, or above it.
            where = rng.choice(["foot", "through", "above", "below"], p=[0.4, 0.2, 0.2, 0.2])
            y = {
                "foot": bottom + rng.uniform(-0.2, 0.1) * base,
                "through": top + rng.uniform(0.3, 0.7) * (bottom - top),
                "above": top - rng.uniform(0.05, 0.6) * base,
                "below": bottom + rng.uniform(0.1, 0.8) * base,
            }[str(where)]
            thick = rng.uniform(0.8, max(1.0, 0.07 * base))
            slope = rng.uniform(-0.01, 0.01)
            line = np.abs(yy - (y + slope * (xx - width / 2))) < thick / 2
            stroke(line, rng.uniform(0.6, 1.0))
        nuisances.append("rule")
    if rng.random() < P_VERTICAL_RULE:
        side = rng.random() < 0.5
        first, last = min(b.x for b in boxes), max(b.x + b.width for b in boxes)
        x = first - rng.uniform(0.0, 0.3) * base if side else last + rng.uniform(0.0, 0.3) * base
        thick = rng.uniform(0.8, max(1.0, 0.06 * base))
        stroke(np.abs(xx - x) < thick / 2, rng.uniform(0.6, 1.0))
        nuisances.append("vertical_rule")
    if rng.random() < P_FRAGMENT:
        # Ink of a neighbouring cell: another digit, mostly outside the crop.
        digit = fragment_source[int(rng.integers(0, len(fragment_source)))]
        size = max(8, round(base * rng.uniform(0.8, 1.2) * 28 / 20))
        glyph = np.asarray(Image.fromarray(digit).resize((size, size)), np.float32) / 255.0
        inside = rng.uniform(0.2, 0.5)
        edge = rng.choice(["top", "bottom", "left", "right"])
        gy = int(rng.uniform(0, max(1, height - size)))
        gx = int(rng.uniform(0, max(1, width - size)))
        if edge == "top":
            gy = round(inside * size) - size
        elif edge == "bottom":
            gy = height - round(inside * size)
        elif edge == "left":
            gx = round(inside * size) - size
        else:
            gx = width - round(inside * size)
        y0, x0 = max(0, gy), max(0, gx)
        y1, x1 = min(height, gy + size), min(width, gx + size)
        if y1 > y0 and x1 > x0:
            part = glyph[y0 - gy : y1 - gy, x0 - gx : x1 - gx]
            region = page[y0:y1, x0:x1]
            page[y0:y1, x0:x1] = np.minimum(region, paper + part * (pen - paper))
            nuisances.append("fragment")
    if rng.random() < P_PUNCTUATION:
        final = boxes[-1]
        x = final.x + final.width + rng.uniform(0.1, 0.3) * base
        if rng.random() < 0.6:
            r = max(1.0, 0.07 * base)
            mask = np.hypot(xx - x, yy - (final.y + final.height - r)) < r
        else:
            y = final.y + final.height * rng.uniform(0.4, 0.6)
            mask = (np.abs(yy - y) < max(0.8, 0.04 * base)) & (xx >= x) & (xx < x + 0.4 * base)
        stroke(mask, 1.0)
        nuisances.append("punctuation")
    if rng.random() < P_MARGIN:
        band = round(base * rng.uniform(0.4, 1.5))
        dark = rng.uniform(0.0, 40.0)
        if rng.random() < 0.5:
            page = np.concatenate([np.full((height, band), dark, np.float32), page], axis=1)
            boxes = tuple(Box(b.x + band, b.y, b.width, b.height) for b in boxes)
        else:
            page = np.concatenate([page, np.full((height, band), dark, np.float32)], axis=1)
        nuisances.append("margin")
    out = Image.fromarray(np.clip(np.rint(page), 0, 255).astype(np.uint8), "L")
    buffer = io.BytesIO()
    out.save(buffer, format="PNG")
    return ScanCode(
        png=buffer.getvalue(),
        digits=code.digits,
        boxes=boxes,
        width=out.width,
        height=out.height,
        dark_on_light=True,
        touching_pairs=code.touching_pairs,
        indices=code.indices,
        nuisances=tuple(nuisances),
    )


def generate_scan_codes(
    images: np.ndarray, labels: np.ndarray, count: int, seed: int = 0
) -> list[ScanCode]:
    """``count`` scan-like codes of 1 to 5 digits drawn from ``images``/``labels``.

    ``images`` (uint8 [N,28,28], white ink on black) must be MNIST training digits when the
    codes are used to fit anything.
    """
    rng = np.random.default_rng(seed)
    codes = []
    for _ in range(count):
        length = int(rng.integers(1, 6))
        picks = rng.integers(0, len(images), size=length)
        layout = dataclasses.replace(SCAN_LAYOUT, length=length)
        code = render_postal_code(
            rng, [images[i] for i in picks], [int(labels[i]) for i in picks], layout
        )
        code = dataclasses.replace(code, indices=tuple(int(i) for i in picks))
        codes.append(add_nuisances(rng, code, images))
    return codes
