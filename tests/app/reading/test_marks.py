"""What is not a digit is found, dropped and listed (app/reading/marks.py), on images drawn here.

Each test draws a clear digit string (three shapes the reader gets right from geometry alone,
see test_segmentation.py), adds one kind of mark, and checks that the mark is listed as ignored
with a box where it was drawn, and that the digits read are still exactly the drawn ones.
"""

from __future__ import annotations

import numpy as np
from fastapi.testclient import TestClient
from PIL import Image

from app.reading.components import Box
from app.reading.lattice import find_candidates
from app.reading.marks import Mark, is_hairline, remove_marks, strip_margins
from app.reading.reader import choose_reading
from tests.app.conftest import encode
from tests.app.reading.test_segmentation import as_photo, draw_string, one, seven, zero


def digits() -> tuple[np.ndarray, list[tuple[int, int, int, int]]]:
    """Ink of 7 0 1 (float 0..1, 120×250) and the drawn boxes."""
    return draw_string([seven, zero, one])


def read(img: Image.Image) -> tuple[list[Box], tuple[Mark, ...]]:
    """The boxes read from geometry alone, and what was ignored."""
    lattice = find_candidates(img, max_digits=12)
    chosen = choose_reading(lattice, None).candidates
    return [lattice.candidates[i].box for i in chosen], lattice.ignored


def assert_digits_kept(found: list[Box], drawn: list[tuple[int, int, int, int]]) -> None:
    """The three drawn digits, in order, each found box overlapping its drawn box mostly."""
    assert len(found) == len(drawn), (found, drawn)
    for got, (x, y, w, h) in zip(found, drawn, strict=True):
        overlap_x = min(got.x + got.width, x + w) - max(got.x, x)
        overlap_y = min(got.y + got.height, y + h) - max(got.y, y)
        assert overlap_x >= 0.7 * w, (got, (x, y, w, h))
        assert overlap_y >= 0.7 * h, (got, (x, y, w, h))


def kinds(marks: tuple[Mark, ...], kind: str) -> list[Box]:
    return [m.box for m in marks if m.kind == kind]


def test_a_ruled_line_through_the_digits_is_dropped_and_listed() -> None:
    ink, boxes = digits()
    row = boxes[0][1] + boxes[0][3] // 2
    ink[row : row + 2, :] = 1.0
    found, ignored = read(as_photo(ink))
    assert_digits_kept(found, boxes)
    lines = kinds(ignored, "ruled_line")
    assert lines, ignored
    assert any(b.width >= 0.9 * ink.shape[1] and abs(b.y - row) <= 3 for b in lines)


def test_an_underline_touching_the_digits_is_a_ruled_line_not_a_margin() -> None:
    # An underline across the page that the digits rest on, and a dot: the line touches the
    # left and right edges but lies along neither, and the 1s must not become "lines" because
    # the dot is the only component apart from them and the line.
    ink, boxes = draw_string([seven, one, zero, one])
    bottom = max(y + h for _, y, _, h in boxes)
    ink[bottom - 1 : bottom + 2, :] = 1.0
    dot_x = boxes[1][0] + boxes[1][2] + 10
    ink[bottom - 12 : bottom - 4, dot_x : dot_x + 8] = 1.0
    found, ignored = read(as_photo(ink))
    assert_digits_kept(found, boxes)
    assert not kinds(ignored, "margin"), ignored
    lines = kinds(ignored, "ruled_line")
    assert len(lines) == 1, ignored
    assert lines[0].width >= 0.9 * ink.shape[1]


def test_a_vertical_ruled_line_beside_the_digits_is_not_read() -> None:
    # A register's cell: the rule runs the whole height, several digit heights.
    ink, boxes = draw_string([seven, zero, one], margin=100)
    ink[:, 10:12] = 1.0
    found, ignored = read(as_photo(ink))
    assert_digits_kept(found, boxes)
    assert any(b.height >= 0.9 * ink.shape[0] for b in kinds(ignored, "ruled_line"))


def test_a_black_scan_margin_is_painted_over_and_listed() -> None:
    ink, boxes = digits()
    photo = np.asarray(as_photo(ink), np.float32)
    margin = 60
    photo = np.concatenate([np.full((photo.shape[0], margin), 12.0, np.float32), photo], axis=1)
    found, ignored = read(Image.fromarray(photo.astype(np.uint8)))
    shifted = [(x + margin, y, w, h) for x, y, w, h in boxes]
    assert_digits_kept(found, shifted)
    margins = kinds(ignored, "margin")
    assert margins
    assert margins[0].x == 0
    assert margins[0].width >= margin
    assert margins[0].width < shifted[0][0]


def test_strip_margins_leaves_a_plain_page_alone() -> None:
    ink, _ = digits()
    gray = np.asarray(as_photo(ink), np.float32)
    out, marks = strip_margins(gray)
    assert marks == ()
    assert np.array_equal(out, gray)


def test_specks_are_dropped_and_listed() -> None:
    ink, boxes = digits()
    rng = np.random.default_rng(3)
    for _ in range(12):
        y, x = int(rng.integers(2, 24)), int(rng.integers(2, ink.shape[1] - 4))
        ink[y : y + 2, x : x + 2] = 1.0
    found, ignored = read(as_photo(ink))
    assert_digits_kept(found, boxes)
    assert len(kinds(ignored, "speck") + kinds(ignored, "stray")) >= 6


def test_a_trailing_dot_and_dash_are_punctuation() -> None:
    ink, boxes = draw_string([seven, zero, one], margin=30)
    height, _width = ink.shape
    pad = np.zeros((height, 120), np.float32)
    ink = np.concatenate([ink, pad], axis=1)
    x_end = boxes[-1][0] + boxes[-1][2]
    bottom = boxes[0][1] + boxes[0][3]
    middle = boxes[0][1] + boxes[0][3] // 2
    ink[bottom - 8 : bottom, x_end + 15 : x_end + 23] = 1.0  # a full stop on the baseline
    ink[middle - 3 : middle + 3, x_end + 40 : x_end + 75] = 1.0  # a dash
    found, ignored = read(as_photo(ink))
    assert_digits_kept(found, boxes)
    punctuation = kinds(ignored, "punctuation")
    assert len(punctuation) == 2
    assert all(b.x >= x_end for b in punctuation)


def test_a_printed_texture_is_not_read() -> None:
    ink, boxes = digits()
    yy, xx = np.mgrid[0 : ink.shape[0], 0 : ink.shape[1]]
    # Fine diagonal hatching, printed much lighter than the pen.
    texture = (((xx + yy) % 6) == 0).astype(np.float32) * 0.15
    found, _ = read(as_photo(np.maximum(ink, texture)))
    assert_digits_kept(found, boxes)


def test_a_lone_one_is_a_digit_not_a_line() -> None:
    ink, boxes = draw_string([one])
    found, ignored = read(as_photo(ink))
    assert_digits_kept(found, boxes)
    assert not kinds(ignored, "ruled_line")
    assert not kinds(ignored, "margin")


def test_a_digit_filling_a_short_image_is_not_a_margin() -> None:
    ink, _boxes = draw_string([seven, zero, one], margin=0)
    cleaned, ignored = remove_marks(ink, 0.2)
    assert not kinds(ignored, "margin")
    assert not kinds(ignored, "ruled_line")
    assert (cleaned > 0.2).sum() == (ink > 0.2).sum()


def test_hairlines_are_thinner_than_handwriting() -> None:
    line = np.zeros((150, 20), np.float32)
    line[:, 9:11] = 1.0
    assert is_hairline(line)
    ink, _ = draw_string([one], stroke=6)
    assert not is_hairline(ink)
    assert not is_hairline(np.zeros((10, 10), np.float32))


def test_recognize_lists_what_it_ignored(client: TestClient) -> None:
    ink, boxes = digits()
    row = boxes[0][1] + boxes[0][3] // 2
    ink[row : row + 2, :] = 1.0
    data = encode(as_photo(ink))
    body = client.post("/recognize", files={"file": ("x.png", data, "image/png")}).json()
    assert len(body["digits"]) == 3
    lines = [m for m in body["ignored"] if m["kind"] == "ruled_line"]
    assert lines
    box = lines[0]["box"]
    assert box["x"] + box["width"] <= ink.shape[1]
    assert box["width"] >= 0.9 * ink.shape[1]


def test_a_page_of_noise_is_not_examined_piece_by_piece() -> None:
    rng = np.random.default_rng(5)
    noise = np.zeros((400, 400), np.float32)
    noise[rng.integers(0, 200, 4000) * 2, rng.integers(0, 200, 4000) * 2] = 1.0
    cleaned, ignored = remove_marks(noise, 0.2)
    assert ignored == ()
    assert cleaned is noise or np.array_equal(cleaned, noise)
