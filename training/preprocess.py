"""What the classifier sees: the numeric preprocessing, in pure TensorFlow ops.

This module is the only definition of the preprocessing. Training applies :func:`preprocess` to
the whole dataset once (:func:`preprocess_array`) and fits the dense layer on the result; the
export puts the very same :func:`preprocess` inside the SavedModel signature. A client therefore
sends raw uint8 pixels, [N, 28, 28], white ink on black, and never floats.

Methods (a recipe names one):

``scale``
    pixels / 255, flattened. The original notebook.
``deskew``
    scale, then shear each digit so that its main axis is vertical and move its centre of mass
    to the image centre (classic moment deskewing).
``moment_normalize``
    deskew, then also stretch each axis so that the ink's spread (the standard deviation of the
    intensity distribution) is the same for every digit: ``TARGET_SD_Y`` pixels vertically and
    ``TARGET_SD_X`` horizontally after the shear. This is moment normalization from the
    character-recognition literature (Casey 1970; Liu et al. 2004): a linear classifier has one
    template per class, so every bit of variation in position, slant and size that is removed
    before the template match is accuracy gained. It still is one 28×28 image, 784 features.

All geometric work is a single bilinear affine warp per image (``ImageProjectiveTransformV3``,
a core TensorFlow op that TF Serving also runs), with the affine map computed from the image's
own moments, so it is fast in large batches and needs no training statistics.

Coordinates: pixel centres are at integer positions 0..27, x is the column and y the row (down);
the image centre is (13.5, 13.5).
"""

from __future__ import annotations

import functools
from typing import Any, Final, NamedTuple

import numpy as np
import numpy.typing as npt
import tensorflow as tf

IMAGE_SIZE: Final = 28
NUM_FEATURES: Final = IMAGE_SIZE * IMAGE_SIZE
CENTER: Final = (IMAGE_SIZE - 1) / 2.0

# Spread of the ink after moment normalization, in pixels. 5.5 is MNIST's median vertical spread
# (so a typical digit keeps its height); 4.0 horizontally was the best of 3.5 / 4.0 / 4.5 / 5.0 on
# the validation split. Both were chosen on the validation split, never on the test set.
TARGET_SD_Y: Final = 5.5
TARGET_SD_X: Final = 4.0
# Stretch limits. A "1" has almost no horizontal spread; stretching it to the full target width
# would turn it into a blob, so horizontal stretch stops at 2.5×. Vertical spread varies little on
# MNIST (1st-99th percentile 3.8-6.6 px), so the vertical limits only guard odd uploads.
SCALE_Y_RANGE: Final = (0.6, 1.6)
SCALE_X_RANGE: Final = (0.5, 2.5)
# Largest shear applied (x shift per row). Only 0.1 % of MNIST training digits need more than 1.04
# and a handful more than 1.5; the limit keeps a near-horizontal stroke (a dash, a lying "1") from
# being sheared into a smear.
MAX_SHEAR: Final = 1.5
# Below this much variance (px²) an axis has no measurable spread: leave that axis alone.
_MIN_VARIANCE: Final = 1e-3

METHODS: Final = ("scale", "deskew", "moment_normalize")


class ImageMoments(NamedTuple):
    """Intensity moments of each image in a batch; every field has shape [N]."""

    mass: tf.Tensor
    """Total intensity."""
    center_x: tf.Tensor
    """Centre of mass, column coordinate."""
    center_y: tf.Tensor
    """Centre of mass, row coordinate."""
    var_x: tf.Tensor
    """Second central moment along x (px²)."""
    var_y: tf.Tensor
    """Second central moment along y (px²)."""
    cov_xy: tf.Tensor
    """Mixed central moment (px²): positive when the ink leans like a "\\" (x grows with y)."""


def scale(images: tf.Tensor) -> tf.Tensor:
    """uint8 pixels [N, 28, 28] -> float32 in [0, 1]."""
    return tf.cast(images, tf.float32) / 255.0


def image_moments(images: tf.Tensor) -> ImageMoments:
    """Intensity moments of float images [N, 28, 28] (zero for empty images)."""
    coords = tf.range(IMAGE_SIZE, dtype=tf.float32)
    mass = tf.reduce_sum(images, axis=[1, 2])
    safe_mass = tf.maximum(mass, 1e-6)
    row_profile = tf.reduce_sum(images, axis=2)  # [N, rows]
    col_profile = tf.reduce_sum(images, axis=1)  # [N, cols]
    center_y = tf.reduce_sum(row_profile * coords, axis=1) / safe_mass
    center_x = tf.reduce_sum(col_profile * coords, axis=1) / safe_mass
    dy = coords[None, :] - center_y[:, None]
    dx = coords[None, :] - center_x[:, None]
    var_y = tf.reduce_sum(row_profile * dy**2, axis=1) / safe_mass
    var_x = tf.reduce_sum(col_profile * dx**2, axis=1) / safe_mass
    cov_xy = tf.reduce_sum(images * dy[:, :, None] * dx[:, None, :], axis=[1, 2]) / safe_mass
    return ImageMoments(mass, center_x, center_y, var_x, var_y, cov_xy)


def deskew(images: tf.Tensor) -> tf.Tensor:
    """Shear each float image [N, 28, 28] upright and move its centre of mass to the centre.

    The shear is ``cov_xy / var_y`` (the slope of the ink's main axis, x per row), removed by
    shifting each row horizontally; rows keep their vertical position relative to the centre of
    mass. An upright, centred digit is returned unchanged. Empty images stay empty.
    """
    return _normalize_geometry(images, normalize_size=False)


def moment_normalize(images: tf.Tensor) -> tf.Tensor:
    """:func:`deskew`, then scale each axis so the ink's spread is ``TARGET_SD_X/Y`` pixels."""
    return _normalize_geometry(images, normalize_size=True)


def _normalize_geometry(images: tf.Tensor, *, normalize_size: bool) -> tf.Tensor:
    m = image_moments(images)
    empty = m.mass <= 0.0
    has_height = m.var_y > _MIN_VARIANCE
    shear = tf.where(has_height, m.cov_xy / tf.maximum(m.var_y, _MIN_VARIANCE), 0.0)
    shear = tf.clip_by_value(shear, -MAX_SHEAR, MAX_SHEAR)
    ones = tf.ones_like(m.mass)
    if normalize_size:
        # Spread along x once the shear is removed: Var(x - shear * y).
        var_x = m.var_x - 2.0 * shear * m.cov_xy + shear**2 * m.var_y
        scale_y = tf.clip_by_value(
            TARGET_SD_Y * tf.math.rsqrt(tf.maximum(m.var_y, _MIN_VARIANCE)), *SCALE_Y_RANGE
        )
        scale_x = tf.clip_by_value(
            TARGET_SD_X * tf.math.rsqrt(tf.maximum(var_x, _MIN_VARIANCE)), *SCALE_X_RANGE
        )
        scale_y = tf.where(has_height, scale_y, 1.0)
        scale_x = tf.where(var_x > _MIN_VARIANCE, scale_x, 1.0)
    else:
        scale_x = scale_y = ones
    center_x = tf.where(empty, CENTER, m.center_x)
    center_y = tf.where(empty, CENTER, m.center_y)
    shear = tf.where(empty, 0.0, shear)
    # The warp maps each OUTPUT pixel (x, y) to the INPUT point it samples:
    #   y_in = cy + (y - C) / sy
    #   x_in = cx + (x - C) / sx + shear * (y_in - cy)
    # i.e. the inverse of "centre on the centre of mass, unshear, scale, move to the image centre".
    zeros = tf.zeros_like(shear)
    transforms = tf.stack(
        [
            1.0 / scale_x,
            shear / scale_y,
            center_x - CENTER / scale_x - shear * CENTER / scale_y,
            zeros,
            1.0 / scale_y,
            center_y - CENTER / scale_y,
            zeros,
            zeros,
        ],
        axis=1,
    )
    warped = tf.raw_ops.ImageProjectiveTransformV3(
        images=images[..., None],
        transforms=transforms,
        output_shape=tf.constant([IMAGE_SIZE, IMAGE_SIZE], dtype=tf.int32),
        fill_value=tf.constant(0.0, dtype=tf.float32),
        interpolation="BILINEAR",
        fill_mode="CONSTANT",
    )
    return warped[..., 0]


def preprocess(images: tf.Tensor, method: str) -> tf.Tensor:
    """Raw uint8 images [N, 28, 28] -> float32 features [N, 784] for the dense layer.

    ``method`` is one of :data:`METHODS`. This is the function the exported signature runs and
    the one applied to the training data, so what the model sees is defined here and only here.
    Output pixels are in [0, 1] (bilinear interpolation never overshoots).
    """
    images = tf.convert_to_tensor(images)
    if images.dtype != tf.uint8:
        raise TypeError(f"preprocess expects uint8 pixels, got {images.dtype.name}")
    x = scale(images)
    if method == "deskew":
        x = deskew(x)
    elif method == "moment_normalize":
        x = moment_normalize(x)
    elif method != "scale":
        raise ValueError(f"unknown preprocessing method {method!r}; expected one of {METHODS}")
    return tf.reshape(x, [-1, NUM_FEATURES])


@functools.cache
def _traced(method: str) -> Any:
    """:func:`preprocess` for one method as a graph, traced once per process."""
    if method not in METHODS:
        raise ValueError(f"unknown preprocessing method {method!r}; expected one of {METHODS}")
    return tf.function(
        lambda batch: preprocess(batch, method),
        input_signature=[tf.TensorSpec([None, IMAGE_SIZE, IMAGE_SIZE], tf.uint8)],
        autograph=False,
    )


def preprocess_array(
    images: npt.NDArray[np.uint8], method: str, *, batch_size: int = 10_000
) -> npt.NDArray[np.float32]:
    """:func:`preprocess` over a numpy array in large batches (one traced graph, few calls).

    Large batches are what make preprocessing cheap: the whole of MNIST takes well under a
    second on two cores, instead of being redone on every batch of every epoch.
    """
    fn = _traced(method)
    out = np.empty((len(images), NUM_FEATURES), dtype=np.float32)
    for start in range(0, len(images), batch_size):
        out[start : start + batch_size] = fn(tf.constant(images[start : start + batch_size]))
    return out
