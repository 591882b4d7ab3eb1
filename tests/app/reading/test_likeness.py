"""Digit-likeness (app/reading/likeness.py) and a version's reader calibration (calibration.py).

The bundled version's calibration (models/mnist/<n>/reader.json + likeness.npz) was fitted on
MNIST training digits; here it must pass MNIST *test* digits as digit-like and reject lines,
blobs and noise, whatever digit they are compared with.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.reading.calibration import (
    MAX_READER_BYTES,
    ReaderCalibration,
    calibration_for,
    load_calibration,
)
from app.reading.likeness import (
    MAX_COMPONENTS,
    LikenessBasis,
    load_basis,
    mass_outside,
    not_like_digit,
    not_like_digits,
    unlikeness,
)
from app.reading.reader import READING_WEIGHTS


@pytest.fixture(scope="module")
def bundled(bundled_model_dir: Path) -> ReaderCalibration:
    calibration = load_calibration(bundled_model_dir)
    if calibration.source != "reader.json":
        pytest.fail(f"the bundled version has no valid reader.json: {calibration.notes}")
    return calibration


def not_digits() -> np.ndarray:
    """28×28 images (MNIST polarity) that are not digits: bars, blobs, noise, a checkerboard."""
    shapes = []
    # A thin horizontal rule (a thick short dash is near the 4s' crossbar: that is for the
    # reader's geometry and app.reading.marks to handle, not for likeness alone).
    bar = np.zeros((28, 28), np.uint8)
    bar[13:15, 4:24] = 255
    shapes.append(bar)
    square = np.zeros((28, 28), np.uint8)
    square[4:24, 4:24] = 255
    shapes.append(square)
    yy, xx = np.mgrid[0:28, 0:28]
    disc = (((yy - 14) ** 2 + (xx - 14) ** 2) <= 100).astype(np.uint8) * 255
    shapes.append(disc)
    shapes.append(np.random.default_rng(0).integers(0, 256, (28, 28)).astype(np.uint8))
    checker = (((yy // 4) + (xx // 4)) % 2 * 255).astype(np.uint8)
    shapes.append(checker)
    return np.stack(shapes)


def test_the_bundled_calibration_is_complete(bundled: ReaderCalibration) -> None:
    assert bundled.notes == ()
    assert bundled.likeness is not None
    assert bundled.likeness_threshold is not None
    assert 0.0 < bundled.likeness_threshold < 1.0
    assert set(bundled.reading_weights) == set(READING_WEIGHTS)
    # Orthonormal principal directions, as fitted (stored as float16).
    comps = bundled.likeness.components[3]
    assert np.allclose(comps @ comps.T, np.eye(bundled.likeness.rank), atol=0.02)


def test_mnist_test_digits_are_digit_like(
    bundled: ReaderCalibration, mnist_test: tuple[np.ndarray, np.ndarray]
) -> None:
    images, labels = mnist_test
    assert bundled.likeness is not None
    assert bundled.likeness_threshold is not None
    scores = unlikeness(bundled.likeness, images[:2000], labels[:2000])
    # The threshold lets 99% of held-out training digits pass; test digits are alike.
    assert (scores <= bundled.likeness_threshold).mean() >= 0.97
    # The ink range keeps the central 99% of each class.
    assert mass_outside(bundled.likeness, images[:2000], labels[:2000]).mean() <= 0.03


def test_lines_blobs_and_noise_are_not_like_any_digit(bundled: ReaderCalibration) -> None:
    assert bundled.likeness is not None
    assert bundled.likeness_threshold is not None
    shapes = not_digits()
    for digit in range(10):
        classes = np.full(len(shapes), digit)
        scores = unlikeness(bundled.likeness, shapes, classes)
        unlike = (scores > bundled.likeness_threshold) | mass_outside(
            bundled.likeness, shapes, classes
        )
        assert unlike.all(), (digit, scores)


def test_an_empty_image_is_not_digit_like(bundled: ReaderCalibration) -> None:
    assert bundled.likeness is not None
    scores = unlikeness(bundled.likeness, np.zeros((1, 28, 28), np.uint8), np.array([0]))
    assert scores[0] == 1.0


def copy_version(source: Path, target: Path) -> Path:
    shutil.copy(source / "reader.json", target / "reader.json")
    shutil.copy(source / "likeness.npz", target / "likeness.npz")
    return target


def test_a_version_without_calibration_gets_defaults_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="app.reading.calibration"):
        calibration = load_calibration(tmp_path)
    assert calibration.source == "defaults"
    assert calibration.likeness is None
    assert dict(calibration.reading_weights) == READING_WEIGHTS
    assert calibration.notes
    assert "reader.json" in caplog.text
    assert calibration.describe()["notes"] == list(calibration.notes)


@pytest.mark.parametrize(
    ("change", "note"),
    [
        ({"review_threshold": 1.5}, "review_threshold invalid"),
        ({"reading_weights": {"digit": 1.0}}, "reading_weights invalid"),
        ({"count_margin": "wide"}, "count_margin invalid"),
        ({"likeness": {"basis": "../x.npz", "threshold": 0.5}}, "likeness check off"),
        ({"likeness": {"basis": "likeness.npz", "threshold": float("nan")}}, "likeness check off"),
    ],
)
def test_an_invalid_field_falls_back_to_its_default(
    bundled_model_dir: Path, tmp_path: Path, change: dict[str, object], note: str
) -> None:
    copy_version(bundled_model_dir, tmp_path)
    document = json.loads((tmp_path / "reader.json").read_text())
    document.update(change)
    (tmp_path / "reader.json").write_text(json.dumps(document))
    calibration = load_calibration(tmp_path)
    assert calibration.source == "reader.json"
    assert any(n.startswith(note) for n in calibration.notes), calibration.notes


def test_a_damaged_basis_turns_the_likeness_check_off(
    bundled_model_dir: Path, tmp_path: Path
) -> None:
    copy_version(bundled_model_dir, tmp_path)
    with (tmp_path / "likeness.npz").open("wb") as handle:
        np.savez(handle, means=np.zeros((10, 784)), components=np.zeros((10, 3, 700)))
    calibration = load_calibration(tmp_path)
    assert calibration.likeness is None
    assert any("likeness check off" in n for n in calibration.notes)
    with pytest.raises(ValueError, match="components"):
        load_basis(tmp_path / "likeness.npz")


def test_a_basis_rejects_non_finite_values() -> None:
    means = np.zeros((10, 784), np.float32)
    comps = np.zeros((10, 2, 784), np.float32)
    comps[0, 0, 0] = np.inf
    with pytest.raises(ValueError, match="non-finite"):
        LikenessBasis(means, comps)


def test_calibration_for_prefers_what_the_model_carries(tmp_path: Path) -> None:
    class Model:
        path = tmp_path
        calibration = ReaderCalibration(review_threshold=0.5, source="attached")

    assert calibration_for(Model()).source == "attached"

    class Plain:
        path = tmp_path

    assert calibration_for(Plain()).source == "defaults"


def test_model_shows_the_calibration_in_use(bundled_client: TestClient, client: TestClient) -> None:
    bundled = bundled_client.get("/model").json()["reader_calibration"]
    assert bundled["source"] == "reader.json"
    assert bundled["notes"] == []
    assert bundled["likeness_rank"] >= 1
    # The tiny fixture model has no reader.json: served with defaults, and /model says so.
    plain = client.get("/model").json()["reader_calibration"]
    assert plain["source"] == "defaults"
    assert plain["likeness_threshold"] is None
    assert any("reader.json" in note for note in plain["notes"])


def test_a_basis_too_large_to_hold_is_refused_before_it_is_read(
    bundled_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Zeros compress to almost nothing: the archive is small, what it unpacks to is not.
    copy_version(bundled_model_dir, tmp_path)
    with (tmp_path / "likeness.npz").open("wb") as handle:
        np.savez_compressed(
            handle, means=np.zeros((10, 784)), components=np.zeros((10, MAX_COMPONENTS + 40, 784))
        )
    assert (tmp_path / "likeness.npz").stat().st_size < 200_000

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("an array was read")

    monkeypatch.setattr(np, "load", never)
    with pytest.raises(ValueError, match="components"):
        load_basis(tmp_path / "likeness.npz")
    calibration = load_calibration(tmp_path)
    assert calibration.likeness is None
    assert any("likeness check off" in n for n in calibration.notes), calibration.notes


def test_a_basis_of_too_many_components_is_refused() -> None:
    means = np.zeros((10, 784), np.float32)
    with pytest.raises(ValueError, match="components"):
        LikenessBasis(means, np.zeros((10, MAX_COMPONENTS + 1, 784), np.float32))
    assert LikenessBasis(means, np.zeros((10, MAX_COMPONENTS, 784), np.float32)).rank == 64


@pytest.mark.parametrize(
    "content",
    [
        b"[" * 100_000 + b"]" * 100_000,
        b'{"format": 1, "pad": "' + b"x" * (MAX_READER_BYTES + 1) + b'"}',
        b"\xff\xfe not utf-8",
        b"",
    ],
    ids=["nested", "huge", "not-utf8", "empty"],
)
def test_a_hostile_reader_file_gives_defaults_never_a_failed_version(
    tmp_path: Path, content: bytes
) -> None:
    (tmp_path / "reader.json").write_bytes(content)
    calibration = load_calibration(tmp_path)
    assert calibration.likeness is None
    assert dict(calibration.reading_weights) == READING_WEIGHTS
    assert any("unreadable" in n for n in calibration.notes), calibration.notes


def test_a_reader_file_that_is_no_regular_file_is_not_opened(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "reader.json")  # opening it for reading would block for good
    calibration = load_calibration(tmp_path)
    assert calibration.likeness is None
    assert any("not a regular file" in n for n in calibration.notes), calibration.notes


def test_one_image_is_judged_as_in_a_batch(
    bundled: ReaderCalibration, mnist_test: tuple[np.ndarray, np.ndarray]
) -> None:
    """/predict's judge of one digit (not_like_digit) gives the batch's flags, for every class
    it may be read as, on digits (mostly alike) and on shapes (unlike), uint8 or float 0..1."""
    basis, threshold = bundled.likeness, bundled.likeness_threshold
    assert basis is not None
    assert threshold is not None
    images = np.concatenate([mnist_test[0][:300], not_digits(), np.zeros((1, 28, 28), np.uint8)])
    flags = {False: 0, True: 0}
    for digit in range(10):
        batch = not_like_digits(basis, images, np.full(len(images), digit), threshold)
        for image, expected in zip(images, batch, strict=True):
            assert not_like_digit(basis, image, digit, threshold) == expected, digit
            flags[bool(expected)] += 1
        as_float = images[:20].astype(np.float64) / 255
        batch = not_like_digits(basis, as_float, np.full(20, digit), threshold)
        assert [not_like_digit(basis, i, digit, threshold) for i in as_float] == list(batch)
    # Both answers were compared.
    assert flags[False] > 1000, flags
    assert flags[True] > 100, flags
    with pytest.raises(ValueError, match=r"one digit 0\.\.9"):
        not_like_digit(basis, images[0], 10, threshold)
