"""Normalize a decoded image into what an MNIST digit looks like.

MNIST digits are white ink on black, cropped to the ink, scaled to fit a 20×20 box keeping the
aspect ratio (antialiased), and placed in 28×28 with the centre of mass at the centre. The
pipeline for an arbitrary upload is::

    decode_image -> to_grayscale -> ink_map -> center_digit

and :func:`prepare_digit` runs it (or skips it for images that already are MNIST digits).
"""

from __future__ import annotations

from typing import Final, Literal, TypeVar

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageFilter

from app.core.deadline import check_deadline
from app.core.errors import domain_error
from app.reading.decode import MAX_JPEG_SCANS, decode_upright, open_image, run_in_image_slot
from app.reading.framing import paper_margin

__all__ = [
    "Normalize",
    "center_digit",
    "ink_map",
    "normalize_image",
    "prepare_digit",
    "prepare_opened",
    "reduce_image",
    "to_grayscale",
]

FloatImage = npt.NDArray[np.float32]
ByteImage = npt.NDArray[np.uint8]
Normalize = Literal["auto", "always", "never"]
_Pixel = TypeVar("_Pixel", bound=np.generic)
MNIST_SIZE: Final = 28
_BOX: Final = 20

# MNIST's mean centre of mass, measured on the test set, in (row, column) index coordinates.
_CENTRE: Final = 14.0

# Stroke width as a share of the digit's longer side, measured on the MNIST test set with
# width = 2 * area / perimeter of the pixels above 0.5: 5th percentile 0.061, median 0.092.
# Only strokes clearly thinner than nearly all of MNIST's are thickened, to a typical width.
_THIN_STROKE: Final = 0.05
_MNIST_STROKE: Final = 0.085

# Large photos are reduced before the ink is analysed: the result is 28×28 anyway, and this bounds
# the cost of the per-pixel work below whatever the upload's size.
_WORK_SIDE: Final = 512

# Below this contrast (grey levels, out of 255) between ink and paper there is no digit.
_MIN_CONTRAST: Final = 24.0


def to_grayscale(img: Image.Image) -> FloatImage:
    """Grey levels of an image as float32 [H, W] in 0..255, whatever its mode.

    Transparent pixels count as background: they are composited onto white when the visible
    pixels are mostly dark and onto black otherwise, so a canvas drawing of black or of white
    strokes on a transparent background reads as strokes on paper. 16-bit images are scaled
    to 0..255; palette images go through their palette.
    """
    mode = img.mode
    if mode.startswith("I;16"):
        return (np.asarray(img, dtype=np.float32) / 257.0).astype(np.float32)
    if mode == "I":
        arr = np.asarray(img, dtype=np.float32)
        # A 32-bit integer image beyond 8-bit range is, in practice, 16-bit data.
        return (arr / 257.0 if arr.max(initial=0) > 255 else arr).astype(np.float32)
    if mode == "F":
        return np.clip(np.asarray(img, dtype=np.float32), 0.0, 255.0)
    if _has_alpha(img):
        rgba = np.asarray(img.convert("RGBA"), dtype=np.float32)
        alpha = rgba[..., 3] / 255.0
        luma = _luma(rgba[..., :3])
        if float(alpha.min()) >= 1.0:
            return luma
        covered = float(alpha.sum())
        if covered == 0.0:
            return np.zeros(alpha.shape, np.float32)
        visible_mean = float((alpha * luma).sum()) / covered
        background = 255.0 if visible_mean < 128.0 else 0.0
        return (alpha * luma + (1.0 - alpha) * background).astype(np.float32)
    if mode in ("L", "1"):
        return np.asarray(img.convert("L"), dtype=np.float32)
    return _luma(np.asarray(img.convert("RGB"), dtype=np.float32))


def ink_map(gray: FloatImage) -> FloatImage:
    """Ink intensity, float32 [H, W] in 0..1: ink bright, background 0.

    Polarity is decided from the background (the median of the image's border) against the
    darkest and brightest pixels: dark ink on light paper is inverted. Uneven lighting is
    removed by fitting a smooth quadratic surface to the background pixels and subtracting it;
    paper texture is suppressed with a noise threshold estimated from the background itself.
    An image with no ink gives all zeros.
    """
    g: FloatImage = np.asarray(gray, dtype=np.float32)
    if g.ndim != 2 or g.size == 0:
        raise ValueError(f"ink_map expects a non-empty 2-D array, got shape {g.shape}")
    if min(g.shape) >= 64:
        # Sensor and paper noise is finer than any pen stroke at this size: a 3×3 mean cuts
        # its amplitude threefold and leaves strokes as they are.
        levels = Image.fromarray(np.clip(np.rint(g), 0, 255).astype(np.uint8))
        g = np.asarray(levels.filter(ImageFilter.BoxBlur(1)), dtype=np.float32)
    dark = _ink_is_dark(g)
    framed = paper_margin(g, dark)
    if framed is not None:
        # A tight crop: read it as if cut with a margin (see reading.framing), then cut that off.
        padded, pad = framed
        return ink_map(padded)[pad:-pad, pad:-pad]
    if dark:
        g = 255.0 - g
    residual = g - _background_surface(g)
    # Noise statistics from a subsample: a few ten thousand pixels estimate them as well.
    sample = _subsample(residual)
    bg = sample[sample <= _noise_threshold(sample)]
    noise = 1.4826 * float(np.median(np.abs(bg - np.median(bg)))) if bg.size else 0.0
    floor = 3.0 * noise + 2.0
    ink_pixels = residual[residual > floor]
    if ink_pixels.size == 0:
        return np.zeros(g.shape, np.float32)
    # The stroke's core, robust to a few glints, is what full-intensity ink means here.
    top = float(np.percentile(ink_pixels, 90))
    if top - floor < _MIN_CONTRAST:
        return np.zeros(g.shape, np.float32)
    ink: FloatImage = np.clip((residual - floor) / (top - floor), 0.0, 1.0).astype(np.float32)
    if min(g.shape) >= 64:
        # A pen stroke is several pixels wide here: a lone faint pixel that got past the noise
        # floor is paper grain, and would otherwise stretch the digit's bounding box.
        padded = np.pad(ink, 1)
        h, w = ink.shape
        local = np.zeros_like(ink)
        for dy in range(3):
            for dx in range(3):
                local += padded[dy : dy + h, dx : dx + w]
        ink[local < 0.9] = 0.0
    return ink


def center_digit(ink: FloatImage) -> ByteImage:
    """Place the ink as MNIST did: uint8 [28, 28], white on black.

    Crops to the ink's bounding box, thickens strokes that are much thinner than MNIST's (a fine
    pen on a large photo), scales to fit 20×20 keeping the aspect ratio with antialiasing, and
    puts the centre of mass at the centre of the 28×28 field.

    Raises:
        DomainError: 422 ``no_digit_found`` when there is no ink.
    """
    arr = np.asarray(ink, dtype=np.float32)
    rows = np.flatnonzero(arr.max(axis=1) > 0)
    cols = np.flatnonzero(arr.max(axis=0) > 0)
    if rows.size == 0:
        raise domain_error(
            "no_digit_found",
            "No digit found: the image is blank or its contrast is too low. "
            "Write the digit darker or larger, on a plain background.",
        )
    crop = arr[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    crop = _thicken(_reduce_crop(crop))
    height, width = crop.shape
    scale = _BOX / max(height, width)
    new_w = max(1, round(width * scale))
    new_h = max(1, round(height * scale))
    if (new_w, new_h) != (width, height):
        resized = Image.fromarray(crop).resize((new_w, new_h), Image.Resampling.LANCZOS)
        crop = np.clip(np.asarray(resized, dtype=np.float32), 0.0, None)
    peak = float(crop.max())
    if peak <= 0.0:
        raise domain_error("no_digit_found", "No digit found: the ink is too faint to read.")
    digit = np.clip(crop / peak, 0.0, 1.0)
    out = np.zeros((MNIST_SIZE, MNIST_SIZE), np.float32)
    mass = float(digit.sum())
    cy = float((digit.sum(axis=1) * np.arange(new_h)).sum()) / mass
    cx = float((digit.sum(axis=0) * np.arange(new_w)).sum()) / mass
    top = min(max(round(_CENTRE - cy), 0), MNIST_SIZE - new_h)
    left = min(max(round(_CENTRE - cx), 0), MNIST_SIZE - new_w)
    out[top : top + new_h, left : left + new_w] = digit
    result: ByteImage = np.rint(out * 255.0).astype(np.uint8)
    return result


def normalize_image(img: Image.Image) -> ByteImage:
    """Run the whole MNIST normalization on a decoded image: uint8 [28, 28].

    The image is reduced to the working size on the Pillow side first, so no float array is
    ever larger than that, whatever the upload's size or shape.
    """
    gray = to_grayscale(_shrink(img))
    check_deadline()
    ink = ink_map(gray)
    check_deadline()
    return center_digit(ink)


def prepare_digit(
    data: bytes, *, normalize: Normalize, max_pixels: int, max_jpeg_scans: int = MAX_JPEG_SCANS
) -> tuple[ByteImage, bool]:
    """Decode an upload and return (uint8 [28, 28] model input, whether it was normalized).

    ``auto`` passes a 28×28 single-channel image in MNIST polarity (white on black) unchanged,
    so the MNIST test files give exactly the offline accuracy, and normalizes anything else.
    ``always`` normalizes every image. ``never`` only converts to grey levels, and needs 28×28.

    Raises:
        DomainError: any error of :func:`decode_image`, 422 ``no_digit_found``, or 422
            ``wrong_size`` when ``never`` gets an image that is not 28×28.
    """
    img = open_image(data, max_pixels=max_pixels, max_jpeg_scans=max_jpeg_scans)
    return prepare_opened(img, normalize=normalize, max_pixels=max_pixels)


def prepare_opened(
    img: Image.Image, *, normalize: Normalize, max_pixels: int
) -> tuple[ByteImage, bool]:
    """:func:`prepare_digit` for an image already opened (and checked) by :func:`open_image`."""
    return run_in_image_slot(img, _decode_and_prepare, img, normalize, max_pixels)


def _decode_and_prepare(
    img: Image.Image, normalize: Normalize, max_pixels: int
) -> tuple[ByteImage, bool]:
    if normalize != "never" and img.format in ("JPEG", "MPO"):
        # A phone photo needs no more than the working resolution: let the JPEG decoder
        # produce 1/2, 1/4 or 1/8 scale directly (never below the working size).
        img.draft(img.mode, (_WORK_SIDE, _WORK_SIDE))
    img = decode_upright(img, max_pixels)[0]
    return _prepare_loaded(img, normalize)


def _prepare_loaded(img: Image.Image, normalize: Normalize) -> tuple[ByteImage, bool]:
    if normalize == "never":
        if img.size != (MNIST_SIZE, MNIST_SIZE):
            width, height = img.size
            raise domain_error(
                "wrong_size",
                f"With normalize=never the image must be 28×28 pixels, got {width}×{height}. "
                "Use normalize=auto to have it resized and centred.",
                details={"width": width, "height": height},
            )
        return _to_bytes(to_grayscale(img)), False
    if normalize == "auto" and img.mode == "L" and img.size == (MNIST_SIZE, MNIST_SIZE):
        pixels = np.asarray(img, dtype=np.uint8)
        if _is_mnist_style(pixels):
            return pixels, False
    return normalize_image(img), True


def _is_mnist_style(pixels: ByteImage) -> bool:
    """Whether a 28×28 grey image has ink, bright on a dark background (as _ink_is_dark decides).

    The hot path of every MNIST-sized upload, hence one sort and a precomputed border.
    """
    ordered = np.sort(pixels, axis=None)
    if ordered[0] == ordered[-1]:
        return False
    last = ordered.size - 1
    darkest, brightest = int(ordered[int(0.001 * last)]), int(ordered[int(0.999 * last)])
    border = np.sort(pixels.ravel()[_MNIST_BORDER])
    background = int(border[int(0.5 * (border.size - 1))])
    return not background - darkest > brightest - background


def _has_alpha(img: Image.Image) -> bool:
    return img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info


def _luma(rgb: FloatImage) -> FloatImage:
    # ITU-R 601-2 luma, the same weights Pillow's convert("L") uses.
    weights = np.array([0.299, 0.587, 0.114], np.float32)
    return (rgb @ weights).astype(np.float32)


def _to_bytes(gray: FloatImage) -> ByteImage:
    return np.clip(np.rint(gray), 0, 255).astype(np.uint8)


def _border(g: npt.NDArray[_Pixel]) -> npt.NDArray[_Pixel]:
    h, w = g.shape
    band = max(1, min(h, w) // 20)
    return np.concatenate(
        [g[:band].ravel(), g[-band:].ravel(), g[:, :band].ravel(), g[:, -band:].ravel()]
    )


# Flat indices of the pixels _border takes from a 28×28 image (corners twice, as it does).
_MNIST_BORDER: Final = _border(np.arange(MNIST_SIZE * MNIST_SIZE).reshape(MNIST_SIZE, MNIST_SIZE))


def _ink_is_dark(g: FloatImage | ByteImage) -> bool:
    """Whether the ink is darker than the background: the extreme farther from the border wins."""
    levels: ByteImage = (
        np.asarray(g, dtype=np.uint8)
        if g.dtype == np.uint8
        else np.clip(np.rint(g), 0, 255).astype(np.uint8)
    )
    background = _quantiles(_border(levels), (0.5,))[0]
    darkest, brightest = _quantiles(levels, (0.001, 0.999))
    return background - darkest > brightest - background


def _quantiles(levels: ByteImage, quantiles: tuple[float, ...]) -> list[int]:
    """Exact quantiles (the value at sorted index floor(q × (n - 1))) of 8-bit data."""
    flat = levels.ravel()
    last = flat.size - 1
    if flat.size <= 4096:
        # Small (an MNIST-sized image): one sort beats building a histogram.
        ordered = np.sort(flat)
        return [int(ordered[int(q * last)]) for q in quantiles]
    counts = np.cumsum(np.bincount(flat, minlength=256))
    return [int(np.searchsorted(counts, int(q * last), side="right")) for q in quantiles]


def _subsample(values: FloatImage, limit: int = 40_000) -> FloatImage:
    flat = values.ravel()
    step = max(1, flat.size // limit)
    return flat[::step]


def _noise_threshold(residual: FloatImage) -> float:
    mad = float(np.median(np.abs(residual - np.median(residual))))
    return float(np.median(residual)) + 2.5 * 1.4826 * mad + 1.0


def _background_surface(g: FloatImage) -> FloatImage:
    """A smooth quadratic surface through the background (ink excluded), same shape as ``g``."""
    h, w = g.shape
    if h < 8 or w < 8:
        return np.full(g.shape, float(np.median(_border(g))), np.float32)
    # Fit on a coarse grid: the surface is smooth, so 64 samples a side are plenty.
    step_y, step_x = max(1, h // 64), max(1, w // 64)
    sample = g[::step_y, ::step_x]
    ys = (np.arange(0, h, step_y, dtype=np.float32) / h) - 0.5
    xs = (np.arange(0, w, step_x, dtype=np.float32) / w) - 0.5
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    basis = np.stack([np.ones_like(yy), yy, xx, yy * yy, xx * xx, yy * xx], axis=-1).reshape(-1, 6)
    values = sample.ravel()
    # Ink covers well under half of a digit image, so the darker half is background to start
    # with; ink is brighter than the background at this point, so only the bright side is cut.
    keep = values <= np.median(values)
    coef = np.zeros(6, np.float32)
    for _ in range(4):
        if keep.sum() < 12:
            break
        # Normal equations: a 6×6 solve, far cheaper than a general least-squares routine.
        kept = basis[keep]
        gram = kept.T @ kept + np.eye(6, dtype=np.float32) * 1e-6
        coef = np.linalg.solve(gram, kept.T @ values[keep])
        residual = (values - basis @ coef).astype(np.float32)
        keep = residual <= _noise_threshold(residual[keep])
    low = float(values.min())
    high = float(values[keep].max()) if keep.any() else low
    fy = (np.arange(h, dtype=np.float32) / h - 0.5)[:, None]
    fx = (np.arange(w, dtype=np.float32) / w - 0.5)[None, :]
    c0, c1, c2, c3, c4, c5 = (float(c) for c in coef)
    surface = c0 + c1 * fy + c2 * fx + c3 * fy * fy + c4 * fx * fx + c5 * fy * fx
    # A quadratic can swing far where ink hides the background; the paper is never brighter
    # than the brightest pixel taken as paper.
    clipped: FloatImage = np.clip(surface, low, high).astype(np.float32)
    return clipped


def _shrink(img: Image.Image) -> Image.Image:
    """Reduce an image whose longer side exceeds the working size, averaging pixels."""
    width, height = img.size
    longest = max(width, height)
    if longest <= _WORK_SIDE:
        return img
    scale = _WORK_SIDE / longest
    return reduce_image(img, (max(1, round(width * scale)), max(1, round(height * scale))))


def reduce_image(img: Image.Image, size: tuple[int, int]) -> Image.Image:
    """A decoded image reduced to ``size`` by averaging pixels, on the Pillow side.

    Done before conversion to floats, so a large photo never exists as a full-size float
    array. Modes Pillow cannot average (palette, 1-bit, CMYK, 16-bit) are converted first, to
    as few bytes per pixel as keep their content.
    """
    check_deadline()
    if img.mode.startswith("I;16"):
        img = img.convert("I")
    elif img.mode == "1" and "transparency" not in img.info:
        img = img.convert("L")
    elif img.mode not in ("L", "LA", "RGB", "RGBA", "I", "F"):
        img = img.convert("RGBA" if _has_alpha(img) else "RGB")
    elif img.mode in ("L", "RGB") and "transparency" in img.info:
        img = img.convert("RGBA")
    return img.resize(size, Image.Resampling.BOX)


def _stroke_width(crop: FloatImage) -> float:
    """Mean stroke width in pixels: 2 × area / perimeter of the pixels above half intensity."""
    solid = crop > 0.5
    area = int(solid.sum())
    if area == 0:
        return 0.0
    padded = np.pad(solid, 1)
    perimeter = int((padded[:, 1:] != padded[:, :-1]).sum() + (padded[1:] != padded[:-1]).sum())
    return 2.0 * area / perimeter


def _reduce_crop(crop: FloatImage) -> FloatImage:
    """A digit's crop reduced (averaging) so that its longer side is at most the working size.

    Thickening costs the crop's area times the stroke growth, which grows with the crop: on a
    long thin stroke at full size it would dominate everything. ``/predict`` crops never
    exceed the working size (the image was reduced first); a large candidate of ``/recognize``
    may.
    """
    height, width = crop.shape
    longest = max(height, width)
    if longest <= _WORK_SIDE:
        return crop
    scale = _WORK_SIDE / longest
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    reduced = Image.fromarray(crop).resize(size, Image.Resampling.BOX)
    return np.asarray(reduced, dtype=np.float32)


def _thicken(crop: FloatImage) -> FloatImage:
    """Dilate strokes much thinner than MNIST's, relative to the digit's size, up to its median."""
    longest = max(crop.shape)
    width = _stroke_width(crop)
    if longest < 20 or width <= 0 or width >= _THIN_STROKE * longest:
        return crop
    grow = round(_MNIST_STROKE * longest - width)
    if grow < 1:
        return crop
    pad = (grow + 1) // 2
    out = np.pad(crop, pad)
    # A square max filter is separable: one pass along each axis.
    for axis in (0, 1):
        out = np.lib.stride_tricks.sliding_window_view(
            np.pad(out, [(grow // 2, grow - grow // 2) if a == axis else (0, 0) for a in (0, 1)]),
            grow + 1,
            axis=axis,
        ).max(axis=-1)
    return np.ascontiguousarray(out, dtype=np.float32)
