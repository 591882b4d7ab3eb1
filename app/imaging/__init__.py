"""Turn uploaded image bytes into what an MNIST digit looks like.

This is the only place that decodes images and normalizes them; ``/predict``, ``/predict/batch``
and ``/recognize`` all go through it, so the model always sees the same kind of input. It has two
stages, one module each:

- :mod:`app.imaging.decode`: check the header (format, declared size, JPEG scans) before any
  pixel is decoded, decode upright, large images on threads of their own;
- :mod:`app.imaging.normalize`: ``to_grayscale -> ink_map -> center_digit``, run by
  :func:`prepare_digit` (or skipped for images that already are MNIST digits).

Both raise :class:`app.core.errors.DomainError` with a code, never an HTTP status.
"""

from __future__ import annotations

from app.imaging.decode import (
    ACCEPTED_FORMATS,
    MAX_JPEG_SCANS,
    decode_image,
    load_image,
    open_image,
    run_in_image_slot,
    run_in_large_image_slot,
)
from app.imaging.normalize import (
    MNIST_SIZE,
    Normalize,
    center_digit,
    ink_map,
    normalize_image,
    prepare_digit,
    prepare_opened,
    reduce_image,
    to_grayscale,
)

__all__ = [
    "ACCEPTED_FORMATS",
    "MAX_JPEG_SCANS",
    "MNIST_SIZE",
    "Normalize",
    "center_digit",
    "decode_image",
    "ink_map",
    "load_image",
    "normalize_image",
    "open_image",
    "prepare_digit",
    "prepare_opened",
    "reduce_image",
    "run_in_image_slot",
    "run_in_large_image_slot",
    "to_grayscale",
]
