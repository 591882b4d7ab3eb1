"""The calibration step (training/calibrate.py): writes what app/reading/calibration.py reads."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from app.reading.calibration import load_calibration
from app.reading.likeness import LikenessBasis, unlikeness
from training.calibrate import RANK, calibrate_version, fit_basis


def synthetic_digits(count: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Ten 'classes' of blurred bars at ten angles, uint8 [N, 28, 28], with labels."""
    rng = np.random.default_rng(seed)
    labels = np.arange(count) % 10
    yy, xx = np.mgrid[0:28, 0:28] - 13.5
    images = np.zeros((count, 28, 28), np.uint8)
    for i, label in enumerate(labels):
        angle = label * np.pi / 10 + rng.normal(0, 0.05)
        distance = np.abs(np.cos(angle) * yy - np.sin(angle) * xx)
        bar = np.clip(3.0 - distance + rng.normal(0, 0.3), 0, 1) * (np.hypot(yy, xx) < 10)
        images[i] = (bar * 255).astype(np.uint8)
    return images, labels


def test_the_basis_is_orthonormal_and_explains_its_own_class() -> None:
    images, labels = synthetic_digits(800)
    means, comps = fit_basis(images, labels, rank=5)
    assert means.shape == (10, 784)
    assert comps.shape == (10, 5, 784)
    for digit in range(10):
        assert np.allclose(comps[digit] @ comps[digit].T, np.eye(5), atol=1e-4)
    basis = LikenessBasis(means, comps)
    own = unlikeness(basis, images, labels)
    other = unlikeness(basis, images, (labels + 5) % 10)
    assert np.median(own) < 0.5 * np.median(other)


def test_the_written_calibration_is_what_the_service_loads(tmp_path: Path) -> None:
    images, labels = synthetic_digits(1000)
    held = 200
    document = calibrate_version(
        tmp_path, images, labels, labels[-held:], reader={"review_threshold": 0.9}
    )
    written = json.loads((tmp_path / "reader.json").read_text())
    assert written == json.loads(json.dumps(document))
    calibration = load_calibration(tmp_path)
    assert calibration.source == "reader.json"
    assert calibration.review_threshold == 0.9
    assert calibration.likeness is not None
    assert calibration.likeness.rank == RANK
    # The service computes the same unlikeness as the step that set the threshold.
    scores = unlikeness(calibration.likeness, images[-held:], labels[-held:])
    threshold = calibration.likeness_threshold
    assert threshold is not None
    assert 0.97 <= (scores <= threshold + 1e-4).mean() <= 1.0


def test_the_reader_step_by_mode() -> None:
    from training.calibrate import fit_reader_settings

    images, labels = synthetic_digits(100)

    def predict(batch: np.ndarray) -> np.ndarray:
        return np.full((len(batch), 10), 0.1, np.float32)

    assert fit_reader_settings(images, labels, predict, mode="none") is None
    with pytest.raises(ValueError, match="rule, full, none"):
        fit_reader_settings(images, labels, predict, mode="weights")
