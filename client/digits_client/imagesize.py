"""An image's width and height from its header, without decoding it (and without Pillow).

The service counts a request's pixels from the images' headers before it decodes any
(``DIGITS_MAX_REQUEST_PIXELS``); the client reads the same headers to size its batches so that
none is refused. The formats are the ones the service accepts: PNG, JPEG, GIF, BMP and WebP.
Anything else answers None: the service will refuse such a file on its own, as an item, without
counting its pixels.
"""

from __future__ import annotations

import struct
from typing import Final

#: JPEG start-of-frame markers (SOF0-SOF15 less DHT, JPG and DAC): they hold the frame size.
_SOF_MARKERS: Final = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
#: JPEG markers with no length field.
_STANDALONE: Final = frozenset({0x01, *range(0xD0, 0xD8)})


def image_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) declared by an image's header; None when it is no format known here."""
    try:
        if data.startswith(b"\x89PNG\r\n\x1a\n"):
            return _png(data)
        if data.startswith(b"\xff\xd8"):
            return _jpeg(data)
        if data[:6] in (b"GIF87a", b"GIF89a"):
            return _sized(*struct.unpack_from("<HH", data, 6))
        if data.startswith(b"BM"):
            return _bmp(data)
        if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
            return _webp(data)
    except struct.error:  # a header cut short
        return None
    return None


def image_pixels(data: bytes) -> int | None:
    """Width × height from the header, or None (see :func:`image_size`)."""
    size = image_size(data)
    return None if size is None else size[0] * size[1]


def _sized(width: int, height: int) -> tuple[int, int] | None:
    return (width, height) if width > 0 and height > 0 else None


def _png(data: bytes) -> tuple[int, int] | None:
    if data[12:16] != b"IHDR":
        return None
    return _sized(*struct.unpack_from(">II", data, 16))


def _jpeg(data: bytes) -> tuple[int, int] | None:
    position = 2
    while position + 4 <= len(data):
        if data[position] != 0xFF:
            return None
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        if marker in _STANDALONE:
            position += 2
            continue
        (length,) = struct.unpack_from(">H", data, position + 2)
        if marker in _SOF_MARKERS:
            height, width = struct.unpack_from(">HH", data, position + 5)
            return _sized(width, height)
        if marker == 0xDA or length < 2:  # image data before any frame header: broken
            return None
        position += 2 + length
    return None


def _bmp(data: bytes) -> tuple[int, int] | None:
    (header,) = struct.unpack_from("<I", data, 14)
    if header == 12:  # OS/2 BITMAPCOREHEADER
        return _sized(*struct.unpack_from("<HH", data, 18))
    width, height = struct.unpack_from("<ii", data, 18)
    return _sized(abs(width), abs(height))  # a negative height is a top-down bitmap


def _webp(data: bytes) -> tuple[int, int] | None:
    chunk = data[12:16]
    if chunk == b"VP8X":
        width = int.from_bytes(data[24:27], "little") + 1
        height = int.from_bytes(data[27:30], "little") + 1
        return _sized(width, height)
    if chunk == b"VP8 ":
        if data[23:26] != b"\x9d\x01\x2a":
            return None
        width, height = struct.unpack_from("<HH", data, 26)
        return _sized(width & 0x3FFF, height & 0x3FFF)
    if chunk == b"VP8L":
        if data[20] != 0x2F:
            return None
        (bits,) = struct.unpack_from("<I", data, 21)
        return _sized((bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1)
    return None
