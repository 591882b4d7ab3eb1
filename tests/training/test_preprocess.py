"""Preprocessing invariants, measured with an independent numpy implementation of the moments."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import tensorflow as tf

from tests.training.synthetic import blob_digits
from training.data import MnistData
from training.preprocess import (
    METHODS,
    TARGET_SD_X,
    TARGET_SD_Y,
    deskew,
    image_moments,
    moment_normalize,
    preprocess,
    preprocess_array,
    scale,
)


def np_moments(image: np.ndarray) -> dict[str, float]:
    """Centre of mass, spreads and shear (x shift per row) of one image, in plain numpy."""
    image = image.astype(np.float64)
    rows, cols = np.mgrid[0 : image.shape[0], 0 : image.shape[1]]
    mass = image.sum()
    cy, cx = (image * rows).sum() / mass, (image * cols).sum() / mass
    var_y = (image * (rows - cy) ** 2).sum() / mass
    var_x = (image * (cols - cx) ** 2).sum() / mass
    cov = (image * (rows - cy) * (cols - cx)).sum() / mass
    return {
        "cx": cx,
        "cy": cy,
        "sd_y": np.sqrt(var_y),
        "sd_x_unsheared": np.sqrt(var_x - cov**2 / var_y),
        "shear": cov / var_y,
    }


def bar(columns_at_row: list[float] | None = None, rows: range = range(4, 24)) -> np.ndarray:
    """A 2-pixel-wide stroke, uint8 [28, 28]: upright at columns 13-14 unless told otherwise."""
    image = np.zeros((28, 28), np.uint8)
    for i, row in enumerate(rows):
        left = 13 if columns_at_row is None else round(columns_at_row[i])
        image[row, left : left + 2] = 255
    return image


def run(fn: Callable[[tf.Tensor], tf.Tensor], images: np.ndarray) -> np.ndarray:
    """Apply a float-image transform to uint8 images, as preprocess does."""
    return np.asarray(fn(scale(tf.constant(images))))


def test_an_upright_centred_digit_is_unchanged() -> None:
    image = bar()
    out = run(deskew, image[None])[0]
    np.testing.assert_allclose(out, image / 255.0, atol=1e-6)


def test_an_upright_digit_is_only_moved_to_the_centre() -> None:
    off_centre = np.roll(bar(), (-3, -8), axis=(0, 1))
    out = run(deskew, off_centre[None])[0]
    np.testing.assert_allclose(out, bar() / 255.0, atol=1e-5)


@pytest.mark.parametrize("slope", [0.5, -0.35])
def test_a_sheared_stroke_is_straightened(slope: float) -> None:
    rows = range(4, 24)
    image = bar([12.5 + slope * (r - 13.5) for r in rows], rows)
    before = np_moments(image)
    assert before["shear"] == pytest.approx(slope, abs=0.05)  # the stroke really is slanted

    after = np_moments(run(deskew, image[None])[0])
    assert abs(after["shear"]) < 0.02
    assert after["cx"] == pytest.approx(13.5, abs=0.05)
    assert after["cy"] == pytest.approx(13.5, abs=0.05)
    assert after["sd_y"] == pytest.approx(before["sd_y"], rel=0.02)  # deskew keeps the height


def test_deskew_straightens_real_digits(mnist: MnistData) -> None:
    images = mnist.test_images[:200]
    before = np.array([np_moments(im)["shear"] for im in images])
    after = np.array([np_moments(im)["shear"] for im in run(deskew, images)])
    assert np.median(np.abs(before)) > 0.1
    assert np.median(np.abs(after)) < 0.02


def test_moment_normalize_standardizes_position_slant_and_size(mnist: MnistData) -> None:
    # Real digits, excluding "1": its width is stretched only up to the limit, by design.
    images = mnist.test_images[:300][mnist.test_labels[:300] != 1]
    moments = [np_moments(im) for im in run(moment_normalize, images)]
    for key, target, tolerance in [
        ("cx", 13.5, 0.1),
        ("cy", 13.5, 0.1),
        ("shear", 0.0, 0.03),
        ("sd_y", TARGET_SD_Y, 0.25),
        ("sd_x_unsheared", TARGET_SD_X, 0.25),
    ]:
        median = float(np.median([m[key] for m in moments]))
        assert median == pytest.approx(target, abs=tolerance), key


def test_tf_moments_agree_with_numpy() -> None:
    image = bar([12.5 + 0.4 * (r - 13.5) for r in range(4, 24)])
    m = image_moments(scale(tf.constant(image[None])))
    expected = np_moments(image)
    assert float(m.center_x[0]) == pytest.approx(expected["cx"], abs=1e-3)
    assert float(m.center_y[0]) == pytest.approx(expected["cy"], abs=1e-3)
    assert float(m.cov_xy[0] / m.var_y[0]) == pytest.approx(expected["shear"], abs=1e-4)


@pytest.mark.parametrize("method", METHODS)
def test_preprocess_output_contract(method: str) -> None:
    images = np.stack(
        [
            bar(),
            np.zeros((28, 28), np.uint8),  # empty: stays empty, no NaN
            np.pad(np.full((1, 1), 255, np.uint8), ((3, 24), (20, 7))),  # one pixel
            np.pad(np.full((1, 20), 255, np.uint8), ((14, 13), (4, 4))),  # horizontal dash
            np.full((28, 28), 255, np.uint8),  # all ink
        ]
    )
    features = preprocess(tf.constant(images), method).numpy()
    assert features.shape == (len(images), 784)
    assert features.dtype == np.float32
    assert np.isfinite(features).all()
    assert features.min() >= 0.0
    assert features.max() <= 1.0
    assert features[1].max() == 0.0
    assert features[2].sum() > 0  # a lone pixel is moved, not lost


def test_scale_is_pixels_over_255() -> None:
    images = np.arange(28 * 28, dtype=np.uint8).reshape(1, 28, 28)
    np.testing.assert_allclose(
        preprocess(tf.constant(images), "scale").numpy(), images.reshape(1, 784) / 255.0, rtol=1e-6
    )


def test_batching_does_not_change_the_result() -> None:
    images, _ = blob_digits(50)
    whole = preprocess(tf.constant(images), "moment_normalize").numpy()
    # Equal up to float32 rounding: reductions may sum in another order for another batch size.
    batched = preprocess_array(images, "moment_normalize", batch_size=7)
    np.testing.assert_allclose(batched, whole, atol=1e-5)


def test_rejects_floats_and_unknown_methods() -> None:
    with pytest.raises(TypeError, match="uint8"):
        preprocess(tf.zeros([1, 28, 28], tf.float32), "scale")
    with pytest.raises(ValueError, match="unknown preprocessing"):
        preprocess(tf.zeros([1, 28, 28], tf.uint8), "sharpen")
    with pytest.raises(ValueError, match="unknown preprocessing"):
        preprocess_array(np.zeros((1, 28, 28), np.uint8), "sharpen")
