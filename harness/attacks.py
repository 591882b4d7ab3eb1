"""Hostile images that cost far more to process than their few bytes suggest (issue 9), and
hostile files dropped where the model poller reads.

Shared by the operations tests (scaled down) and ``benchmarks/bench_memory.py`` (full size):
each reproduces one way a single small upload once made the service work for seconds or
minutes, or grow by gigabytes; or one way a file in the models directory (or the version
policy file) once stopped the poller, failed a version or cost hundreds of MiB at load.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = [
    "bar_png",
    "blank_one_bit_png",
    "deeply_nested_config",
    "deeply_nested_json",
    "huge_number_config",
    "long_stroke_png",
    "oversized_likeness_basis",
    "progressive_jpeg_with_repeated_scan",
    "thin_strip_png",
]


def _png(img: Image.Image) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, "PNG", optimize=True)
    return buffer.getvalue()


def long_stroke_png(height: int = 96_000, stroke: int = 32_000) -> bytes:
    """A 1-pixel-wide, ``height``-tall 1-bit PNG: one dark vertical stroke on white (row 1).

    A few hundred bytes; thickening the stroke at full resolution costs time ~ length^2.6.
    """
    column = np.full((height, 1), 255, np.uint8)
    top = (height - stroke) // 2
    column[top : top + stroke] = 0
    return _png(Image.fromarray(column).convert("1"))


def bar_png(width: int = 20_000, height: int = 50, bar: int = 4) -> bytes:
    """A wide 1-bit PNG holding one thin dark horizontal bar across it (row 2).

    A bar much wider than tall is cut at nearly every column, each run of pieces a candidate.
    """
    pixels = np.full((height, width), 255, np.uint8)
    top = (height - bar) // 2
    pixels[top : top + bar, width // 20 : width - width // 20] = 0
    return _png(Image.fromarray(pixels).convert("1"))


def blank_one_bit_png(side: int = 5_000) -> bytes:
    """A ``side`` × ``side`` 1-bit PNG with a small dark mark: a few KB, side² pixels (row 4)."""
    pixels = np.full((side, side), 255, np.uint8)
    pixels[side // 3 : side // 3 + side // 10, side // 2 : side // 2 + side // 50] = 0
    return _png(Image.fromarray(pixels).convert("1"))


def _segments(data: bytes) -> list[tuple[int, int]]:
    """(start, end) of each marker segment of a JPEG, a scan's entropy-coded data included."""
    spans = []
    at = 2  # after SOI
    while at < len(data):
        assert data[at] == 0xFF, f"no marker at {at}"
        marker = data[at + 1]
        if marker == 0xD9:  # EOI
            spans.append((at, at + 2))
            break
        length = int.from_bytes(data[at + 2 : at + 4], "big")
        end = at + 2 + length
        if marker == 0xDA:  # SOS: entropy-coded data runs to the next non-RST marker
            while True:
                end = data.index(b"\xff", end)
                following = data[end + 1]
                if following == 0x00 or 0xD0 <= following <= 0xD7:
                    end += 2
                    continue
                break
        spans.append((at, end))
        at = end
    return spans


def progressive_jpeg_with_repeated_scan(side: int = 5_000, repeats: int = 1_000) -> bytes:
    """A progressive JPEG whose last scan is repeated ``repeats`` times (row 3).

    Legal enough for libjpeg, which decodes every scan over the whole image: the cost is
    side² × scans, for a file of a few hundred KB.
    """
    # Plain paper: every scan is a few bytes of end-of-band runs, however large the image.
    img = Image.new("L", (side, side), 230)
    buffer = io.BytesIO()
    img.save(buffer, "JPEG", progressive=True, quality=75)
    data = buffer.getvalue()
    spans = _segments(data)
    last_scan = max(i for i, (start, _) in enumerate(spans) if data[start + 1] == 0xDA)
    start, end = spans[last_scan]
    return data[:end] + data[start:end] * repeats + data[end:]


def thin_strip_png(width: int = 4_096, height: int = 20, *, bar: bool = False) -> bytes:
    """A thin white strip holding one dark 3-px vertical stroke, or (``bar``) a dark bar across
    its whole width: 198 bytes at 4096×20.

    The paper margin framing such a strip was a quarter of its length on every side: ~12.7
    million pixels of float arrays (150-300 MiB) for one request.
    """
    page = np.full((height, width), 255, np.uint8)
    if bar:
        page[height // 3 : 2 * height // 3, :] = 0
    else:
        page[:, width // 2 : width // 2 + 3] = 0
    return _png(Image.fromarray(page))


#: The head of a TensorFlow Serving ``models.config`` serving the model "mnist".
_CONFIG_HEAD = 'model_config_list { config { name: "mnist" model_version_policy { latest { '


def deeply_nested_config(depth: int = 3_000) -> str:
    """A ``models.config`` whose messages nest ``depth`` deep (the parser recursed once per
    level: a RecursionError at every poll)."""
    return "model_config_list { " + "a { " * depth + "}" * (depth + 1)


def huge_number_config(digits: int = 5_000) -> str:
    """A ``models.config`` whose ``num_versions`` has ``digits`` digits (past Python's 4,300
    for ``int()``: a ValueError at every poll)."""
    return _CONFIG_HEAD + f"num_versions: {'9' * digits} }} }} }} }}"


def oversized_likeness_basis(path: Path, components: int = 20_000) -> None:
    """Write a likeness basis of ``components`` zero components per class to ``path``: 0.3 MiB
    compressed at 20,000, 600 MiB of float32 once loaded (a basis holds 30).

    Written in chunks by numpy (the zeros are never all in memory).
    """
    means = np.zeros((10, 784), np.float16)
    comps = np.zeros((10, components, 784), np.float16)
    with path.open("wb") as handle:
        np.savez_compressed(handle, means=means, components=comps)


def deeply_nested_json(depth: int = 100_000) -> bytes:
    """A JSON document of ``depth`` nested arrays (200 KB at 100,000): the parser's recursion
    limit, once a failed version."""
    return b"[" * depth + b"]" * depth
