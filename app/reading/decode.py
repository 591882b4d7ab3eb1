"""Decode uploads safely: check the header (format, declared size, JPEG scans) before any
pixel is decoded, then decode upright, large images on threads of their own.
"""

from __future__ import annotations

import concurrent.futures
import contextvars
import functools
import io
from collections.abc import Callable
from typing import Final, ParamSpec, TypeVar

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from app.core.deadline import check_deadline, current_deadline, deadline_exceeded
from app.core.errors import DomainError, domain_error

__all__ = [
    "ACCEPTED_FORMATS",
    "MAX_JPEG_SCANS",
    "decode_image",
    "load_image",
    "open_image",
    "run_in_image_slot",
    "run_in_large_image_slot",
]

_Params = ParamSpec("_Params")
_Result = TypeVar("_Result")

#: Formats accepted from clients, as Pillow names them (MPO is how Pillow names camera JPEGs).
ACCEPTED_FORMATS: Final = frozenset({"PNG", "JPEG", "MPO", "BMP", "GIF", "WEBP"})
_ACCEPTED_TEXT: Final = "PNG, JPEG, BMP, GIF or WebP"
_PILLOW_FORMATS: Final = ["PNG", "JPEG", "BMP", "GIF", "WEBP"]

# Signatures of accepted formats: bytes that start like one of these but do not open are a
# damaged image, not "something else", and deserve the more precise message.
_SIGNATURES: Final = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"BM", b"GIF87a", b"GIF89a")

# Images from this many pixels up are decoded and normalized at most two at a time (one per
# core), from the decode to the last float array, on threads of their own.
_LARGE_IMAGE_PIXELS: Final = 2_000_000
_large_image_threads = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="large-image")

#: Default cap on the scans of a JPEG: a progressive JPEG is decoded once per scan, so the
#: scans, not the pixels, bound its cost; ordinary encoders write at most a dozen.
MAX_JPEG_SCANS: Final = 32

# The start-of-scan marker. In entropy-coded data a 0xFF byte is always followed by 0x00 or a
# restart marker, so every occurrence of these two bytes starts a scan (an embedded thumbnail's
# scans are counted too, a few at most).
_SOS: Final = b"\xff\xda"


def decode_image(
    data: bytes, *, max_pixels: int, max_jpeg_scans: int = MAX_JPEG_SCANS
) -> Image.Image:
    """Decode uploaded bytes into a Pillow image, refusing anything unsafe or unusable.

    The declared width × height is checked against ``max_pixels`` and a JPEG's scans against
    ``max_jpeg_scans`` before any pixel is decoded, so decompression bombs cost nothing. EXIF
    orientation is applied; animated images give their first frame.

    Raises:
        DomainError: 400 ``empty_file``, 400 ``not_an_image``, 415 ``unsupported_format``,
            413 ``image_too_large``, 422 ``too_many_jpeg_scans`` or 400 ``truncated_image``.
    """
    img = open_image(data, max_pixels=max_pixels, max_jpeg_scans=max_jpeg_scans)
    return run_in_image_slot(img, lambda: decode_upright(img, max_pixels)[0])


def open_image(
    data: bytes, *, max_pixels: int, max_jpeg_scans: int = MAX_JPEG_SCANS
) -> Image.Image:
    """Read and check an upload's header only (format, declared size, JPEG scans): no pixels.

    Cheap whatever the image: what it returns is decoded later by :func:`load_image` or
    :func:`prepare_opened`, through :func:`run_in_image_slot`.

    Raises:
        DomainError: 400 ``empty_file``, 400 ``not_an_image``, 415 ``unsupported_format``,
            413 ``image_too_large``, 422 ``too_many_jpeg_scans`` or 400 ``truncated_image``.
    """
    img = _open(data, max_pixels)
    if img.format in ("JPEG", "MPO"):
        scans = data.count(_SOS)
        if scans > max_jpeg_scans:
            raise domain_error(
                "too_many_jpeg_scans",
                f"The JPEG holds {scans} scans; at most {max_jpeg_scans} are decoded (each scan "
                "of a progressive JPEG is decoded in full). Save the image as a baseline "
                "(non-progressive) JPEG or as PNG and try again.",
                details={"scans": scans, "max_scans": max_jpeg_scans},
            )
    return img


def load_image(
    img: Image.Image, *, max_pixels: int, work_pixels: int | None = None
) -> tuple[Image.Image, tuple[int, int]]:
    """Decode an opened image upright; return it and its full upright size (width, height).

    With ``work_pixels``, a JPEG is decoded directly at 1/2, 1/4 or 1/8 scale when that still
    leaves at least that many pixels (the caller reduces to that size anyway), so the decoded
    image may be smaller than the full size returned beside it. Call through
    :func:`run_in_image_slot`.

    Raises:
        DomainError: 413 ``image_too_large`` or 400 ``truncated_image``.
    """
    width, height = img.size
    if work_pixels is not None and img.format in ("JPEG", "MPO") and width * height > work_pixels:
        scale = float(np.sqrt(work_pixels / (width * height)))
        img.draft(
            img.mode, (max(1, int(np.ceil(width * scale))), max(1, int(np.ceil(height * scale))))
        )
    loaded, transposed = decode_upright(img, max_pixels)
    return loaded, ((height, width) if transposed else (width, height))


def _open(data: bytes, max_pixels: int) -> Image.Image:
    """Read and check the header only: format and declared size."""
    if not data:
        raise domain_error("empty_file", "The uploaded file is empty. Send an image file.")
    try:
        img = Image.open(io.BytesIO(data), formats=_PILLOW_FORMATS)
    except Image.DecompressionBombError as exc:
        raise _too_large(None, max_pixels) from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise _unreadable(data) from exc
    if img.format not in ACCEPTED_FORMATS:
        raise _unsupported(img.format)
    width, height = img.size
    if width * height > max_pixels:
        raise _too_large((width, height), max_pixels)
    if width == 0 or height == 0:
        raise domain_error("not_an_image", "The image has no pixels (width or height is 0).")
    return img


def decode_upright(img: Image.Image, max_pixels: int) -> tuple[Image.Image, bool]:
    """Decode the pixels of an opened image and turn it upright (EXIF orientation).

    Returns the image and whether turning it upright swapped its width and height.
    """
    check_deadline()
    transposed = False
    try:
        img.load()
        orientation = img.getexif().get(0x0112, 1)
        if orientation in range(2, 9):
            img = ImageOps.exif_transpose(img)
            transposed = orientation in range(5, 9)
    except Image.DecompressionBombError as exc:
        raise _too_large(img.size, max_pixels) from exc
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, KeyError) as exc:
        # Pillow signals damaged pixel data with any of these depending on the codec.
        raise domain_error(
            "truncated_image",
            f"The {img.format} image is truncated or corrupt and cannot be decoded. "
            "Upload the complete file again.",
        ) from exc
    return img, transposed


def run_in_image_slot(
    img: Image.Image,
    work: Callable[_Params, _Result],
    *args: _Params.args,
    **kwargs: _Params.kwargs,
) -> _Result:
    """Run ``work(*args, **kwargs)``, the work on an opened image's pixels, within the limit.

    A large image costs its width × height in memory (four times that in colour) while it is
    decoded, reduced and turned into floats. Its whole pipeline runs on one of two threads kept
    for large images while the calling thread waits, which bounds the peak whatever the number
    of concurrent uploads; and because the same two threads allocate and free that memory, the
    C allocator's per-thread caches of freed memory stay two, not one per thread of the pool.
    Small images run here at once. Waiting ends at the request's deadline (503
    ``deadline_exceeded``); work already started stops at its next deadline check.
    """
    width, height = img.size
    if width * height < _LARGE_IMAGE_PIXELS:
        return work(*args, **kwargs)
    return run_in_large_image_slot(work, *args, **kwargs)


def run_in_large_image_slot(
    work: Callable[_Params, _Result], *args: _Params.args, **kwargs: _Params.kwargs
) -> _Result:
    """Run ``work(*args, **kwargs)`` on one of the two large-image threads, waiting for it.

    For work known to be large whatever the image's size (see :func:`run_in_image_slot`).
    """
    deadline = current_deadline()
    # The request's context (its deadline) goes with the work to the other thread.
    call = functools.partial(work, *args, **kwargs)
    future = _large_image_threads.submit(contextvars.copy_context().run, call)
    try:
        return future.result(timeout=None if deadline is None else max(0.0, deadline.remaining()))
    except concurrent.futures.TimeoutError:
        future.cancel()
        assert deadline is not None  # without a timeout, result() only returns or raises
        raise deadline_exceeded(deadline.seconds) from None


def _too_large(size: tuple[int, int] | None, max_pixels: int) -> DomainError:
    declared = f" ({size[0]}×{size[1]} = {size[0] * size[1]:,} pixels)" if size else ""
    return domain_error(
        "image_too_large",
        f"The image is too large{declared}; at most {max_pixels:,} pixels (width × height) "
        "are accepted. Resize it and try again.",
        details={
            "max_pixels": max_pixels,
            **({"width": size[0], "height": size[1]} if size else {}),
        },
    )


def _unsupported(fmt: str | None) -> DomainError:
    return domain_error(
        "unsupported_format",
        f"{fmt or 'This'} images are not supported. Send a {_ACCEPTED_TEXT} file.",
        details={"format": fmt, "accepted": sorted(ACCEPTED_FORMATS - {"MPO"})},
    )


def _unreadable(data: bytes) -> DomainError:
    if data.startswith(_SIGNATURES) or (data[:4] == b"RIFF" and data[8:12] == b"WEBP"):
        return domain_error(
            "truncated_image",
            "The image is truncated or corrupt: its header could not be read. "
            "Upload the complete file again.",
        )
    try:
        # Only to name the format in the message: the header is parsed, pixels never are.
        with Image.open(io.BytesIO(data)) as other:
            fmt = other.format
    except Image.DecompressionBombError:
        fmt = "This"
    except Exception:  # any failure here just means "not an image we know"
        fmt = None
    if fmt is not None:
        return _unsupported(fmt)
    return domain_error(
        "not_an_image",
        f"The uploaded file is not an image. Send a {_ACCEPTED_TEXT} file.",
    )
