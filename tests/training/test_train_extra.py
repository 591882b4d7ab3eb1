"""Training with labelled real digits (``--extra-data``): the held-out part never enters the
fit, the weight reaches it, and the new version is measured beside the served one on the same
held-out digits, which is what the promotion gate compares."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import training.train
from app.serving.report import read_report
from app.settings import Settings
from tests.training.synthetic import blob_digits, make_dataset, write_digit_set
from training.data import MnistData
from training.evaluate import evaluate_signature
from training.export import load_signature
from training.extra_data import ExtraSet, load_extra_set
from training.real_digits import DEFAULT_GATE, served_baseline
from training.recipes import DEFAULT
from training.report import FILES, REAL_DIGIT_FILES
from training.train import add_extra_digits, format_summary, main, run

QUICK = DEFAULT.with_overrides(epochs=1, validation_size=20, batch_size=64)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> MnistData:
    return make_dataset(tmp_path_factory.mktemp("idx"), n_train=300, n_test=64).data


@pytest.fixture(scope="module")
def extra(tmp_path_factory: pytest.TempPathFactory) -> ExtraSet:
    images, labels = blob_digits(80, seed=31)
    folder = tmp_path_factory.mktemp("extra") / "reviewed"
    write_digit_set(folder, images, labels)
    return load_extra_set(folder, 3.0)


def test_the_held_out_part_never_enters_the_fit(extra: ExtraSet) -> None:
    images, labels = blob_digits(50, seed=32)
    recipe = DEFAULT.with_overrides(augmentation=())
    fit_x, fit_y, weights = add_extra_digits(images, labels, [extra], recipe)
    seen = {image.tobytes() for image in fit_x}
    assert all(image.tobytes() not in seen for image in extra.held_images)
    assert all(image.tobytes() in seen for image in extra.fit_images)
    assert len(fit_x) == len(fit_y) == len(weights) == 50 + len(extra.fit_labels)
    # Each example keeps its own label and weight through the shuffle.
    from_extra = weights == 3.0
    assert from_extra.sum() == len(extra.fit_labels)
    assert sorted(fit_y[from_extra]) == sorted(extra.fit_labels)
    assert (weights[~from_extra] == 1.0).all()


def test_augmentation_copies_the_extra_digits_too(extra: ExtraSet) -> None:
    images, labels = blob_digits(10, seed=33)
    fit_x, _, weights = add_extra_digits(images, labels, [extra], DEFAULT)
    assert len(fit_x) == 10 + 3 * len(extra.fit_labels)
    assert (weights == 3.0).sum() == 3 * len(extra.fit_labels)


def test_a_training_with_extra_data_is_measured_beside_the_served_version(
    tiny: MnistData, extra: ExtraSet, tmp_path: Path
) -> None:
    models = tmp_path / "models"
    first = run(QUICK, tiny, models_dir=models, report=False, verbose=0)
    assert "real_digits" not in first.metrics
    assert "extra_data" not in first.metrics
    second = run(QUICK, tiny, models_dir=models, report=True, verbose=0, extra=[extra])

    [recorded] = second.metrics["extra_data"]
    assert recorded["name"] == "reviewed"
    assert recorded["weight"] == 3.0
    assert recorded["sha256"] == extra.sha256
    assert recorded["fit_items"] == len(extra.fit_labels)
    assert recorded["held_out_items"] == len(extra.held_labels) > 0
    assert second.metrics["dataset"]["extra_fit_examples"] == len(extra.fit_labels)

    real = second.metrics["real_digits"]
    assert real["items"] == len(extra.held_labels)
    new = evaluate_signature(load_signature(second.path), extra.held_images, extra.held_labels)
    old = evaluate_signature(load_signature(first.path), extra.held_images, extra.held_labels)
    assert real["accuracy"] == pytest.approx(new.accuracy)
    assert real["baseline"]["version"] == 1
    assert real["baseline"]["accuracy"] == pytest.approx(old.accuracy)
    assert real["baseline"]["test_accuracy"] == pytest.approx(first.metrics["test"]["accuracy"])
    assert real["sets"][0]["baseline_accuracy"] == pytest.approx(old.accuracy)

    # The service reads the same figures, and the report shows them.
    report = read_report(second.path)
    assert report is not None
    assert report.real_digits is not None
    assert report.real_digits.baseline_version == 1
    assert report.real_digits.accuracy == pytest.approx(new.accuracy)
    for name in (*FILES, *REAL_DIGIT_FILES):
        assert (second.path / "report" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    summary = format_summary(second)
    assert "real-digit accuracy" in summary
    assert "version 1 (served)" in summary


def test_the_baseline_is_the_version_the_gate_serves(tiny: MnistData, tmp_path: Path) -> None:
    models = tmp_path / "models"
    run(QUICK, tiny, models_dir=models, report=False, verbose=0)
    # Version 2: the same model, but its metrics.json says it is far worse: held by the gate.
    shutil.copytree(models / "1", models / "2")
    metrics = json.loads((models / "2" / "metrics.json").read_text())
    metrics["test"]["accuracy"] = 0.5
    (models / "2" / "metrics.json").write_text(json.dumps(metrics))
    # Version 3: would pass the gate, but does not load.
    (models / "3").mkdir()
    (models / "3" / "metrics.json").write_text(json.dumps({"test": {"accuracy": 0.99}}))
    baseline = served_baseline(models)
    assert baseline is not None
    assert baseline.version == 1
    assert served_baseline(tmp_path / "nothing") is None


def test_the_baseline_gate_is_the_services_default() -> None:
    fields = Settings.model_fields
    assert DEFAULT_GATE.tolerance == fields["promotion_tolerance"].default
    assert DEFAULT_GATE.min_accuracy == fields["promotion_min_accuracy"].default


def test_cli_takes_extra_data_with_a_weight(
    tiny: MnistData,
    extra: ExtraSet,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    def fake_load(data_dir: str | None, **_: Any) -> MnistData:
        return tiny

    monkeypatch.setattr(training.train, "load_mnist", fake_load)
    models = tmp_path / "models"
    argv = ["--models-dir", str(models), "--epochs", "1", "--validation-size", "20",
            "--no-report", "--reader-fit", "none",
            "--extra-data", f"{extra.path}:0.5", str(extra.path)]  # fmt: skip
    assert main(argv) == 0
    metrics = json.loads((models / "1" / "metrics.json").read_text())
    assert [e["weight"] for e in metrics["extra_data"]] == [0.5, 1.0]
    assert metrics["real_digits"]["items"] == 2 * len(extra.held_labels)
    assert metrics["real_digits"]["baseline"] is None
    out = capsys.readouterr().out
    assert "no served version to compare with" in out
    assert "extra data" in out


def test_cli_names_a_bad_extra_set_before_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--models-dir", str(tmp_path / "models"), "--no-report",
            "--extra-data", str(tmp_path / "missing")]  # fmt: skip
    assert main(argv) == 2
    assert "missing: no labels.csv" in capsys.readouterr().err
    assert not (tmp_path / "models").exists()


def test_fitted_weights_change_with_the_weight(tiny: MnistData, extra: ExtraSet) -> None:
    images, labels = tiny.train_images, tiny.train_labels
    recipe = QUICK.with_overrides(augmentation=())
    _, _, light = add_extra_digits(images, labels, [extra], recipe)
    heavy_set = load_extra_set(extra.path, 10.0)
    _, _, heavy = add_extra_digits(images, labels, [heavy_set], recipe)
    assert np.isclose(light.sum() - len(labels), 3.0 * len(extra.fit_labels))
    assert np.isclose(heavy.sum() - len(labels), 10.0 * len(extra.fit_labels))
