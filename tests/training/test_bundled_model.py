"""The committed model, models/mnist/1: its metrics.json must hold today, on the real test set."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from training.data import MnistData
from training.evaluate import evaluate_signature
from training.export import load_signature
from training.report import FILES as REPORT_FILES

BUNDLED = Path(__file__).resolve().parents[2] / "models" / "mnist" / "1"


@pytest.fixture(scope="module")
def metrics() -> dict[str, Any]:
    # Not a skip: the service starts on this model, so its absence is a failure.
    assert (BUNDLED / "saved_model.pb").is_file(), f"{BUNDLED} is missing: it must be committed"
    result: dict[str, Any] = json.loads((BUNDLED / "metrics.json").read_text(encoding="utf-8"))
    return result


def test_bundled_model_is_the_default_recipe_version_1(metrics: dict[str, Any]) -> None:
    assert metrics["version"] == 1
    assert metrics["recipe"] == "default"
    assert metrics["test"]["num_examples"] == 10_000
    for name in REPORT_FILES:
        assert (BUNDLED / "report" / name).is_file(), name


def test_bundled_model_matches_its_metrics_on_the_real_test_set(
    metrics: dict[str, Any], mnist: MnistData
) -> None:
    evaluation = evaluate_signature(load_signature(BUNDLED), mnist.test_images, mnist.test_labels)
    assert evaluation.accuracy == pytest.approx(metrics["test"]["accuracy"], abs=0.0005)
    assert evaluation.loss == pytest.approx(metrics["test"]["loss"], abs=0.001)
    assert evaluation.accuracy >= 0.955


def test_bundled_model_was_trained_on_the_verified_dataset(metrics: dict[str, Any]) -> None:
    from training.data import MNIST

    assert metrics["dataset"]["sha256_uncompressed"] == {f.name: f.sha256 for f in MNIST.files}
