"""The classifier and its fitting: one dense layer, 784 -> 10, softmax (multinomial logistic
regression), trained with Keras on features that :mod:`training.preprocess` already computed.

Keras is used only here, at training time. The exported SavedModel is a plain ``tf.Module``
(:mod:`training.export`) holding copies of this layer's kernel and bias.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
import numpy.typing as npt
import tensorflow as tf

from training.losses import categorical_cross_entropy
from training.preprocess import NUM_FEATURES
from training.recipes import Recipe

NUM_CLASSES = 10


@dataclass
class FitResult:
    """A fitted classifier with its per-epoch history and fitting time."""

    model: Any
    """The fitted ``keras.Model``."""
    history: dict[str, list[float]]
    """Keras history: ``loss``, ``accuracy`` and, with a validation split, ``val_*``."""
    fit_seconds: float

    @property
    def kernel(self) -> npt.NDArray[np.float32]:
        """The dense layer's weights, [784, 10]."""
        return np.asarray(self.model.layers[-1].kernel.numpy(), dtype=np.float32)

    @property
    def bias(self) -> npt.NDArray[np.float32]:
        """The dense layer's bias, [10]."""
        return np.asarray(self.model.layers[-1].bias.numpy(), dtype=np.float32)


def make_deterministic(seed: int) -> None:
    """Seed Python, numpy and TensorFlow and ask TensorFlow for deterministic kernels.

    Same seed and data then give the same weights, run after run, on the same machine.
    """
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def build_classifier(recipe: Recipe, steps_per_epoch: int) -> Any:
    """The compiled 784->10 softmax model for ``recipe`` (its loss: categorical cross-entropy)."""
    regularizer = keras.regularizers.L2(recipe.l2) if recipe.l2 > 0 else None
    model = keras.Sequential(
        [
            keras.Input(shape=(NUM_FEATURES,), name="features"),
            keras.layers.Dense(
                NUM_CLASSES, activation="softmax", kernel_regularizer=regularizer, name="dense"
            ),
        ],
        name=f"softmax_{recipe.name}",
    )
    model.compile(
        optimizer=_optimizer(recipe, total_steps=steps_per_epoch * recipe.epochs),
        loss=categorical_cross_entropy,
        metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
        steps_per_execution=_steps_per_execution(recipe.steps_per_execution, steps_per_epoch),
    )
    return model


def _steps_per_execution(wanted: int, steps_per_epoch: int) -> int:
    """The largest divisor of ``steps_per_epoch`` not above ``wanted``.

    Keras counts progress in whole executions, so with a non-divisor its bar ends an epoch on
    "112/108"; a divisor keeps the bar right and costs at most a few more calls.
    """
    return max(d for d in range(1, max(wanted, 1) + 1) if steps_per_epoch % d == 0)


def _optimizer(recipe: Recipe, *, total_steps: int) -> Any:
    learning_rate: Any = recipe.learning_rate
    if recipe.lr_schedule == "cosine":
        learning_rate = keras.optimizers.schedules.CosineDecay(
            recipe.learning_rate, decay_steps=max(total_steps, 1)
        )
    elif recipe.lr_schedule != "constant":
        raise ValueError(f"unknown learning-rate schedule {recipe.lr_schedule!r}")
    if recipe.optimizer == "sgd":
        return keras.optimizers.SGD(learning_rate=learning_rate)
    if recipe.optimizer == "adam":
        return keras.optimizers.Adam(learning_rate=learning_rate)
    raise ValueError(f"unknown optimizer {recipe.optimizer!r}")


def one_hot(labels: npt.NDArray[np.integer[Any]]) -> npt.NDArray[np.float32]:
    """Integer labels [N] -> one-hot float32 [N, 10]."""
    return np.eye(NUM_CLASSES, dtype=np.float32)[np.asarray(labels, dtype=np.int64)]


def fit_classifier(
    recipe: Recipe,
    train_features: npt.NDArray[np.float32],
    train_labels: npt.NDArray[np.integer[Any]],
    validation: tuple[npt.NDArray[np.float32], npt.NDArray[np.integer[Any]]] | None = None,
    *,
    sample_weight: npt.NDArray[np.float32] | None = None,
    verbose: int | str = "auto",
) -> FitResult:
    """Seed everything, build the model and fit it on preprocessed features.

    ``sample_weight`` scales each example's loss (1 for an MNIST digit; labelled real digits
    carry their set's weight). ``verbose="auto"`` shows Keras' progress bar; 0 is silent (tests).
    """
    make_deterministic(recipe.seed)
    steps_per_epoch = -(-len(train_features) // recipe.batch_size)
    model = build_classifier(recipe, steps_per_epoch)
    validation_data = None if validation is None else (validation[0], one_hot(validation[1]))
    start = time.perf_counter()
    history = model.fit(
        train_features,
        one_hot(train_labels),
        sample_weight=sample_weight,
        batch_size=recipe.batch_size,
        epochs=recipe.epochs,
        validation_data=validation_data,
        shuffle=True,
        verbose=verbose,
    )
    fit_seconds = time.perf_counter() - start
    curves = {k: [float(v) for v in values] for k, values in history.history.items()}
    return FitResult(model=model, history=curves, fit_seconds=fit_seconds)
