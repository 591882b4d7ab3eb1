"""Synthetic postal-code images built from MNIST **test** digits, for tests and the benchmark.

Each image is a string of handwritten digits laid out the way people write a postal code on an
envelope: uneven spacing (some neighbours touching or overlapping), every digit with its own
size, aspect and slant, a slightly wavy baseline, dark ink on light paper or the reverse,
sometimes in colour, with sensor noise and stray specks. Everything is drawn from a seeded
generator, so a seed always gives the same images.

Only the 10,000 MNIST test digits are used: the model never saw them, so the benchmark measures
reading, not memory.
"""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import numpy as np
from PIL import Image

from app.reading.components import Box

#: MNIST digits are about 20 px tall inside their 28×28 frame.
_MNIST_INK_HEIGHT = 20.0


@dataclasses.dataclass(frozen=True)
class PostalCode:
    """One rendered postal code and its ground truth."""

    png: bytes
    digits: str
    boxes: tuple[Box, ...]
    width: int
    height: int
    dark_on_light: bool
    touching_pairs: int
    indices: tuple[int, ...] = ()
    """Positions of the digits in the image array they were drawn from, left to right."""


@dataclasses.dataclass(frozen=True)
class Layout:
    """The random ranges a postal code is drawn from (defaults: the benchmark's mix)."""

    length: int = 5
    digit_height: tuple[float, float] = (22.0, 110.0)
    scale_jitter: tuple[float, float] = (0.85, 1.15)
    aspect_jitter: tuple[float, float] = (0.9, 1.1)
    slant: tuple[float, float] = (-0.3, 0.3)
    baseline_jitter: float = 0.08
    gap: tuple[float, float] = (0.06, 0.6)
    touching_probability: float = 0.2
    overlap: tuple[float, float] = (0.0, 0.12)
    margin: tuple[float, float] = (0.2, 1.0)
    noise_sigma: tuple[float, float] = (0.0, 10.0)
    speck_probability: float = 0.5
    max_specks: int = 8
    colour_probability: float = 0.3
    dark_on_light_probability: float = 0.5


def load_test_digits(data_dir: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The 10,000 MNIST test images (uint8 [N,28,28], white ink on black) and their labels.

    Read with the project's verified loader from ``data_dir`` or ``$MNIST_DATA_DIR``.
    """
    from training.data import load_mnist

    data = load_mnist(data_dir, progress=False)
    return data.test_images, data.test_labels.astype(np.int64)


def _ink_bbox(ink: np.ndarray, level: float = 0.0) -> tuple[int, int, int, int]:
    rows = np.flatnonzero((ink > level).any(axis=1))
    cols = np.flatnonzero((ink > level).any(axis=0))
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def _render_digit(digit: np.ndarray, height: float, aspect: float, slant: float) -> np.ndarray:
    """One MNIST digit scaled to ``height`` px of ink, stretched by ``aspect``, slanted."""
    top, bottom, left, right = _ink_bbox(digit)
    crop = Image.fromarray(digit[top:bottom, left:right])
    scale = height / _MNIST_INK_HEIGHT
    new_w = max(1, round(crop.width * scale * aspect))
    new_h = max(1, round(crop.height * scale))
    scaled = _shear(crop.resize((new_w, new_h), Image.Resampling.BICUBIC), slant)
    out = np.asarray(scaled, dtype=np.float32)
    top, bottom, left, right = _ink_bbox(out, 8.0)
    return out[top:bottom, left:right]


def _shear(img: Image.Image, slant: float) -> Image.Image:
    extra = int(np.ceil(abs(slant) * img.height))
    # Output pixel (x, y) samples input (x + slant·y − shift, y); the shift keeps it in frame.
    shift = extra if slant > 0 else 0
    return img.transform(
        (img.width + extra, img.height),
        Image.Transform.AFFINE,
        (1.0, slant, -shift, 0.0, 1.0, 0.0),
        resample=Image.Resampling.BILINEAR,
    )


def _specks(
    rng: np.random.Generator, shape: tuple[int, int], count: int, radius: float
) -> np.ndarray:
    """Round dots of ink (0..255) scattered over the page: dust, pen slips."""
    height, width = shape
    yy, xx = np.mgrid[0:height, 0:width]
    out = np.zeros(shape, dtype=np.float32)
    for _ in range(count):
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        r = rng.uniform(0.5, 1.0) * radius
        y0, y1 = max(0, int(cy - r - 2)), min(height, int(cy + r + 3))
        x0, x1 = max(0, int(cx - r - 2)), min(width, int(cx + r + 3))
        dist = np.hypot(yy[y0:y1, x0:x1] - cy, xx[y0:y1, x0:x1] - cx)
        dot = np.clip(r + 0.5 - dist, 0.0, 1.0) * 255.0
        out[y0:y1, x0:x1] = np.maximum(out[y0:y1, x0:x1], dot)
    return out


def render_postal_code(
    rng: np.random.Generator,
    digits: list[np.ndarray],
    labels: list[int],
    layout: Layout = Layout(),
) -> PostalCode:
    """Lay out the given MNIST digits as one postal-code image (PNG) with its ground truth."""
    base = rng.uniform(*layout.digit_height)
    glyphs = [
        _render_digit(
            digit,
            base * rng.uniform(*layout.scale_jitter),
            rng.uniform(*layout.aspect_jitter),
            rng.uniform(*layout.slant),
        )
        for digit in digits
    ]
    margin_x = [base * rng.uniform(*layout.margin) for _ in range(2)]
    margin_y = [base * rng.uniform(*layout.margin) for _ in range(2)]
    tallest = max(g.shape[0] for g in glyphs)
    baseline = margin_y[0] + tallest
    placements: list[tuple[int, int]] = []
    touching = 0
    cursor = margin_x[0]
    for i, glyph in enumerate(glyphs):
        if i > 0:
            if rng.random() < layout.touching_probability:
                touching += 1
                cursor -= base * rng.uniform(*layout.overlap)
            else:
                cursor += base * rng.uniform(*layout.gap)
        drop = base * rng.uniform(-layout.baseline_jitter, layout.baseline_jitter)
        top = baseline + drop - glyph.shape[0]
        placements.append((round(cursor), round(top)))
        cursor += glyph.shape[1]
    top_most = min(y for _, y in placements)
    # Shift everything down if a raised digit went above the top margin.
    shift_y = max(0, round(margin_y[0]) - top_most)
    width = round(cursor + margin_x[1])
    height = round(
        max(y + shift_y + g.shape[0] for (_, y), g in zip(placements, glyphs, strict=True))
        + margin_y[1]
    )
    ink = np.zeros((height, width), dtype=np.float32)
    boxes = []
    for (x, y), glyph in zip(placements, glyphs, strict=True):
        y += shift_y
        gh, gw = glyph.shape
        ink[y : y + gh, x : x + gw] = np.maximum(ink[y : y + gh, x : x + gw], glyph)
        boxes.append(Box(x, y, gw, gh))
    if rng.random() < layout.speck_probability:
        count = int(rng.integers(1, layout.max_specks + 1))
        ink = np.maximum(ink, _specks(rng, ink.shape, count, max(1.0, base / 30)))
    alpha = ink / 255.0

    dark_on_light = bool(rng.random() < layout.dark_on_light_probability)
    colour = bool(rng.random() < layout.colour_probability)
    if dark_on_light:
        paper = rng.uniform(180, 255, size=3) if colour else np.full(3, rng.uniform(180, 255))
        pen = rng.uniform(0, 90, size=3) if colour else np.full(3, rng.uniform(0, 90))
    else:
        paper = rng.uniform(0, 60, size=3) if colour else np.full(3, rng.uniform(0, 60))
        pen = rng.uniform(190, 255, size=3) if colour else np.full(3, rng.uniform(190, 255))
    pixels = paper + alpha[..., None] * (pen - paper)
    sigma = rng.uniform(*layout.noise_sigma)
    pixels = pixels + rng.normal(0.0, sigma, size=(height, width, 1))
    pixels = np.clip(np.rint(pixels), 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels, "RGB") if colour else Image.fromarray(pixels[..., 0], "L")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return PostalCode(
        png=buffer.getvalue(),
        digits="".join(str(int(label)) for label in labels),
        boxes=tuple(boxes),
        width=width,
        height=height,
        dark_on_light=dark_on_light,
        touching_pairs=touching,
    )


def generate_postal_codes(
    images: np.ndarray,
    labels: np.ndarray,
    count: int,
    seed: int = 0,
    layout: Layout = Layout(),
) -> list[PostalCode]:
    """``count`` postal codes whose digits are drawn at random from ``images``/``labels``.

    ``images`` must be MNIST **test** digits (uint8 [N,28,28], white ink on black).
    """
    rng = np.random.default_rng(seed)
    codes = []
    for _ in range(count):
        picks = rng.integers(0, len(images), size=layout.length)
        code = render_postal_code(
            rng, [images[i] for i in picks], [int(labels[i]) for i in picks], layout
        )
        codes.append(dataclasses.replace(code, indices=tuple(int(i) for i in picks)))
    return codes
