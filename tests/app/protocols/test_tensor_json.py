"""app.protocols.tensor_json: the fast reader answers only where the standard library agrees.

The reference is always :func:`json.loads` and :func:`numpy.asarray`, the service's general path:
whenever :func:`uint8_images` answers, the standard library must read the same text as the same
[N, 28, 28] integers; whenever the text is anything else, it must step aside (``None``).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from app.protocols.tensor_json import dumps, loads, uint8_images


def reference(text: bytes) -> np.ndarray | None:
    """What the general path reads: [N, 28, 28] integers 0-255, or None for anything else."""
    try:
        array = np.asarray(json.loads(text))
    except (ValueError, TypeError, RecursionError):
        return None
    if array.dtype.kind not in "iu" or array.ndim != 3 or array.shape[1:] != (28, 28):
        return None
    if not len(array) or array.min() < 0 or array.max() > 255:
        return None
    return array


def images(count: int, seed: int = 0) -> np.ndarray:
    """Random uint8 images with every width of number (0, 7, 42, 255...)."""
    pixels = np.random.default_rng(seed).integers(0, 256, (count, 28, 28), dtype=np.uint8)
    pixels.flat[:4] = [0, 7, 42, 255]
    return pixels


@pytest.mark.parametrize(
    "dump",
    [
        lambda v: json.dumps(v, separators=(",", ":")),
        json.dumps,
        lambda v: json.dumps(v, indent=2),
        lambda v: json.dumps(v, indent="\t"),
        lambda v: " \r\n" + json.dumps(v).replace("[", "[ ").replace(",", " ,\n") + "\t",
    ],
    ids=["compact", "spaced", "indented", "tabs", "odd-whitespace"],
)
@pytest.mark.parametrize("count", [1, 3])
def test_reads_integer_arrays_as_the_standard_library_does(
    dump: Callable[[Any], str], count: int
) -> None:
    pixels = images(count, seed=count)
    text = dump(pixels.tolist()).encode()
    got = uint8_images(text)
    assert got is not None
    assert got.dtype == np.uint8
    assert got.shape == (count, 28, 28)
    np.testing.assert_array_equal(got, reference(text))
    np.testing.assert_array_equal(got, pixels)


VALID = json.dumps(np.zeros((1, 28, 28), np.uint8).tolist(), separators=(",", ":")).encode()


@pytest.mark.parametrize(
    "text",
    [
        b"",
        b"[]",
        b"[[[]]]",
        VALID.replace(b"0", b"1.0", 1),  # a float
        VALID.replace(b"0", b"1e2", 1),
        VALID.replace(b"0", b"-1", 1),  # out of range
        VALID.replace(b"0", b"256", 1),
        VALID.replace(b"0", b"1000", 1),
        VALID.replace(b"0", b"0255", 1),  # four digits, not JSON
        VALID.replace(b"0", b"07", 1),  # a leading zero, not JSON
        VALID.replace(b"0", b"00", 1),
        VALID.replace(b"0", b"1 2", 1),  # whitespace inside a number
        VALID.replace(b"0", b'"7"', 1),  # a string
        VALID.replace(b"0", b"true", 1),
        VALID.replace(b"0", b"null", 1),
        VALID.replace(b"0", b"NaN", 1),
        VALID.replace(b"0,", b"", 1),  # 27 pixels in a row
        VALID.replace(b"0,", b"0,0,", 1),  # 29
        VALID.replace(b"0,", b",", 1),  # an empty element
        VALID.replace(b"0,", b"0,,", 1),
        VALID.replace(b"0]", b"0,]", 1),  # a trailing comma
        VALID.replace(b"],[", b"][", 1),  # a missing comma
        VALID.replace(b"],[", b"],0,[", 1),  # a number between rows
        VALID.replace(b"],[", b"]0,[", 1),
        VALID.replace(b"],[", b"],[0", 1),
        VALID.replace(b"],[0,", b"],0[,", 1),  # the same brackets, commas and count: "0["
        VALID.replace(b"0],[", b"]0,[", 1),  # and "]0"
        VALID[1:-1],  # one image, not a batch
        b"[" + VALID + b"]",  # one level too deep
        VALID + b",",
        b"0" + VALID,
        b"\xef\xbb\xbf" + VALID,  # a byte-order mark: the general path's to judge
        VALID.replace(b"0", b"\x0c0", 1),  # form feed: not JSON whitespace
    ],
)
def test_steps_aside_for_anything_else(text: bytes) -> None:
    assert uint8_images(text) is None


def test_never_answers_differently_from_the_standard_library() -> None:
    """Thousands of random edits of valid arrays: an answer, when given, is json's."""
    rng = np.random.default_rng(12)
    bases = [
        json.dumps(images(1, seed=1).tolist(), separators=(",", ":")).encode(),
        json.dumps(images(2, seed=2).tolist()).encode(),
    ]
    pieces = [b"", b"0", b"1", b"9", b"5", b",", b"[", b"]", b" ", b"\n", b"-", b".", b"e", b"00"]
    answered = declined = 0
    for _ in range(3000):
        text = bytearray(bases[int(rng.integers(len(bases)))])
        for _ in range(int(rng.integers(1, 3))):
            at = int(rng.integers(len(text)))
            cut = int(rng.integers(0, 3))
            text[at : at + cut] = pieces[int(rng.integers(len(pieces)))]
        got = uint8_images(bytes(text))
        expected = reference(bytes(text))
        if got is None:
            declined += 1
            continue
        answered += 1
        assert expected is not None, bytes(text)
        np.testing.assert_array_equal(got, expected)
    # Both branches were exercised: edits that keep a valid array (digit for digit) and others.
    assert answered > 100
    assert declined > 100


def test_loads_accepts_what_the_standard_library_accepts() -> None:
    assert loads(b'{"a": [1, 2]}') == {"a": [1, 2]}
    assert loads(b"\xef\xbb\xbf[1]") == [1]
    assert loads(b'["\\ud800"]') == ["\ud800"]
    nan, infinity = loads(b"[NaN, Infinity]")
    assert math.isnan(nan)
    assert infinity == math.inf


@pytest.mark.parametrize("text", [b"{not json", b"[01]", b"", b"\xff", b"[1,]"])
def test_loads_refuses_what_the_standard_library_refuses_with_its_message(text: bytes) -> None:
    try:
        json.loads(text)
    except ValueError as exc:
        message = str(exc)
    else:
        pytest.fail(f"json.loads read {text!r}")
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        loads(text)


def test_dumps_writes_floats_that_parse_to_the_same_values() -> None:
    rng = np.random.default_rng(3)
    probabilities = rng.dirichlet(np.full(10, 0.05), 200).astype(np.float32)
    probabilities[0, :4] = [0.0, 1.0, 1e-30, 5e-8]
    content = {
        "predictions": [
            {"probabilities": p, "digit": int(d)}
            for p, d in zip(probabilities.tolist(), probabilities.argmax(1), strict=True)
        ],
        "name": "Größe",
    }
    text = dumps(content)
    assert isinstance(text, bytes)
    assert json.loads(text) == json.loads(json.dumps(content, allow_nan=False))
    assert list(json.loads(text)) == ["predictions", "name"]
