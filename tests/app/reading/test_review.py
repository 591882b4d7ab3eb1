"""The geometric review signals (app/reading/review.py) and their calibration (reader.json)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from app.reading.calibration import load_calibration
from app.reading.components import Box
from app.reading.lattice import Candidate, Lattice
from app.reading.marks import Mark
from app.reading.review import (
    ReviewLimits,
    cut_by_the_edge,
    joined_too_wide,
    line_offsets,
    off_the_line,
    page_has_marks,
    spans_the_image,
)


def lattice(*cands: tuple[int, Box, float], ignored: tuple[Mark, ...] = ()) -> Lattice:
    """A lattice whose candidates are the given (atoms, box, width in digit heights), in a row."""
    built, first = [], 0
    for atoms, box, width in cands:
        ink = np.ones((box.height, box.width), np.float32)
        built.append(Candidate(first, first + atoms, box, ink, width, 1.0, 1.0))
        first += atoms
    return Lattice(tuple(built), first, (), ignored)


def test_a_wide_digit_joined_from_pieces_is_flagged_a_single_piece_is_not() -> None:
    lat = lattice(
        (2, Box(0, 0, 30, 20), 1.5), (1, Box(40, 0, 30, 20), 1.5), (2, Box(80, 0, 16, 20), 0.8)
    )
    assert joined_too_wide(lat, [0, 1, 2], 1.2) == [True, False, False]
    assert joined_too_wide(lat, [0, 1, 2], 1.6) == [False, False, False]


def test_a_digit_off_the_line_of_the_others_is_flagged() -> None:
    lat = lattice(
        (1, Box(0, 10, 12, 20), 0.6),
        (1, Box(20, 12, 12, 20), 0.6),
        (1, Box(40, 35, 12, 20), 0.6),  # a whole digit height lower
        (1, Box(60, 11, 12, 20), 0.6),
    )
    offsets = line_offsets(lat, [0, 1, 2, 3])
    assert offsets[2] > 1.0
    assert max(offsets[:2] + offsets[3:]) < 0.1
    assert off_the_line(lat, [0, 1, 2, 3], 0.5) == [False, False, True, False]
    # A lone digit has no line to be off.
    assert off_the_line(lattice((1, Box(0, 90, 12, 20), 0.6)), [0], 0.01) == [False]


def test_a_digit_running_into_one_edge_of_a_loose_crop_is_flagged() -> None:
    # A register cell, 100×200: a stroke at the top edge and a digit in the middle.
    lat = lattice((1, Box(30, 0, 4, 30), 0.2), (1, Box(40, 80, 14, 20), 0.7))
    assert cut_by_the_edge(lat, [0, 1], (100, 200), 1.5) == [True, False]
    assert cut_by_the_edge(lat, [1], (100, 200), 1.5) == [False]


def test_a_tight_crop_is_not_cut_by_its_edges() -> None:
    # A single scanned digit whose ink touches the frame (US mail digits, 16×16).
    tight = lattice((1, Box(0, 0, 16, 16), 1.0))
    assert cut_by_the_edge(tight, [0], (16, 16), 1.5) == [False]
    # A 1 spans the height of its tight crop, and touches neither side.
    one = lattice((1, Box(6, 0, 4, 16), 0.25))
    assert cut_by_the_edge(one, [0], (16, 16), 1.5) == [False]
    # A digit touching the top edge of a crop barely taller than it.
    snug = lattice((1, Box(3, 0, 10, 14), 0.7))
    assert cut_by_the_edge(snug, [0], (16, 16), 1.5) == [False]


def test_hairlines_across_the_whole_image_are_flagged_a_thick_tight_digit_is_not() -> None:
    # Two rules crossing in a 120×100 image: one piece of ink, as wide and tall as the image.
    cross = np.zeros((100, 120), np.float32)
    cross[60:62, :] = 1.0
    cross[:, 40:42] = 1.0
    box = Box(0, 0, 120, 100)
    lines = Lattice((Candidate(0, 1, box, cross, 1.2, 1.0, 1.0),), 1, (), ())
    assert spans_the_image(lines, [0], (120, 100)) == [True]
    # The same lines in a larger image do not span it.
    assert spans_the_image(lines, [0], (200, 100)) == [False]
    # A thick digit (a ring) filling its tight 16×16 crop.
    yy, xx = np.mgrid[0:16, 0:16]
    ring = ((np.hypot(yy - 7.5, xx - 7.5) < 8) & (np.hypot(yy - 7.5, xx - 7.5) > 4)).astype(
        np.float32
    )
    digit = Lattice((Candidate(0, 1, Box(0, 0, 16, 16), ring, 1.0, 1.0, 1.0),), 1, (), ())
    assert spans_the_image(digit, [0], (16, 16)) == [False]


def test_a_page_with_ruled_lines_or_margins_is_marked_specks_alone_do_not() -> None:
    box = Box(0, 0, 5, 5)
    assert page_has_marks(lattice((1, box, 1.0), ignored=(Mark("ruled_line", box),)))
    assert page_has_marks(lattice((1, box, 1.0), ignored=(Mark("margin", box),)))
    assert not page_has_marks(lattice((1, box, 1.0), ignored=(Mark("speck", box),)))
    assert not page_has_marks(lattice((1, box, 1.0)))


def test_the_bundled_version_carries_its_review_rule(bundled_model_dir: Path) -> None:
    calibration = load_calibration(bundled_model_dir)
    assert not any("review_rule" in note for note in calibration.notes), calibration.notes
    assert 0.5 < calibration.review.max_joined_width < 3.0
    assert 0.0 < calibration.review.max_line_offset < 1.0
    assert calibration.review.marked_threshold is not None
    assert calibration.describe()["review_rule"]["max_line_offset"] == (
        calibration.review.max_line_offset
    )


@pytest.mark.parametrize(
    ("rule", "expected_note"),
    [
        (None, "review_rule not calibrated"),
        ("strict", "review_rule invalid"),
        ({"max_joined_width": -1, "max_line_offset": 0.3, "edge_room": 2, "marked_threshold": 0.99},
         "review_rule.max_joined_width invalid"),
        ({"max_line_offset": 0.3, "edge_room": 2, "marked_threshold": 0.99},
         "review_rule.max_joined_width not calibrated"),
    ],
)  # fmt: skip
def test_a_missing_or_invalid_review_rule_falls_back_to_defaults(
    bundled_model_dir: Path, tmp_path: Path, rule: object, expected_note: str
) -> None:
    shutil.copy(bundled_model_dir / "likeness.npz", tmp_path / "likeness.npz")
    document = json.loads((bundled_model_dir / "reader.json").read_text())
    if rule is None:
        document.pop("review_rule", None)
    else:
        document["review_rule"] = rule
    (tmp_path / "reader.json").write_text(json.dumps(document))
    calibration = load_calibration(tmp_path)
    assert any(n.startswith(expected_note) for n in calibration.notes), calibration.notes
    assert calibration.review.max_joined_width == ReviewLimits().max_joined_width
    if isinstance(rule, dict) and "max_line_offset" in rule:
        assert calibration.review.max_line_offset == 0.3


def test_scan_like_codes_are_seeded_and_carry_every_nuisance() -> None:
    from training.scan_codes import generate_scan_codes

    rng = np.random.default_rng(3)
    # Digit-sized strokes (MNIST polarity): enough to lay codes out without MNIST itself.
    images = np.zeros((20, 28, 28), np.uint8)
    for k in range(20):
        top, left = rng.integers(3, 8, size=2)
        images[k, top : top + 18, left : left + 4] = 255
        images[k, top : top + 4, left : left + 12] = 255
    labels = np.arange(20) % 10
    codes = generate_scan_codes(images, labels, 40, seed=11)
    again = generate_scan_codes(images, labels, 40, seed=11)
    assert [c.png for c in codes] == [c.png for c in again]
    seen = {n for c in codes for n in c.nuisances}
    assert seen == {"thin", "rule", "vertical_rule", "fragment", "punctuation", "margin"}
    for code in codes:
        assert 1 <= len(code.digits) <= 5
        assert len(code.boxes) == len(code.digits)
        for box in code.boxes:
            assert box.x >= 0
            assert box.x + box.width <= code.width
            assert box.y >= 0
            assert box.y + box.height <= code.height
