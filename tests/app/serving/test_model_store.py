"""The model call's session fast path answers what the SavedModel signature answers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow as tf

from app.serving.loaded import load_version
from app.serving.runtime import INPUT_KEY, SIGNATURE


def test_session_fast_path_matches_the_signature(
    bundled_model_dir: Path, mnist_test: tuple[np.ndarray, np.ndarray]
) -> None:
    model = load_version(bundled_model_dir, int(bundled_model_dir.name))
    assert model.session_fast_path
    signature = tf.saved_model.load(str(bundled_model_dir)).signatures[SIGNATURE]
    images = mnist_test[0][:300]
    for image in images[:20]:
        probabilities, digits = model.predict(image[np.newaxis])
        expected = signature(**{INPUT_KEY: tf.constant(image[np.newaxis])})
        assert probabilities.dtype == np.float32
        assert digits.dtype == np.int64
        np.testing.assert_array_equal(probabilities, expected["probabilities"].numpy())
        np.testing.assert_array_equal(digits, expected["digit"].numpy())
    # In a batch the kernels sum in another order, for the eager call too (its batched and
    # one-by-one answers differ by ~5e-6): same digits, probabilities within that envelope.
    probabilities, digits = model.predict(images)
    expected = signature(**{INPUT_KEY: tf.constant(images)})
    np.testing.assert_array_equal(digits, expected["digit"].numpy())
    np.testing.assert_allclose(probabilities, expected["probabilities"].numpy(), rtol=0, atol=1e-5)


def test_fixture_models_use_the_fast_path_too(constant_models: dict[int, Path]) -> None:
    version, path = next(iter(constant_models.items()))
    model = load_version(path, version)
    assert model.session_fast_path
    _, digits = model.predict(np.zeros([4, 28, 28], np.uint8))
    assert digits.shape == (4,)


def test_a_version_loads_with_its_own_reader_calibration(
    bundled_model_dir: Path, constant_models: dict[int, Path]
) -> None:
    bundled = load_version(bundled_model_dir, int(bundled_model_dir.name))
    assert bundled.calibration.source == "reader.json"
    assert bundled.calibration.likeness is not None
    assert not bundled.calibration.notes
    # A version without reader.json is served with the defaults, and says so.
    plain = load_version(constant_models[1], 2)
    assert plain.calibration.likeness is None
    assert any("reader.json" in note for note in plain.calibration.notes)
