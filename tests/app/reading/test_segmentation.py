"""Segmentation of digit strings (app/segmentation/), on images drawn here with Pillow.

These tests read with geometry alone (``choose_reading(lattice, None)``): the shapes drawn are
clear enough that the count, order and boxes are right without asking a model. Readings that
need the model (real handwriting) are tested through /recognize in test_recognize.py.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from PIL import Image, ImageDraw

import app.reading.lattice
import app.reading.normalize
import app.reading.reader
from app.core.errors import DOMAIN_STATUS, DomainError
from app.reading.components import Box, connected_components
from app.reading.lattice import build_lattice, find_candidates, normalize_candidates
from app.reading.reader import choose_reading

# Each shape is drawn in a box of (x, y, width, height) with a pen ``stroke`` pixels wide.
Shape = Callable[[ImageDraw.ImageDraw, tuple[int, int, int, int], int], None]
INK = 255


def zero(draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], stroke: int) -> None:
    x, y, w, h = box
    draw.ellipse([x, y, x + w - 1, y + h - 1], outline=INK, width=stroke)


def one(draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], stroke: int) -> None:
    x, y, w, h = box
    draw.line([(x + w // 2, y), (x + w // 2, y + h - 1)], fill=INK, width=stroke)


def seven(draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], stroke: int) -> None:
    x, y, w, h = box
    draw.line([(x, y + stroke // 2), (x + w - 1, y + stroke // 2)], fill=INK, width=stroke)
    draw.line([(x + w - 1, y), (x + w // 3, y + h - 1)], fill=INK, width=stroke)


def five_in_two_strokes(
    draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], stroke: int
) -> None:
    """A 5 whose top bar was written as a separate stroke, lifted off the paper."""
    x, y, w, h = box
    # The bar, then a gap of two strokes, then the body: stem and bowl.
    draw.line([(x + w // 5, y + stroke // 2), (x + w - 1, y + stroke // 2)], fill=INK, width=stroke)
    top = y + 3 * stroke
    draw.line([(x + w // 5, top), (x + w // 5, y + h // 2)], fill=INK, width=stroke)
    draw.arc([x, y + h // 3, x + w - 1, y + h - 1], start=-150, end=150, fill=INK, width=stroke)


def draw_string(
    shapes: list[Shape],
    *,
    height: int = 60,
    width: int = 40,
    gap: int = 30,
    stroke: int = 6,
    margin: int = 30,
    joined: tuple[int, ...] = (),
) -> tuple[np.ndarray, list[tuple[int, int, int, int]]]:
    """White-on-black ink (float32 0..1) of the shapes side by side, and each shape's ink box."""
    size = (2 * margin + len(shapes) * width + (len(shapes) - 1) * gap, height + 2 * margin)
    ink = np.zeros((size[1], size[0]), np.float32)
    boxes = []
    for i, shape in enumerate(shapes):
        # Each shape on its own layer, so its box is exactly its own ink's.
        layer = Image.new("L", size, 0)
        shape(ImageDraw.Draw(layer), (margin + i * (width + gap), margin, width, height), stroke)
        pixels = np.asarray(layer, np.float32) / 255.0
        rows = np.flatnonzero(pixels.any(axis=1))
        cols = np.flatnonzero(pixels.any(axis=0))
        boxes.append(
            (int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1))
        )
        ink = np.maximum(ink, pixels)
    # A pen that did not lift between two digits leaves a thin connecting stroke (ligature).
    layer = Image.new("L", size, 0)
    draw = ImageDraw.Draw(layer)
    for i in joined:
        (x0, y0, w0, h0), (x1, y1, _, h1) = boxes[i], boxes[i + 1]
        start = (x0 + w0 - 1 - stroke, y0 + h0 * 3 // 4)
        end = (x1 + stroke, y1 + h1 * 3 // 4)
        draw.line([start, end], fill=INK, width=max(2, stroke // 2))
    return np.maximum(ink, np.asarray(layer, np.float32) / 255.0), boxes


def read_geometry(ink: np.ndarray, max_digits: int = 12) -> list[Box]:
    """Boxes of the digits read from an ink map with geometry alone, left to right."""
    lattice = build_lattice(ink, max_digits=max_digits)
    return [lattice.candidates[i].box for i in choose_reading(lattice, None).candidates]


def as_photo(ink: np.ndarray, *, dark_on_light: bool = True, rgb: bool = False) -> Image.Image:
    """The ink as an uploaded picture: dark pen on light paper (or the reverse), grey or colour."""
    if rgb:
        paper = np.array([240.0, 230.0, 200.0]) if dark_on_light else np.array([20.0, 40.0, 30.0])
        pen = np.array([30.0, 40.0, 140.0]) if dark_on_light else np.array([250.0, 240.0, 160.0])
        pixels = paper + ink[..., None] * (pen - paper)
        return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    paper, pen = (235.0, 25.0) if dark_on_light else (15.0, 230.0)
    return Image.fromarray(np.clip(paper + ink * (pen - paper), 0, 255).astype(np.uint8), "L")


def assert_boxes_match(
    found: list[Box], drawn: list[tuple[int, int, int, int]], slack: int = 3
) -> None:
    """Same count, same order, and each found box within ``slack`` pixels of the drawn one.

    Where digits are joined by a ligature, half of it may go to each side of the cut: pass a
    slack of about half the gap.
    """
    assert len(found) == len(drawn), f"found {len(found)} digits, drew {len(drawn)}"
    for got, (x, y, w, h) in zip(found, drawn, strict=True):
        where = (got, (x, y, w, h))
        assert abs(got.x - x) <= slack, where
        assert abs(got.x + got.width - (x + w)) <= slack, where
        assert abs(got.y - y) <= 3, where
        assert abs(got.y + got.height - (y + h)) <= 3, where


# --- connected components ------------------------------------------------------------------


def test_connected_components_match_a_reference_labelling() -> None:
    ndimage = pytest.importorskip("scipy.ndimage", reason="scipy is the reference labelling")
    rng = np.random.default_rng(0)
    for density in (0.1, 0.3, 0.5):
        binary = rng.random((97, 131)) < density
        labels, count = connected_components(binary)
        reference, ref_count = ndimage.label(binary, structure=np.ones((3, 3), int))
        assert count == ref_count
        # Same partition: every reference component maps to exactly one of ours and back.
        pairs = set(zip(labels[binary].tolist(), reference[binary].tolist(), strict=True))
        assert len(pairs) == count
        assert (labels[~binary] == 0).all()
        assert (labels[binary] > 0).all()


def test_connected_components_join_diagonal_neighbours_and_count_in_raster_order() -> None:
    binary = np.zeros((6, 8), bool)
    binary[0, 5] = True  # first in raster order
    binary[1, 1] = binary[2, 2] = binary[3, 3] = True  # a diagonal line: one component
    binary[5, 0:3] = True
    labels, count = connected_components(binary)
    assert count == 3
    assert labels[0, 5] == 1
    assert labels[1, 1] == labels[2, 2] == labels[3, 3] == 2
    assert (labels[5, 0:3] == 3).all()


def test_connected_components_of_an_empty_image() -> None:
    labels, count = connected_components(np.zeros((5, 5), bool))
    assert count == 0
    assert not labels.any()


# --- reading digit strings ------------------------------------------------------------------


def test_separate_digits_are_found_in_left_to_right_order() -> None:
    ink, drawn = draw_string([seven, zero, one, zero, seven])
    assert_boxes_match(read_geometry(ink), drawn)


def test_a_digit_written_in_two_strokes_is_one_digit() -> None:
    ink, drawn = draw_string([one, five_in_two_strokes, zero])
    # The 5 really is two components on the page.
    _, count = connected_components(ink > 0.5)
    assert count == 4
    assert_boxes_match(read_geometry(ink), drawn)


def test_two_touching_digits_are_split() -> None:
    ink, drawn = draw_string([one, zero, zero, one], gap=12, joined=(1,))
    _, count = connected_components(ink > 0.5)
    assert count == 3
    assert_boxes_match(read_geometry(ink), drawn, slack=12)


def test_three_touching_digits_are_split() -> None:
    ink, drawn = draw_string([zero, zero, zero], gap=12, joined=(0, 1))
    _, count = connected_components(ink > 0.5)
    assert count == 1
    assert_boxes_match(read_geometry(ink), drawn, slack=12)


def test_each_candidate_holds_only_its_own_ink() -> None:
    # The 7's bar reaches into the top-left corner of the 0's box without touching the 0.
    ink, (_, zero_drawn) = draw_string([seven, zero], gap=-4)
    # The 7 alone, at the same place (first shape), on a canvas as wide as the pair's.
    seven_alone, _ = draw_string([seven])
    seven_only = np.zeros_like(ink)
    seven_only[:, : seven_alone.shape[1]] = seven_alone
    x0, y0, w0, h0 = zero_drawn
    assert seven_only[y0 : y0 + h0, x0 : x0 + w0].any(), "the test needs the boxes to overlap"
    _, count = connected_components(ink > 0.5)
    assert count == 2
    lattice = build_lattice(ink, max_digits=12)
    chosen = [lattice.candidates[i] for i in choose_reading(lattice, None).candidates]
    assert len(chosen) == 2
    zero_found = chosen[1]
    assert abs(zero_found.box.x - x0) <= 3
    # The crop starts one pixel before the box (anti-aliased rim): map it back to the image.
    top, left = zero_found.box.y - 1, zero_found.box.x - 1
    height, width = zero_found.ink.shape
    seven_there = seven_only[top : top + height, left : left + width] > 0
    assert seven_there.any()
    assert not zero_found.ink[seven_there].any(), "ink of the 7 leaked into the 0's crop"


@pytest.mark.parametrize(
    ("dark_on_light", "rgb"),
    [(True, False), (False, False), (True, True), (False, True)],
    ids=["dark-on-light", "light-on-dark", "colour-dark-on-light", "colour-light-on-dark"],
)
def test_polarity_and_colour_do_not_change_the_reading(dark_on_light: bool, rgb: bool) -> None:
    ink, drawn = draw_string([seven, zero, one, five_in_two_strokes, zero])
    lattice = find_candidates(as_photo(ink, dark_on_light=dark_on_light, rgb=rgb), max_digits=12)
    found = [lattice.candidates[i].box for i in choose_reading(lattice, None).candidates]
    assert_boxes_match(found, drawn)


def test_noise_specks_are_ignored() -> None:
    ink, drawn = draw_string([one, zero, seven, zero, one])
    rng = np.random.default_rng(3)
    speckled = ink.copy()
    for _ in range(25):
        y, x = int(rng.integers(0, ink.shape[0] - 3)), int(rng.integers(0, ink.shape[1] - 3))
        speckled[y : y + 3, x : x + 3] = 1.0
    noisy = np.clip(speckled + rng.normal(0.0, 0.04, ink.shape), 0.0, 1.0)
    lattice = find_candidates(as_photo(noisy.astype(np.float32)), max_digits=12)
    found = [lattice.candidates[i].box for i in choose_reading(lattice, None).candidates]
    assert_boxes_match(found, drawn)


def test_boxes_are_in_original_pixels_for_a_large_photo() -> None:
    # Beyond MAX_WORK_PIXELS the image is reduced for segmentation; boxes must come back scaled.
    ink, drawn = draw_string([one, zero, seven], height=1000, width=600, gap=400, stroke=90)
    assert ink.size > app.reading.lattice.MAX_WORK_PIXELS
    lattice = find_candidates(as_photo(ink), max_digits=12)
    found = [lattice.candidates[i].box for i in choose_reading(lattice, None).candidates]
    assert len(found) == 3
    for got, (x, y, w, h) in zip(found, drawn, strict=True):
        assert abs(got.x - x) <= 40
        assert abs(got.y - y) <= 40
        assert abs(got.width - w) <= 70
        assert abs(got.height - h) <= 70


def test_candidates_are_normalized_by_the_single_digit_code(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[tuple[int, ...]] = []
    original = app.reading.normalize.center_digit

    def spy(ink: np.ndarray) -> np.ndarray:
        calls.append(ink.shape)
        return original(ink)

    # The lattice stage must call imaging's function, not a copy of it.
    assert app.reading.lattice.center_digit is app.reading.normalize.center_digit
    monkeypatch.setattr(app.reading.lattice, "center_digit", spy)
    ink, _ = draw_string([one, zero])
    lattice = build_lattice(ink, max_digits=12)
    batch = normalize_candidates(lattice)
    assert batch.shape == (len(lattice.candidates), 28, 28)
    assert batch.dtype == np.uint8
    assert len(calls) == len(lattice.candidates)
    for image, candidate in zip(batch, lattice.candidates, strict=True):
        assert np.array_equal(image, original(candidate.ink))


def all_readings(lattice: app.reading.lattice.Lattice) -> list[list[int]]:
    """Every partition of the atoms into candidates (brute force, for small lattices)."""

    def from_atom(start: int) -> list[list[int]]:
        if start == lattice.atom_count:
            return [[]]
        return [
            [index, *rest]
            for index, cand in enumerate(lattice.candidates)
            if cand.first == start
            for rest in from_atom(cand.last)
        ]

    return from_atom(0)


def test_the_reading_is_the_best_partition_and_knows_its_margins() -> None:
    ink, _ = draw_string([zero, zero, one], gap=12, joined=(0,))
    lattice = build_lattice(ink, max_digits=12)
    rng = np.random.default_rng(0)
    probabilities = rng.dirichlet(np.full(10, 0.3), size=len(lattice.candidates))
    weights = np.array([app.reading.reader.READING_WEIGHTS[f] for f in app.reading.reader.FEATURES])
    scores = app.reading.reader.reading_features(lattice, probabilities) @ weights
    readings = all_readings(lattice)
    assert len(readings) > 3, "the lattice should offer several ways to cut the joined zeros"
    total = {tuple(r): float(scores[r].sum()) for r in readings}
    best = max(total, key=lambda r: total[r])
    by_count: dict[int, float] = {}
    for r, value in total.items():
        by_count[len(r)] = max(by_count.get(len(r), -np.inf), value)
    reading = choose_reading(lattice, probabilities)
    assert reading.candidates == best
    runner_up = max((k for k in by_count if k != len(best)), key=lambda k: by_count[k])
    assert reading.runner_up == runner_up
    assert reading.count_margin == pytest.approx(by_count[len(best)] - by_count[runner_up])
    assert reading.count_is_uncertain == (reading.count_margin < app.reading.reader.COUNT_MARGIN)
    second = max(value for r, value in total.items() if r != best)
    assert reading.margin == pytest.approx(total[best] - second)
    assert reading.margin <= reading.count_margin
    assert reading.cut_is_uncertain == (reading.margin < app.reading.reader.READING_MARGIN)


def test_the_margins_a_version_requires_decide_what_is_uncertain() -> None:
    ink, _ = draw_string([zero, zero, one], gap=12, joined=(0,))
    lattice = build_lattice(ink, max_digits=12)
    rng = np.random.default_rng(0)
    probabilities = rng.dirichlet(np.full(10, 0.3), size=len(lattice.candidates))
    found = choose_reading(lattice, probabilities)
    assert np.isfinite(found.count_margin)
    assert found.margin > 0
    # Just above and just below the reading's own margins: the same reading, judged either way.
    strict = choose_reading(
        lattice,
        probabilities,
        count_margin=found.count_margin + 0.01,
        reading_margin=found.margin + 0.01,
    )
    lenient = choose_reading(
        lattice,
        probabilities,
        count_margin=found.count_margin - 0.01,
        reading_margin=found.margin - 0.01,
    )
    assert strict.candidates == lenient.candidates == found.candidates
    assert strict.count_is_uncertain
    assert strict.cut_is_uncertain
    assert not lenient.count_is_uncertain
    assert not lenient.cut_is_uncertain


def test_a_reading_with_only_one_possible_cut_has_an_infinite_margin() -> None:
    ink, _ = draw_string([one], gap=12)
    lattice = build_lattice(ink, max_digits=12)
    assert len(lattice.candidates) == 1
    reading = choose_reading(lattice, np.full((1, 10), 0.1))
    assert reading.candidates == (0,)
    assert reading.margin == float("inf")
    assert not reading.cut_is_uncertain


# --- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize("level", [0, 128, 255], ids=["black", "grey", "white"])
def test_a_blank_image_has_no_digits(level: int) -> None:
    img = Image.new("L", (300, 100), level)
    with pytest.raises(DomainError) as caught:
        find_candidates(img, max_digits=12)
    assert DOMAIN_STATUS[caught.value.code] == 422
    assert caught.value.code == "no_digits_found"
    assert "No digits found" in caught.value.message


def test_more_digits_than_allowed_is_refused() -> None:
    ink, _ = draw_string([one, zero, seven] * 5)
    lattice = build_lattice(ink, max_digits=12)
    assert len(choose_reading(lattice, None).candidates) == 15
    with pytest.raises(DomainError) as caught:
        choose_reading(lattice, None, max_digits=12)
    assert DOMAIN_STATUS[caught.value.code] == 422
    assert caught.value.code == "too_many_digits"
    assert caught.value.details == {"found": 15, "max_digits": 12}


def test_a_page_of_separate_marks_is_refused_before_reading() -> None:
    # Far more separate marks than max_digits could ever group into: refused at once.
    ink, _ = draw_string([one] * 40, width=10, gap=20)
    with pytest.raises(DomainError) as caught:
        build_lattice(ink, max_digits=5)
    assert caught.value.code == "too_many_digits"
