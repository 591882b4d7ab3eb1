"""Training augmentation: what the transforms do to strokes, and which split gets the copies."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

import training.train
from tests.training.synthetic import make_dataset
from training.augment import augment_split, dilate, thin
from training.data import MnistData
from training.recipes import DEFAULT, SEED
from training.train import main, run


def _stroke(width: int) -> npt.NDArray[np.uint8]:
    """One 28x28 image: a vertical bar ``width`` pixels wide, full intensity, rows 4..23."""
    image = np.zeros((28, 28), np.uint8)
    left = 14 - width // 2
    image[4:24, left : left + width] = 255
    return image


def _columns_with_ink(image: npt.NDArray[np.uint8]) -> int:
    return int((image[14] > 0).sum())


def test_dilate_widens_a_stroke_by_one_pixel_each_side() -> None:
    images = np.stack([_stroke(2), _stroke(3)])
    out = dilate(images)
    assert out.shape == images.shape
    assert out.dtype == np.uint8
    assert [_columns_with_ink(image) for image in out] == [4, 5]
    assert (out >= images).all()  # nothing is taken away
    # Grows the bar's length too: one row above and below.
    assert out[0, 3].any()
    assert out[0, 24].any()
    assert not out[0, 2].any()


def test_thin_dims_the_stroke_edges_but_keeps_the_stroke() -> None:
    images = np.stack([_stroke(1), _stroke(2), _stroke(4)])
    out = thin(images)
    assert out.shape == images.shape
    assert out.dtype == np.uint8
    assert (out <= images).all()  # never adds ink
    for before, after in zip(images, out, strict=True):
        # Every inked pixel keeps at least half its value: a hairline survives, dimmed.
        inked = before > 0
        assert (after[inked] >= before[inked] // 2).all()
        assert not after[~inked].any()
    # A 4-pixel bar keeps its two middle columns at full value and halves its edges.
    assert out[2, 14].tolist()[12:16] == [127, 255, 255, 127]
    # A hairline is dimmed along its whole length, not erased.
    assert (out[0, 5:23, 14] == 127).all()


def test_blank_images_are_unchanged() -> None:
    blank = np.zeros((3, 28, 28), np.uint8)
    assert not dilate(blank).any()
    assert not thin(blank).any()


def test_inputs_are_not_modified_and_bad_input_is_refused() -> None:
    images = np.stack([_stroke(3)])
    copy = images.copy()
    dilate(images)
    thin(images)
    np.testing.assert_array_equal(images, copy)
    with pytest.raises(ValueError, match="uint8"):
        dilate(images.astype(np.float32))
    with pytest.raises(ValueError, match="shape"):
        thin(images[0])


def test_augment_split_triples_the_split_with_its_labels() -> None:
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (40, 28, 28), dtype=np.uint8)
    labels = (np.arange(40) % 10).astype(np.uint8)
    out_images, out_labels = augment_split(images, labels, ("thickness",), seed=0)
    assert out_images.shape == (120, 28, 28)
    assert out_images.dtype == np.uint8
    assert out_labels.shape == (120,)
    np.testing.assert_array_equal(np.bincount(out_labels), 3 * np.bincount(labels))
    # The originals and both copies, each with its own label, shuffled together.
    expected = {
        (image.tobytes(), int(label))
        for part in (images, dilate(images), thin(images))
        for image, label in zip(part, labels, strict=True)
    }
    got = {
        (image.tobytes(), int(label)) for image, label in zip(out_images, out_labels, strict=True)
    }
    assert got == expected
    assert not np.array_equal(out_images[:40], images), "shuffled, not appended in blocks"


def test_augment_split_is_deterministic_per_seed() -> None:
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, (30, 28, 28), dtype=np.uint8)
    labels = (np.arange(30) % 10).astype(np.uint8)
    first = augment_split(images, labels, ("thickness",), seed=0)
    second = augment_split(images, labels, ("thickness",), seed=0)
    other = augment_split(images, labels, ("thickness",), seed=1)
    np.testing.assert_array_equal(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])
    assert not np.array_equal(first[0], other[0])


def test_augment_split_without_names_and_with_unknown_names() -> None:
    images = np.zeros((5, 28, 28), np.uint8)
    labels = np.arange(5, dtype=np.uint8)
    same_images, same_labels = augment_split(images, labels, (), seed=0)
    assert same_images is images
    assert same_labels is labels
    with pytest.raises(ValueError, match="unknown augmentation 'blur'"):
        augment_split(images, labels, ("blur",), seed=0)
    with pytest.raises(ValueError, match="5 images but 4 labels"):
        augment_split(images, labels[:4], ("thickness",), seed=0)


def test_recipes_default_adopts_thickness_seed_has_none() -> None:
    assert DEFAULT.augmentation == ("thickness",)
    assert SEED.augmentation == ()


# -- the split rules inside a training run -------------------------------------------------------


def test_run_augments_the_fit_split_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data: MnistData = make_dataset(tmp_path / "idx", n_train=120, n_test=30).data
    seen: dict[str, object] = {}
    real_fit = training.train.fit_classifier

    def spy(recipe, features, labels, validation=None, **kwargs):  # type: ignore[no-untyped-def]
        seen["fit_rows"] = len(features)
        seen["fit_labels"] = np.bincount(labels, minlength=10)
        seen["validation_rows"] = None if validation is None else len(validation[0])
        return real_fit(recipe, features, labels, validation, **kwargs)

    monkeypatch.setattr(training.train, "fit_classifier", spy)
    recipe = DEFAULT.with_overrides(epochs=1, batch_size=32, validation_size=20)
    result = run(recipe, data, models_dir=tmp_path / "models", report=False, verbose=0)

    n_fit = 120 - 20
    assert seen["fit_rows"] == 3 * n_fit
    expected = 3 * np.bincount(data.train_labels[:n_fit], minlength=10)
    np.testing.assert_array_equal(seen["fit_labels"], expected)
    assert seen["validation_rows"] == 20  # the validation split is not augmented
    metrics = result.metrics
    assert metrics["hyperparameters"]["augmentation"] == ["thickness"]
    # Train, validation and test evaluations are of the original digits.
    assert metrics["train"]["num_examples"] == n_fit
    assert metrics["validation"]["num_examples"] == 20
    assert metrics["test"]["num_examples"] == 30


def test_cli_turns_the_augmentation_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data: MnistData = make_dataset(tmp_path / "idx", n_train=100, n_test=20).data
    monkeypatch.setattr(training.train, "load_mnist", lambda *a, **k: data)
    rows: list[int] = []
    real_fit = training.train.fit_classifier

    def spy(recipe, features, labels, validation=None, **kwargs):  # type: ignore[no-untyped-def]
        rows.append(len(features))
        return real_fit(recipe, features, labels, validation, **kwargs)

    monkeypatch.setattr(training.train, "fit_classifier", spy)
    models = tmp_path / "models"
    common = ["--models-dir", str(models), "--epochs", "1", "--validation-size", "20",
              "--no-report", "--no-reader-fit"]  # fmt: skip
    assert main([*common, "--augmentation", "none"]) == 0
    assert main(common) == 0
    assert rows == [80, 240]
    first = json.loads((models / "1" / "metrics.json").read_text())
    second = json.loads((models / "2" / "metrics.json").read_text())
    assert first["hyperparameters"]["augmentation"] == []
    assert second["hyperparameters"]["augmentation"] == ["thickness"]
