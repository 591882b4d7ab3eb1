"""Short trainings end to end: fit, export, reload as the server does, metrics, atomicity, CLI.

Everything here trains for one or two epochs on a few hundred images: seconds, not minutes.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tensorflow as tf

import training.export
import training.train
from tests.training.synthetic import SyntheticDataset, blob_digits, make_dataset
from training.data import MnistData
from training.evaluate import evaluate_signature
from training.export import (
    SIGNATURE_NAME,
    existing_versions,
    load_signature,
    next_version,
    write_version,
)
from training.model import fit_classifier
from training.preprocess import preprocess, preprocess_array
from training.recipes import DEFAULT, SEED
from training.report import FILES as REPORT_FILES
from training.train import main, run

QUICK = DEFAULT.with_overrides(epochs=1, validation_size=20, batch_size=64)
# The keys the server reads from metrics.json; their names are part of the contract.
SERVER_KEYS = ["version", "recipe", "created_at", "test", "train", "hyperparameters", "timing",
               "dataset", "versions"]  # fmt: skip


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> MnistData:
    """A few hundred synthetic images: enough to train, export and check the plumbing."""
    return make_dataset(tmp_path_factory.mktemp("idx"), n_train=300, n_test=64).data


@pytest.fixture(scope="module")
def exported(
    tiny: MnistData, tmp_path_factory: pytest.TempPathFactory
) -> training.train.TrainingRun:
    """One quick training, exported once and shared by the read-only checks below."""
    models = tmp_path_factory.mktemp("models")
    return run(QUICK, tiny, models_dir=models, report=False, verbose=0)


def test_export_publishes_version_one_with_metrics(exported: training.train.TrainingRun) -> None:
    models = exported.path.parent
    assert exported.path.name == "1"
    assert sorted(p.name for p in models.iterdir()) == ["1"]  # no temp directory left behind
    for name in ("saved_model.pb", "variables", "metrics.json"):
        assert (exported.path / name).exists(), name
    metrics = json.loads((exported.path / "metrics.json").read_text())
    for key in SERVER_KEYS:
        assert key in metrics, key
    assert metrics["version"] == 1
    assert metrics["recipe"] == "default"
    assert metrics["created_at"].endswith("Z")
    assert metrics["hyperparameters"]["epochs"] == 1
    assert set(metrics["versions"]) >= {"python", "tensorflow", "keras", "numpy"}
    assert metrics["timing"]["train_seconds"] >= metrics["timing"]["fit_seconds"] > 0


def test_signature_contract(exported: training.train.TrainingRun) -> None:
    signature = load_signature(exported.path)
    _, inputs = signature.structured_input_signature
    assert list(inputs) == ["images"]
    assert inputs["images"].dtype == tf.uint8
    assert inputs["images"].shape.as_list() == [None, 28, 28]
    outputs = signature.structured_outputs
    assert set(outputs) == {"probabilities", "digit"}
    assert outputs["probabilities"].dtype == tf.float32
    assert outputs["probabilities"].shape.as_list() == [None, 10]
    assert outputs["digit"].dtype == tf.int64
    assert outputs["digit"].shape.as_list() == [None]


def test_signature_outputs_are_a_distribution_and_its_argmax(
    exported: training.train.TrainingRun,
) -> None:
    images, _ = blob_digits(17, seed=5)
    result = load_signature(exported.path)(images=tf.constant(images))
    probabilities, digits = result["probabilities"].numpy(), result["digit"].numpy()
    assert probabilities.shape == (17, 10)
    assert digits.shape == (17,)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    assert (probabilities >= 0).all()
    np.testing.assert_array_equal(digits, probabilities.argmax(axis=1))


def test_signature_runs_the_shared_preprocessing(exported: training.train.TrainingRun) -> None:
    # softmax(preprocess(images) @ kernel + bias), with preprocess from training.preprocess.
    module = tf.saved_model.load(str(exported.path))
    images, _ = blob_digits(9, seed=6)
    features = preprocess(tf.constant(images), "moment_normalize")
    expected = tf.nn.softmax(tf.matmul(features, module.kernel) + module.bias).numpy()
    got = module.signatures[SIGNATURE_NAME](images=tf.constant(images))["probabilities"]
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-6)


def test_metrics_describe_the_exported_model(
    exported: training.train.TrainingRun, tiny: MnistData
) -> None:
    test = exported.metrics["test"]
    evaluation = evaluate_signature(
        load_signature(exported.path), tiny.test_images, tiny.test_labels
    )
    assert test["accuracy"] == pytest.approx(evaluation.accuracy)
    assert test["loss"] == pytest.approx(evaluation.loss, rel=1e-5)
    confusion = np.array(test["confusion_matrix"])
    assert confusion.shape == (10, 10)
    assert confusion.sum(axis=1).tolist() == np.bincount(tiny.test_labels, minlength=10).tolist()
    assert np.trace(confusion) / confusion.sum() == pytest.approx(test["accuracy"])
    assert [row["digit"] for row in test["per_class"]] == list(range(10))
    assert [row["support"] for row in test["per_class"]] == confusion.sum(axis=1).tolist()
    assert exported.metrics["train"]["num_examples"] == 300 - QUICK.validation_size


def test_loads_and_answers_without_keras(exported: training.train.TrainingRun) -> None:
    # The server must not need Keras: load in a fresh interpreter where importing it fails.
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["keras"] = None
        sys.modules["tf_keras"] = None
        import tensorflow as tf
        signature = tf.saved_model.load({str(exported.path)!r}).signatures["serving_default"]
        out = signature(images=tf.zeros([3, 28, 28], tf.uint8))
        print(out["probabilities"].shape, out["digit"].dtype.name)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().endswith("(3, 10) int64")


def test_same_seed_same_model_different_seed_different_model() -> None:
    images, labels = blob_digits(256, seed=3)
    features = preprocess_array(images, "moment_normalize")
    recipe = DEFAULT.with_overrides(epochs=2, batch_size=32)

    first = fit_classifier(recipe, features, labels, verbose=0)
    second = fit_classifier(recipe, features, labels, verbose=0)
    other = fit_classifier(recipe.with_overrides(seed=1), features, labels, verbose=0)

    np.testing.assert_array_equal(first.kernel, second.kernel)
    assert first.history == second.history
    assert not np.array_equal(first.kernel, other.kernel)


def test_short_training_on_real_digits_learns(mnist: MnistData, tmp_path: Path) -> None:
    subset = MnistData(
        train_images=mnist.train_images[:6000],
        train_labels=mnist.train_labels[:6000],
        test_images=mnist.test_images[:2000],
        test_labels=mnist.test_labels[:2000],
        source=mnist.source,
        digests=mnist.digests,
    )
    recipe = DEFAULT.with_overrides(epochs=2, validation_size=1000)
    result = run(recipe, subset, models_dir=tmp_path / "models", report=False, verbose=0)
    # Chance is 0.1 and the full recipe reaches ~0.97; 5,000 images and 2 epochs land between.
    assert result.metrics["test"]["accuracy"] > 0.9


def test_seed_recipe_exports_plain_scaling(tiny: MnistData, tmp_path: Path) -> None:
    recipe = SEED.with_overrides(epochs=1, validation_size=0)
    result = run(recipe, tiny, models_dir=tmp_path / "models", report=False, verbose=0)
    assert result.metrics["hyperparameters"]["preprocessing"] == "scale"
    assert result.metrics["validation"] is None
    assert "val_loss" not in result.metrics["history"]


# -- versions and atomicity ---------------------------------------------------------------------


def test_next_version_ignores_temporary_and_foreign_entries(tmp_path: Path) -> None:
    assert next_version(tmp_path / "absent") == 1
    for name in ("1", "3", ".tmp-4-abc", "notes", "10x"):
        (tmp_path / name).mkdir()
    (tmp_path / "7").write_text("a file, not a version")
    assert existing_versions(tmp_path) == [1, 3]
    assert next_version(tmp_path) == 4


def test_existing_version_is_never_overwritten(tmp_path: Path) -> None:
    (tmp_path / "2").mkdir()
    with pytest.raises(FileExistsError, match="already exists"):
        write_version(tmp_path, 2, lambda directory, version: None)


def test_crash_during_export_leaves_nothing(
    tiny: MnistData, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    models = tmp_path / "models"
    real_save = training.train.save_saved_model

    def save_then_crash(directory: Path, *args: Any) -> None:
        real_save(directory, *args)  # a complete SavedModel now sits in the temp directory
        raise RuntimeError("simulated crash after writing the SavedModel")

    monkeypatch.setattr(training.train, "save_saved_model", save_then_crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(QUICK, tiny, models_dir=models, report=False, verbose=0)
    assert list(models.iterdir()) == []


def test_crash_at_the_rename_leaves_nothing(
    tiny: MnistData, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    models = tmp_path / "models"

    def failing_rename(source: Any, target: Any) -> None:
        raise OSError("simulated failure of the final rename")

    monkeypatch.setattr(training.export.os, "rename", failing_rename)
    with pytest.raises(OSError, match="simulated failure"):
        run(QUICK, tiny, models_dir=models, report=False, verbose=0)
    assert list(models.iterdir()) == []


# -- report and command line --------------------------------------------------------------------


def test_report_figures_are_written(tiny: MnistData, tmp_path: Path) -> None:
    result = run(QUICK, tiny, models_dir=tmp_path / "models", report=True, verbose=0)
    for name in REPORT_FILES:
        path = result.path / "report" / name
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name


def test_cli_trains_and_prints_a_summary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    dataset: SyntheticDataset = make_dataset(tmp_path / "idx", n_train=200, n_test=30)
    seen: dict[str, Any] = {}

    def fake_load(data_dir: str | None, **_: Any) -> MnistData:
        seen["data_dir"] = data_dir
        return dataset.data

    monkeypatch.setattr(training.train, "load_mnist", fake_load)
    models = tmp_path / "models"
    argv = ["--recipe", "seed", "--data-dir", "somewhere", "--models-dir", str(models),
            "--epochs", "1", "--batch-size", "50", "--learning-rate", "0.05", "--seed", "3",
            "--version", "5", "--validation-size", "20", "--no-report",
            "--reader-fit", "none"]  # fmt: skip
    assert main(argv) == 0

    assert seen["data_dir"] == "somewhere"
    metrics = json.loads((models / "5" / "metrics.json").read_text())
    hyperparameters = metrics["hyperparameters"]
    assert (hyperparameters["epochs"], hyperparameters["batch_size"]) == (1, 50)
    assert (hyperparameters["learning_rate"], hyperparameters["seed"]) == (0.05, 3)
    assert not (models / "5" / "report").exists()
    out = capsys.readouterr().out
    assert "test accuracy" in out
    assert str(models / "5") in out


def test_cli_reports_bad_data_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["--data-dir", str(empty), "--models-dir", str(tmp_path / "models")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ")
    assert "train-images-idx3-ubyte.gz" in err
    assert not (tmp_path / "models").exists()


def test_cli_without_matplotlib_stops_before_training_and_says_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    loads: list[object] = []
    monkeypatch.setattr(training.train, "load_mnist", lambda *a, **k: loads.append(a))
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # what a serve-only install looks like
    assert main(["--models-dir", str(tmp_path / "models"), "--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ")
    assert "matplotlib" in err
    assert "--no-report" in err
    assert "make train" in err
    assert loads == [], "no data read, no epoch spent"
    assert not (tmp_path / "models").exists()


def test_steps_per_execution_divides_the_epoch() -> None:
    from training.model import _steps_per_execution

    assert _steps_per_execution(16, 108) == 12
    assert _steps_per_execution(16, 64) == 16
    assert _steps_per_execution(16, 107) == 1  # a prime: one step per call
    assert _steps_per_execution(1, 1719) == 1


def test_a_new_version_carries_its_reader_calibration(
    exported: training.train.TrainingRun,
) -> None:
    from app.reading.calibration import load_calibration

    calibration = load_calibration(exported.path)
    assert calibration.source == "reader.json"
    assert calibration.likeness is not None
    assert calibration.likeness_threshold is not None
    # The reader's weights are not refitted by training: defaults, and it says so.
    assert any(note.startswith("reading_weights not calibrated") for note in calibration.notes)


# -- the reader's calibration, fitted per version -------------------------------------------


def test_training_fits_the_versions_reader_and_the_service_loads_it(
    tiny: MnistData, tmp_path: Path
) -> None:
    from app.reading.calibration import load_calibration
    from app.reading.reader import FEATURES
    from app.reading.review import ReviewLimits

    result = run(QUICK, tiny, models_dir=tmp_path / "models", report=False, verbose=0,
                 reader_fit="full", reader_codes=6)  # fmt: skip
    document = json.loads((result.path / "reader.json").read_text())
    assert set(document["reading_weights"]) == set(FEATURES)
    assert (
        "structured perceptron), margins and review threshold on 6" in document["reader_fitted_by"]
    )
    assert set(document["review_rule"]) == {
        "max_joined_width", "max_line_offset", "edge_room", "marked_threshold"
    }  # fmt: skip
    assert document["reader_fit_seconds"] >= 0
    assert "MNIST training digits" in document["reader_fitted_by"]
    calibration = load_calibration(result.path)
    # Everything the version needs is there and valid: no default stands in for anything.
    assert calibration.notes == ()
    assert calibration.count_margin == document["count_margin"]
    assert calibration.review_threshold == document["review_threshold"]
    assert calibration.review == ReviewLimits(**document["review_rule"])


def test_training_without_the_reader_fit_leaves_the_reader_defaults(
    exported: training.train.TrainingRun,
) -> None:
    from app.reading.calibration import load_calibration

    document = json.loads((exported.path / "reader.json").read_text())
    assert "reading_weights" not in document
    calibration = load_calibration(exported.path)
    assert any("reading_weights not calibrated" in note for note in calibration.notes)


def test_the_default_reader_step_keeps_the_service_reader_and_fits_the_review_rule(
    tiny: MnistData, tmp_path: Path
) -> None:
    from app.reading.calibration import load_calibration
    from app.reading.reader import COUNT_MARGIN, READING_MARGIN, READING_WEIGHTS
    from app.reading.review import DEFAULT_REVIEW_THRESHOLD, ReviewLimits
    from training.evaluate import predict
    from training.reader_fit import fit_default_reader

    result = run(QUICK, tiny, models_dir=tmp_path / "models", report=False, verbose=0,
                 reader_fit="rule", reader_codes=8)  # fmt: skip
    document = json.loads((result.path / "reader.json").read_text())
    assert document["reading_weights"] == dict(READING_WEIGHTS)
    assert (document["count_margin"], document["reading_margin"]) == (COUNT_MARGIN, READING_MARGIN)
    assert document["review_threshold"] == DEFAULT_REVIEW_THRESHOLD
    assert document["reader_fitted_by"].startswith("the service's defaults")
    assert "--review-rule --count 8 --seed 95" in document["review_rule_fitted_by"]
    calibration = load_calibration(result.path)
    assert calibration.notes == ()
    assert calibration.review == ReviewLimits(**document["review_rule"])
    # The very rule `tune_reader --review-rule --count 8 --seed 95` fits for this model.
    signature = load_signature(result.path)
    again = fit_default_reader(
        tiny.train_images,
        tiny.train_labels,
        lambda batch: predict(signature, batch)[0],
        count=8,
        seed=95,
    )
    assert document["review_rule"] == again["review_rule"]


def test_the_default_reader_step_fits_as_the_bundled_rules_were() -> None:
    from training.calibrate import REVIEW_RULE_CODES, REVIEW_RULE_SEED

    bundled = Path(__file__).parents[2] / "models" / "mnist"
    for version in ("1", "2"):
        document = json.loads((bundled / version / "reader.json").read_text())
        assert (
            f"--review-rule --count {REVIEW_RULE_CODES} --seed {REVIEW_RULE_SEED}"
            in document["review_rule_fitted_by"]
        ), version


def test_an_unknown_reader_fit_stops_before_training(tiny: MnistData, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="rule, full, none"):
        run(QUICK, tiny, models_dir=tmp_path / "models", report=False, reader_fit="all")
    assert not (tmp_path / "models").exists()


def test_cli_reader_fit_choices() -> None:
    parse = training.train.parse_args
    assert (parse([]).reader_fit, parse([]).reader_codes) == ("rule", None)
    assert parse(["--reader-fit", "full", "--reader-codes", "300"]).reader_fit == "full"
    assert parse(["--reader-fit", "full", "--reader-codes", "300"]).reader_codes == 300
    assert parse(["--reader-fit", "none"]).reader_fit == "none"
    assert parse(["--no-reader-fit"]).reader_fit == "none"  # the former flag still works
    with pytest.raises(SystemExit):
        parse(["--reader-fit", "everything"])


def test_calibrate_cli_rewrites_a_versions_reader_by_mode(
    exported: training.train.TrainingRun,
    tiny: MnistData,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import shutil

    import training.calibrate
    import training.data
    from app.reading.reader import READING_WEIGHTS

    version = tmp_path / "1"
    shutil.copytree(exported.path, version)
    monkeypatch.setattr(training.data, "load_mnist", lambda *a, **k: tiny)
    assert training.calibrate.main([str(version), "--reader-codes", "4"]) == 0
    document = json.loads((version / "reader.json").read_text())
    assert document["reading_weights"] == dict(READING_WEIGHTS)
    assert "--count 4 --seed 95" in document["review_rule_fitted_by"]
    assert training.calibrate.main([str(version), "--reader-fit", "none"]) == 0
    document = json.loads((version / "reader.json").read_text())
    assert "reading_weights" not in document
    assert "review_rule" not in document
    assert "threshold" in document["likeness"]
