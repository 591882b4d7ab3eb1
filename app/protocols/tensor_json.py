"""JSON for the tensor doors: fast where bulk clients need it, the same answers everywhere.

A batch of 256 images sent as TF Serving ``instances`` is half a megabyte of JSON holding 200,000
small integers. The standard library parses it into as many Python objects and NumPy then walks
them again, which caps that door far below the binary one. Two things here avoid that:

- :func:`loads` parses with ``orjson`` (a maintained Rust JSON library, much faster
  than :mod:`json` on such bodies) and hands anything it refuses to :mod:`json`, so every body
  the service accepted before it still accepts with the same values (``NaN``, ``Infinity``, a
  UTF-8 byte-order mark), and a malformed one gets the same message as before. One difference:
  orjson reads an integer beyond 64 bits as a float, which no field of these protocols accepts
  either way (such a request is still a 400; its message names the number as a float).
- :func:`uint8_images` reads the one array shape bulk clients send, ``[N, 28, 28]`` plain
  integers 0-255, straight from the bytes with NumPy, without building Python objects. It is a
  recognizer, not a second parser: it answers only when the text is exactly such an array (JSON's
  own grammar, checked), and ``None`` for anything else, which the caller then reads the general
  way, so every check and every message stays where it was.

:func:`dumps` writes answers with ``orjson``: the same keys and order, and every float written in
its shortest round-trip form, so each parses back to the same double as before.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import orjson

from app.protocols.common import IMAGE_SHAPE

#: JSON's whitespace (RFC 8259 §2): nothing else may stand between tokens.
WHITESPACE: Final = b" \t\n\r"
_DIGITS: Final = b"0123456789"
_ARRAY_BYTES: Final = _DIGITS + b"[],"
_PIXELS: Final = IMAGE_SHAPE[0] * IMAGE_SHAPE[1]
_OPEN, _CLOSE, _ZERO = ord("["), ord("]"), ord("0")


def loads(body: bytes) -> Any:
    """The value of a JSON document, as :func:`json.loads` reads it.

    Integers beyond 64 bits come back as floats (orjson's reading), the one difference.

    Raises:
        ValueError: the body is not JSON (the standard library's message).
        RecursionError: it nests deeper than the standard library can read.
    """
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        # orjson is stricter (no NaN/Infinity, no byte-order mark, no lone surrogates): the
        # standard library decides, with its own value or message.
        return json.loads(body)


def dumps(content: Any) -> bytes:
    """Compact JSON for an answer (UTF-8). Model outputs reaching here are finite (checked)."""
    return orjson.dumps(content)


def uint8_images(text: bytes) -> npt.NDArray[np.uint8] | None:
    """uint8 images [N, 28, 28] when ``text`` is a JSON array of N×28×28 integers 0-255.

    ``None`` whenever it is anything else, valid or not (other shapes, floats, negative or
    larger numbers, strings, ``07``, stray commas): the caller then reads it the general way,
    which gives those their answer. JSON whitespace may stand between any two tokens.
    """
    if not text or text.translate(None, _ARRAY_BYTES + WHITESPACE):
        return None  # a byte no plain integer array holds
    spaced = any(space in text for space in WHITESPACE)
    compact = text.translate(None, WHITESPACE) if spaced else text
    if compact[0] != _OPEN or compact[-1] != _CLOSE:
        return None
    chars = np.frombuffer(compact, dtype=np.uint8)
    # ',' '[' ']' wrap round below zero and land far above 9.
    shifted = chars - _ZERO
    digit = shifted < 10
    before = np.zeros_like(digit)
    before[1:] = digit[:-1]
    after = np.zeros_like(digit)
    after[:-1] = digit[1:]
    if (
        # a leading zero ("07") is not a JSON number
        (digit & after & ~before & (chars == _ZERO)).any()
        # four digits in a row are over 255
        or (digit[3:] & digit[2:-1] & digit[1:-2] & digit[:-3]).any()
        # a number right after "]" or right before "[" is missing its comma
        or (after & (chars == _CLOSE)).any()
        or (before & (chars == _OPEN)).any()
    ):
        return None
    ends = np.flatnonzero(digit & ~after)
    count, rest = divmod(ends.size, _PIXELS)
    if count == 0 or rest:
        return None
    # Each gap between two brackets or commas holds at most one number (a number is a maximal
    # run of digits), and no number sits in a gap next to "]" before it or "[" after it (checked
    # above). So when the brackets and commas are exactly those of a [count, 28, 28] array and
    # there are as many numbers as its gaps for numbers, each of those gaps holds one number.
    if compact.translate(None, _DIGITS) != _separators(count):
        return None
    if spaced and _runs(np.frombuffer(text, dtype=np.uint8)) != ends.size:
        return None  # whitespace split a number ("1 2"), which JSON does not allow
    values = (shifted * digit).astype(np.uint16)
    numbers = values.copy()
    numbers[1:] += 10 * values[:-1]
    numbers[2:] += 100 * (values[:-2] * digit[1:-1])
    pixels = numbers[ends]
    if int(pixels.max()) > 255:
        return None
    return pixels.astype(np.uint8).reshape(count, *IMAGE_SHAPE)


def _runs(chars: npt.NDArray[np.uint8]) -> int:
    """How many runs of digits ``chars`` holds."""
    digit = np.less(chars - _ZERO, 10)
    return int(np.count_nonzero(digit[:-1] & ~digit[1:])) + int(digit[-1])


@lru_cache(maxsize=8)
def _separators(count: int) -> bytes:
    """The brackets and commas of a compact [count, 28, 28] JSON array, without its numbers."""
    row = b"[" + b"," * (IMAGE_SHAPE[1] - 1) + b"]"
    image = b"[" + b",".join([row] * IMAGE_SHAPE[0]) + b"]"
    return b"[" + b",".join([image] * count) + b"]"
