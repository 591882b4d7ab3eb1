"""The training loss, checked against the notebook's worked example."""

from __future__ import annotations

import numpy as np
import pytest

from training import losses
from training.model import build_classifier, one_hot
from training.recipes import DEFAULT, SEED, Recipe

# The notebook: four examples, true classes y and predicted p(y = 1).
Y = np.array([0, 1, 1, 0])
P1 = np.array([0.3, 0.7, 0.6, 0.2])
NOTEBOOK_LOSS = 0.36182976573941633  # = -(log 0.7 + log 0.7 + log 0.6 + log 0.8) / 4


def test_binary_cross_entropy_matches_the_notebook() -> None:
    loss = np.mean(losses.binary_cross_entropy(Y, P1))
    assert loss == pytest.approx(NOTEBOOK_LOSS, abs=1e-6)


def test_one_hot_categorical_cross_entropy_matches_the_notebook() -> None:
    probabilities = np.stack([1 - P1, P1], axis=1)
    loss = np.mean(losses.categorical_cross_entropy(np.eye(2)[Y], probabilities))
    assert loss == pytest.approx(NOTEBOOK_LOSS, abs=1e-6)


def test_loss_is_per_example() -> None:
    probabilities = np.stack([1 - P1, P1], axis=1)
    per_example = np.asarray(losses.categorical_cross_entropy(np.eye(2)[Y], probabilities))
    np.testing.assert_allclose(per_example, -np.log([0.7, 0.7, 0.6, 0.8]), rtol=1e-6)


def test_a_certain_mistake_costs_a_finite_loss() -> None:
    loss = losses.categorical_cross_entropy(one_hot(np.array([3])), np.eye(10)[[5]])
    assert np.isfinite(loss).all()
    assert float(loss[0]) == pytest.approx(-np.log(losses.EPSILON), rel=1e-3)


@pytest.mark.parametrize("recipe", [SEED, DEFAULT], ids=lambda r: r.name)
def test_training_compiles_with_this_loss(recipe: Recipe) -> None:
    model = build_classifier(recipe, steps_per_epoch=10)
    assert model.loss is losses.categorical_cross_entropy
