"""The client's header parser reads the size Pillow (and so the service) reads, format by format."""

from __future__ import annotations

import io

import pytest
from digits_client.imagesize import image_pixels, image_size
from PIL import Image


def encoded(size: tuple[int, int], fmt: str, mode: str = "L", **options: object) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, 128).save(buffer, fmt, **options)
    return buffer.getvalue()


CASES = [
    ("png-gray", lambda s: encoded(s, "PNG")),
    ("png-rgba", lambda s: encoded(s, "PNG", "RGBA")),
    ("jpeg", lambda s: encoded(s, "JPEG", "RGB")),
    ("jpeg-progressive", lambda s: encoded(s, "JPEG", "RGB", progressive=True)),
    ("jpeg-exif", lambda s: encoded(s, "JPEG", "RGB", exif=b"Exif\x00\x00" + b"\x00" * 9000)),
    ("gif", lambda s: encoded(s, "GIF", "P")),
    ("bmp", lambda s: encoded(s, "BMP", "RGB")),
    ("bmp-gray", lambda s: encoded(s, "BMP")),
    ("webp-lossy", lambda s: encoded(s, "WEBP", "RGB")),
    ("webp-lossless", lambda s: encoded(s, "WEBP", "RGB", lossless=True)),
    ("webp-alpha", lambda s: encoded(s, "WEBP", "RGBA")),
]


@pytest.mark.parametrize(("name", "make"), CASES, ids=[name for name, _ in CASES])
@pytest.mark.parametrize("size", [(1, 1), (28, 28), (640, 480), (301, 4099)])
def test_the_header_gives_pillows_size(name: str, make: object, size: tuple[int, int]) -> None:
    assert callable(make)
    data = make(size)
    with Image.open(io.BytesIO(data)) as opened:
        assert image_size(data) == opened.size, name
    assert image_pixels(data) == size[0] * size[1]


def test_a_top_down_bitmap_counts_its_height() -> None:
    data = bytearray(encoded((30, 20), "BMP", "RGB"))
    data[22:26] = (-20).to_bytes(4, "little", signed=True)
    assert image_size(bytes(data)) == (30, 20)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"not an image at all",
        encoded((10, 10), "TIFF"),
        encoded((50, 40), "PNG")[:20],
        encoded((50, 40), "JPEG", "RGB")[:100],
        b"\xff\xd8\xff\xda\x00\x08" + b"\x00" * 20,
        b"RIFF\x00\x00\x00\x00WEBPVP8 " + b"\x00" * 8,
    ],
    ids=["empty", "text", "tiff", "png-cut", "jpeg-cut", "jpeg-no-frame", "webp-bad"],
)
def test_what_it_cannot_read_has_no_size(data: bytes) -> None:
    assert image_size(data) is None
    assert image_pixels(data) is None
