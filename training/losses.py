"""The training loss: cross-entropy on predicted probabilities.

Both recipes compile the model with :func:`categorical_cross_entropy` on one-hot labels, and
``metrics.json`` reports the test loss through the same function, so the loss has one definition.
:func:`binary_cross_entropy` is here for the notebook's worked example: for two classes the
one-hot categorical cross-entropy *is* the binary cross-entropy.

Both return the loss per example (Keras averages over the batch); take the mean for a dataset.
"""

from __future__ import annotations

from typing import Final

import tensorflow as tf

# Probabilities are clipped away from 0 and 1 before the log, as Keras does, so one confidently
# wrong example costs log(1e7) ≈ 16 instead of infinity.
EPSILON: Final = 1e-7


def categorical_cross_entropy(y_true: tf.Tensor, y_pred: tf.Tensor) -> tf.Tensor:
    """-sum_k y_true[k] * log(y_pred[k]) per example; ``y_true`` one-hot, ``y_pred`` probabilities.

    Shapes [N, K] -> [N].
    """
    y_pred = tf.convert_to_tensor(y_pred, dtype=tf.float32)
    y_true = tf.cast(y_true, y_pred.dtype)
    y_pred = tf.clip_by_value(y_pred, EPSILON, 1.0 - EPSILON)
    return -tf.reduce_sum(y_true * tf.math.log(y_pred), axis=-1)


def binary_cross_entropy(y_true: tf.Tensor, p_positive: tf.Tensor) -> tf.Tensor:
    """-(y log p + (1 - y) log(1 - p)) per example; ``y_true`` in {0, 1}, ``p_positive`` = p(y=1).

    Shapes [N] -> [N].
    """
    p = tf.clip_by_value(tf.convert_to_tensor(p_positive, dtype=tf.float32), EPSILON, 1.0 - EPSILON)
    y = tf.cast(y_true, p.dtype)
    return -(y * tf.math.log(p) + (1.0 - y) * tf.math.log(1.0 - p))
