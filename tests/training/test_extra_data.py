"""Labelled real-digit sets (``--extra-data``): layouts, the service's normalization, the
held-out rule, the content hash, and errors a person can act on."""

from __future__ import annotations

import io
import json
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import harness.realdigits
from app.reading.normalize import prepare_digit
from harness.realdigits import set_dir
from tests.training.synthetic import blob_digits, scan_png, write_digit_set
from training.extra_data import (
    MAX_PIXELS,
    held_out_part,
    is_held_out,
    load_extra_set,
    load_extra_sets,
    parse_extra_spec,
)


def test_the_held_out_rule_is_the_sets_own_and_the_harness_uses_it() -> None:
    names = [f"usps_train_{i:04d}.png" for i in range(500)]
    held = [n for n in names if is_held_out(n)]
    assert held == [n for n in names if zlib.crc32(n.encode()) % 5 == 0]
    assert 70 < len(held) < 130
    assert harness.realdigits.is_held_out is is_held_out


@pytest.mark.parametrize(
    ("text", "folder", "weight"),
    [
        ("reviewed/digits", "reviewed/digits", 1.0),
        ("reviewed/digits:2.5", "reviewed/digits", 2.5),
        ("reviewed/digits:0", "reviewed/digits", 0.0),
        ("c:/data/set", "c:/data/set", 1.0),  # a colon of the path, not a weight
    ],
)
def test_a_spec_names_a_folder_and_a_weight(text: str, folder: str, weight: float) -> None:
    assert parse_extra_spec(text) == (Path(folder), weight)


@pytest.mark.parametrize("text", ["set:-1", "set:nan", "set:inf", ":2", ""])
def test_a_bad_spec_says_what_is_expected(text: str) -> None:
    with pytest.raises(ValueError, match="--extra-data"):
        parse_extra_spec(text)


def test_digits_are_normalized_as_predict_normalizes_them(tmp_path: Path) -> None:
    images, labels = blob_digits(30, seed=11)
    names = write_digit_set(tmp_path / "set", images, labels)
    extra = load_extra_set(tmp_path / "set", 2.0)
    assert extra.names == tuple(names)
    np.testing.assert_array_equal(extra.labels, labels)
    for name, pixels in zip(names, extra.images, strict=True):
        data = (tmp_path / "set" / name).read_bytes()
        expected, normalized = prepare_digit(data, normalize="auto", max_pixels=MAX_PIXELS)
        assert normalized, "a 56×56 scan is normalized, never passed through"
        np.testing.assert_array_equal(pixels, expected)
    assert list(extra.held_out) == [is_held_out(n) for n in names]
    assert 0 < extra.held_out.sum() < len(names)
    assert len(extra.fit_labels) + len(extra.held_labels) == len(names)
    described = extra.describe()
    assert described["weight"] == 2.0
    assert described["items"] == 30
    assert described["held_out_items"] == int(extra.held_out.sum())
    assert len(described["sha256"]) == 64


def test_weight_zero_measures_without_fitting(tmp_path: Path) -> None:
    images, labels = blob_digits(12, seed=3)
    write_digit_set(tmp_path / "set", images, labels)
    [extra] = load_extra_sets([f"{tmp_path / 'set'}:0"])
    assert len(extra.fit_labels) == len(extra.fit_images) == 0
    assert len(extra.held_labels) == int(extra.held_out.sum())


def test_the_source_column_keeps_an_images_digits_on_one_side(tmp_path: Path) -> None:
    images, labels = blob_digits(40, seed=4)
    sources = [f"check{i // 4}.png" for i in range(40)]
    names = write_digit_set(tmp_path / "set", images, labels, sources=sources)
    extra = load_extra_set(tmp_path / "set")
    assert list(extra.held_out) == [is_held_out(s) for s in sources]
    assert list(extra.held_out) != [is_held_out(n) for n in names]


def _string_image(images: np.ndarray) -> tuple[bytes, list[list[int]]]:
    """Digits side by side on one sheet of paper (dark ink), and their boxes."""
    sheet = Image.new("L", (40 + 60 * len(images), 80), 255)
    boxes = []
    for i, image in enumerate(images):
        digit = Image.fromarray(255 - image).resize((56, 56), Image.Resampling.BILINEAR)
        sheet.paste(digit, (20 + 60 * i, 12))
        boxes.append([20 + 60 * i, 12, 56, 56])
    buffer = io.BytesIO()
    sheet.save(buffer, format="PNG")
    return buffer.getvalue(), boxes


@pytest.mark.parametrize("layout", ["plain", "labelled"])
def test_strings_are_cut_by_their_boxes(tmp_path: Path, layout: str) -> None:
    images, _ = blob_digits(9, seed=5)
    folder = tmp_path / "strings"
    folder.mkdir()
    boxes_json: dict[str, object] = {}
    rows = ["filename,label"]
    for index, label in enumerate(["123", "45", "6789"]):
        start = sum(len(x) for x in ["123", "45", "6789"][:index])
        data, boxes = _string_image(images[start : start + len(label)])
        name = f"s{index}.png"
        (folder / name).write_bytes(data)
        rows.append(f"{name},{label}")
        boxes_json[name] = (
            boxes
            if layout == "plain"
            else [{"digit": d, "box": b} for d, b in zip(label, boxes, strict=True)]
        )
    # A string without boxes, a box count that does not match, a label that is not digits.
    (folder / "nobox.png").write_bytes(_string_image(images[:2])[0])
    (folder / "short.png").write_bytes(_string_image(images[:2])[0])
    (folder / "text.png").write_bytes(scan_png(images[0]))
    boxes_json["short.png"] = [[0, 0, 10, 10]]
    rows += ["nobox.png,12", "short.png,12", "text.png,7a"]
    (folder / "labels.csv").write_text("\n".join(rows) + "\n")
    (folder / "boxes.json").write_text(json.dumps(boxes_json))

    extra = load_extra_set(folder)
    assert "".join(map(str, extra.labels)) == "123456789"
    assert extra.names[:3] == ("s0.png#0", "s0.png#1", "s0.png#2")
    assert list(extra.held_out) == [is_held_out(n.split("#")[0]) for n in extra.names]
    assert extra.skipped == {"label not digits": 1, "string without a box per digit": 2}
    # Each cut digit is the box's region as a PNG, normalized as /predict would.
    sheet = Image.open(folder / "s1.png")
    for position, name in enumerate(["s1.png#0", "s1.png#1"]):
        x, y, w, h = _string_image(images[3:5])[1][position]
        cut = io.BytesIO()
        sheet.crop((x, y, x + w, y + h)).save(cut, format="PNG")
        expected, _ = prepare_digit(cut.getvalue(), normalize="auto", max_pixels=MAX_PIXELS)
        np.testing.assert_array_equal(extra.images[extra.names.index(name)], expected)


def test_the_content_hash_follows_labels_and_pixels(tmp_path: Path) -> None:
    images, labels = blob_digits(6, seed=6)
    write_digit_set(tmp_path / "set", images, labels)
    first = load_extra_set(tmp_path / "set").sha256
    assert load_extra_set(tmp_path / "set").sha256 == first
    text = (tmp_path / "set" / "labels.csv").read_text()
    relabelled = text.replace(f"d0000.png,{labels[0]}", f"d0000.png,{(labels[0] + 1) % 10}")
    (tmp_path / "set" / "labels.csv").write_text(relabelled)
    assert load_extra_set(tmp_path / "set").sha256 != first


def test_an_export_root_reads_its_digits_folder(tmp_path: Path) -> None:
    images, labels = blob_digits(5, seed=7)
    write_digit_set(tmp_path / "export" / "digits", images, labels)
    extra = load_extra_set(tmp_path / "export")
    assert extra.path == tmp_path / "export" / "digits"
    assert extra.name == "export/digits"
    assert len(extra.labels) == 5


def test_problems_with_a_set_are_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"no labels\.csv"):
        load_extra_set(tmp_path)
    (tmp_path / "labels.csv").write_text("name,digit\na.png,1\n")
    with pytest.raises(ValueError, match="filename,label"):
        load_extra_set(tmp_path)
    (tmp_path / "labels.csv").write_text("filename,label\na.png,1\n")
    with pytest.raises(ValueError, match=r"a\.png is listed in labels\.csv but missing"):
        load_extra_set(tmp_path)
    (tmp_path / "labels.csv").write_text("filename,label\n../a.png,1\n")
    with pytest.raises(ValueError, match="not a file name in the folder"):
        load_extra_set(tmp_path)
    (tmp_path / "labels.csv").write_text("filename,label\n")
    (tmp_path / "boxes.json").write_text('{"a.png": [[1, 2, 3]]}')
    with pytest.raises(ValueError, match="not \\[x, y, width, height\\]"):
        load_extra_set(tmp_path)


def test_an_image_without_a_digit_is_counted_not_fatal(tmp_path: Path) -> None:
    blank = io.BytesIO()
    Image.new("L", (30, 30), 255).save(blank, format="PNG")
    (tmp_path / "blank.png").write_bytes(blank.getvalue())
    (tmp_path / "labels.csv").write_text("filename,label\nblank.png,3\n")
    extra = load_extra_set(tmp_path)
    assert len(extra.labels) == 0
    assert extra.skipped == {"no_digit_found": 1}
    images, labels = held_out_part([extra])
    assert images.shape == (0, 28, 28)
    assert labels.shape == (0,)


def test_the_real_checks_keep_each_checks_digits_on_one_side() -> None:
    folder = set_dir("orand-car-a-dev")
    if folder is None:
        pytest.skip(harness.realdigits.MISSING)
    extra = load_extra_set(folder)
    checks = {name.split("#")[0] for name in extra.names}
    assert len(checks) > 400
    assert list(extra.held_out) == [is_held_out(n.split("#")[0]) for n in extra.names]
    assert len(extra.labels) > 2000
