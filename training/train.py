"""Train the 784->10 softmax digit classifier and export it as a new model version.

Usage::

    python -m training --recipe default                  # -> models/mnist/<next free version>/
    mnist-train --recipe seed --data-dir path/to/mnist --epochs 3 --version 7
    python -m training --extra-data reviewed/digits:2    # MNIST plus labelled real digits

MNIST comes from ``--data-dir``, else ``$MNIST_DATA_DIR``, else a verified download cache
(see :mod:`training.data`).

The story of a run, in the order of :func:`run`:

1. data: the verified MNIST arrays; the last ``validation_size`` training images are held out
   for learning curves (the test set is only ever used for the final evaluation); labelled real
   digits (``--extra-data``, :mod:`training.extra_data`: reviewed corrections exported by
   ``python -m training export-reviews``, or any set in that layout), normalized as the service
   normalizes a digit, join the fit split with their set's sample weight, except their fixed
   held-out part, which never enters the fit;
2. augment and preprocess: the recipe's augmentation (:mod:`training.augment`) adds copies of
   the fit split's digits; :func:`training.preprocess.preprocess_array` turns every image into
   784 floats once, with the same TF function the export will contain;
3. model and fit: one dense softmax layer, fitted by Keras with the recipe's optimizer;
4. export: the kernel and bias, with the preprocessing, become a SavedModel in a temporary
   directory beside the target;
5. evaluate: the exported SavedModel is reloaded and evaluated through its signature, exactly as
   the server will call it, on the MNIST test set and, with extra data, on its held-out digits
   beside the version served from the models directory (:mod:`training.real_digits`: what the
   promotion gate compares); metrics.json and the report figures are written from that;
6. publish: the temporary directory is renamed to ``<models_dir>/<version>``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from training import preprocess as preprocessing_module
from training.augment import AUGMENTATIONS, augment_split
from training.calibrate import (
    add_reader_fit_arguments,
    calibrate_version,
    check_reader_fit,
    fit_reader_settings,
    holdout_size,
)
from training.data import MnistData, MnistError, load_mnist
from training.environment import library_versions, machine_info
from training.evaluate import Evaluation, evaluate_signature, predict
from training.export import SIGNATURE_SPEC, load_signature, save_saved_model, write_version
from training.extra_data import ExtraSet, held_out_part, load_extra_sets
from training.model import FitResult, fit_classifier
from training.preprocess import preprocess_array
from training.real_digits import measure_real_digits, served_baseline
from training.recipes import RECIPES, Recipe

DEFAULT_MODELS_DIR: Final = Path("models/mnist")


@dataclass(frozen=True)
class TrainingRun:
    """What a run produced: the version directory and the metrics written into it."""

    path: Path
    version: int
    metrics: dict[str, Any]


def run(
    recipe: Recipe,
    data: MnistData,
    *,
    models_dir: Path = DEFAULT_MODELS_DIR,
    version: int | None = None,
    report: bool = True,
    verbose: int | str = "auto",
    load_seconds: float = 0.0,
    reader_fit: str = "none",
    reader_codes: int | None = None,
    extra: Sequence[ExtraSet] = (),
) -> TrainingRun:
    """Train ``recipe`` on ``data`` and publish ``models_dir/<version>`` (next free if None).

    ``extra``: labelled real digits (:func:`training.extra_data.load_extra_sets`); their
    non-held-out digits are fitted with their set's weight, their held-out digits measured,
    with the version served from ``models_dir``, into ``metrics.json``'s ``real_digits``.

    ``reader_fit`` chooses the version's reader settings
    (:func:`training.calibrate.fit_reader_settings`, on ``reader_codes`` synthetic codes of its
    training digits, None for that step's default): ``rule`` (the command line's default) keeps
    the service's reading weights, margins and review threshold and fits the review rule,
    ``full`` fits them all, ``none`` (here the default) leaves the reader defaults.
    """
    started = time.perf_counter()
    check_reader_fit(reader_fit)  # before the fit, not after it

    # 1. Data: a validation split carved from the end of the training set.
    n_val = recipe.validation_size
    if not 0 <= n_val < len(data.train_images):
        raise ValueError(
            f"validation_size {n_val} must be in [0, {len(data.train_images)}) training images"
        )
    n_fit = len(data.train_images) - n_val
    fit_images, fit_labels = data.train_images[:n_fit], data.train_labels[:n_fit]
    val_images, val_labels = data.train_images[n_fit:], data.train_labels[n_fit:]

    # 2. Augment the fit split only (validation, test and the reader's calibration keep the
    # original digits), then preprocess once, with the function the SavedModel will run.
    tick = time.perf_counter()
    augmented_images, augmented_labels = augment_split(
        fit_images, fit_labels, recipe.augmentation, recipe.seed
    )
    sample_weight = None
    if any(len(s.fit_labels) for s in extra):
        augmented_images, augmented_labels, sample_weight = add_extra_digits(
            augmented_images, augmented_labels, extra, recipe
        )
    fit_features = preprocess_array(augmented_images, recipe.preprocessing)
    val_features = preprocess_array(val_images, recipe.preprocessing) if n_val else None
    preprocess_seconds = time.perf_counter() - tick

    # 3. Model and fit.
    validation = None if val_features is None else (val_features, val_labels)
    fit = fit_classifier(
        recipe,
        fit_features,
        augmented_labels,
        validation,
        sample_weight=sample_weight,
        verbose=verbose,
    )

    # 4-6. Export, evaluate the export, write metrics and report, publish atomically.
    def build(directory: Path, chosen_version: int) -> None:
        tick = time.perf_counter()
        save_saved_model(directory, fit.kernel, fit.bias, recipe.preprocessing)
        export_seconds = time.perf_counter() - tick

        tick = time.perf_counter()
        signature = load_signature(directory)
        test = evaluate_signature(signature, data.test_images, data.test_labels)
        train = evaluate_signature(signature, fit_images, fit_labels)
        val = evaluate_signature(signature, val_images, val_labels) if n_val else None
        # The held-out real digits, read by this version and by the one served now.
        real_digits = held_real = None
        if any(len(s.held_labels) for s in extra):
            baseline = served_baseline(models_dir)
            real_digits = measure_real_digits(signature, extra, baseline)
            held_real = evaluate_signature(signature, *held_out_part(extra))
            if real_digits is not None and baseline is not None:
                baseline_test = evaluate_signature(
                    baseline.signature, data.test_images, data.test_labels
                )
                real_digits["baseline"]["test_accuracy"] = baseline_test.accuracy
        evaluate_seconds = time.perf_counter() - tick

        # The reader's calibration for this version (likeness basis and thresholds), from
        # MNIST training digits only, written beside the SavedModel.
        tick = time.perf_counter()
        held = holdout_size(len(data.train_images))
        _, held_digits = predict(signature, data.train_images[-held:])
        reader = fit_reader_settings(
            data.train_images,
            data.train_labels,
            lambda batch: predict(signature, batch)[0],
            mode=reader_fit,
            count=reader_codes,
        )
        calibrate_version(
            directory, data.train_images, data.train_labels, held_digits, reader=reader
        )
        calibrate_seconds = time.perf_counter() - tick

        tick = time.perf_counter()
        if report:
            from training.report import write_report  # matplotlib only when a report is wanted

            write_report(
                directory / "report",
                history=fit.history,
                test=test,
                test_images=data.test_images,
                kernel=fit.kernel,
                preprocessing=recipe.preprocessing,
                title=f"v{chosen_version} ({recipe.name})",
                real_digits=real_digits,
                real_evaluation=held_real,
                real_images=held_out_part(extra)[0],
            )
        report_seconds = time.perf_counter() - tick

        timing = {
            "load_seconds": load_seconds,
            "preprocess_seconds": preprocess_seconds,
            "fit_seconds": fit.fit_seconds,
            "train_seconds": preprocess_seconds + fit.fit_seconds,
            "export_seconds": export_seconds,
            "evaluate_seconds": evaluate_seconds,
            "calibrate_seconds": calibrate_seconds,
            "report_seconds": report_seconds,
            "total_seconds": load_seconds + time.perf_counter() - started,
        }
        metrics = build_metrics(chosen_version, recipe, data, fit, test, train, val, timing)
        if extra:
            metrics["extra_data"] = [s.describe() for s in extra]
            metrics["dataset"]["extra_fit_examples"] = sum(len(s.fit_labels) for s in extra)
            metrics["real_digits"] = real_digits
        (directory / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n", "utf-8")

    path = write_version(models_dir, version, build)
    metrics = json.loads((path / "metrics.json").read_text("utf-8"))
    return TrainingRun(path=path, version=int(path.name), metrics=metrics)


def add_extra_digits(
    images: npt.NDArray[np.uint8],
    labels: npt.NDArray[np.integer[Any]],
    extra: Sequence[ExtraSet],
    recipe: Recipe,
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    """The augmented MNIST fit split with every extra set's fit digits (augmented the same
    way), shuffled together with the recipe's seed, and each example's sample weight."""
    parts_x, parts_y = [images], [np.asarray(labels, np.int64)]
    weights = [np.ones(len(labels), np.float32)]
    for extra_set in extra:
        if not len(extra_set.fit_labels):
            continue
        x, y = augment_split(
            extra_set.fit_images, extra_set.fit_labels, recipe.augmentation, recipe.seed
        )
        parts_x.append(x)
        parts_y.append(np.asarray(y, np.int64))
        weights.append(np.full(len(y), extra_set.weight, np.float32))
    order = np.random.default_rng(recipe.seed).permutation(sum(len(y) for y in parts_y))
    return (
        np.concatenate(parts_x)[order],
        np.concatenate(parts_y)[order],
        np.concatenate(weights)[order],
    )


def build_metrics(
    version: int,
    recipe: Recipe,
    data: MnistData,
    fit: FitResult,
    test: Evaluation,
    train: Evaluation,
    validation: Evaluation | None,
    timing: dict[str, float],
) -> dict[str, Any]:
    """The metrics.json document. The server reads ``version``, ``recipe``, ``created_at``,
    ``test.*``, ``train.accuracy``, ``hyperparameters``, ``timing``, ``dataset``, ``versions``.
    """
    hyperparameters = recipe.hyperparameters()
    if recipe.preprocessing == "moment_normalize":
        hyperparameters["moment_normalize"] = {
            "target_sd_x": preprocessing_module.TARGET_SD_X,
            "target_sd_y": preprocessing_module.TARGET_SD_Y,
            "scale_x_range": list(preprocessing_module.SCALE_X_RANGE),
            "scale_y_range": list(preprocessing_module.SCALE_Y_RANGE),
            "max_shear": preprocessing_module.MAX_SHEAR,
        }
    return {
        "version": version,
        "recipe": recipe.name,
        "description": recipe.description,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "test": {
            **test.summary(),
            "per_class": test.per_class(),
            "confusion_matrix": test.confusion.tolist(),
        },
        "train": train.summary(),
        "validation": validation.summary() if validation is not None else None,
        "hyperparameters": hyperparameters,
        "history": fit.history,
        "timing": {k: round(v, 3) for k, v in timing.items()},
        "dataset": {
            "source": data.source,
            "sha256_uncompressed": data.digests,
            "train_examples": len(train.labels),
            "validation_examples": 0 if validation is None else len(validation.labels),
            "test_examples": len(test.labels),
        },
        "versions": library_versions(),
        "machine": machine_info(),
        "model": {
            "format": "TensorFlow SavedModel (plain tf.Module: Keras is not needed to load it)",
            "architecture": "dense 784 -> 10, softmax",
            "preprocessing": recipe.preprocessing,
            "signature": SIGNATURE_SPEC,
        },
    }


def format_summary(result: TrainingRun) -> str:
    """The end-of-run table: accuracy, loss, time and where the version was written."""
    m = result.metrics
    timing, hp = m["timing"], m["hyperparameters"]
    rows = [
        ("recipe", f"{m['recipe']}: {m['description']}"),
        (
            "hyperparameters",
            f"{hp['preprocessing']}, {hp['optimizer']} lr={hp['learning_rate']:g} "
            f"({hp['lr_schedule']}), batch {hp['batch_size']}, {hp['epochs']} epochs, "
            f"l2={hp['l2']:g}, seed {hp['seed']}, "
            f"augmentation {'+'.join(hp.get('augmentation') or ['none'])}",
        ),
        ("test accuracy", f"{m['test']['accuracy']:.4f}  ({m['test']['num_examples']} images)"),
        ("test loss", f"{m['test']['loss']:.4f}"),
        ("train accuracy", f"{m['train']['accuracy']:.4f}  ({m['train']['num_examples']} images)"),
    ]
    if m["validation"]:
        rows.append(("validation accuracy", f"{m['validation']['accuracy']:.4f}"))
    for extra in m.get("extra_data") or []:
        rows.append(
            (
                "extra data",
                f"{extra['name']}: {extra['fit_items']} fitted (weight {extra['weight']:g}), "
                f"{extra['held_out_items']} held out, sha256 {extra['sha256'][:12]}",
            )
        )
    real = m.get("real_digits")
    if real:
        baseline = real.get("baseline")
        versus = "no served version to compare with"
        if baseline:
            versus = (
                f"version {baseline['version']} (served): {baseline['accuracy']:.4f}, "
                f"test accuracy {baseline['test_accuracy']:.4f}"
            )
        rows.append(
            ("real-digit accuracy", f"{real['accuracy']:.4f}  ({real['items']} held out; {versus})")
        )
    rows += [
        (
            "training time",
            f"{timing['train_seconds']:.1f} s (preprocess {timing['preprocess_seconds']:.1f} s "
            f"+ fit {timing['fit_seconds']:.1f} s)",
        ),
        ("total time", f"{timing['total_seconds']:.1f} s (load, export, evaluation, report)"),
        ("written", f"{result.path}  (version {result.version})"),
    ]
    width = max(len(name) for name, _ in rows)
    rule = "-" * (width + 2 + max(len(value) for _, value in rows))
    lines = [rule, *(f"{name.ljust(width)}  {value}" for name, value in rows), rule]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line; unset hyperparameters keep the recipe's values."""
    parser = argparse.ArgumentParser(
        prog="python -m training",
        description="Train the MNIST 784->10 softmax classifier and export a model version. "
        "`python -m training export-reviews --help`: the review queue's answers as labelled "
        "data for --extra-data.",
    )
    parser.add_argument(
        "--recipe",
        choices=sorted(RECIPES),
        default="default",
        help="default: the tuned recipe (default); seed: the original notebook",
    )
    parser.add_argument(
        "--data-dir",
        help="directory with the four MNIST .gz files (default: $MNIST_DATA_DIR, else download)",
    )
    parser.add_argument(
        "--models-dir",
        type=Path,
        default=DEFAULT_MODELS_DIR,
        help=f"where versions live (default: {DEFAULT_MODELS_DIR})",
    )
    parser.add_argument("--version", type=int, help="version number (default: next free)")
    keep = "(default: the recipe's)"
    parser.add_argument("--epochs", type=int, help=f"passes over the training set {keep}")
    parser.add_argument("--batch-size", type=int, help=f"examples per step {keep}")
    parser.add_argument("--learning-rate", type=float, help=f"initial learning rate {keep}")
    parser.add_argument("--seed", type=int, help=f"random seed {keep}")
    parser.add_argument("--validation-size", type=int, help=f"last training images held out {keep}")
    parser.add_argument(
        "--augmentation",
        choices=["none", *sorted(AUGMENTATIONS)],
        help=f"copies of the training digits added before preprocessing {keep}",
    )
    parser.add_argument(
        "--extra-data",
        metavar="DIR[:WEIGHT]",
        nargs="+",
        action="extend",
        default=[],
        help="labelled real digits beside MNIST: a folder of PNG files with labels.csv "
        "(filename,label[,source]; with boxes.json, strings are cut by their boxes), such as "
        "`python -m training export-reviews`' digits/; its held-out fifth is never fitted and "
        "measures this version beside the served one (metrics.json real_digits). WEIGHT "
        "(default 1) is each digit's sample weight against an MNIST digit's; 0 only measures",
    )
    parser.add_argument("--no-report", action="store_true", help="skip the PNG report")
    add_reader_fit_arguments(parser)
    return parser.parse_args(argv)


def _augmentation(choice: str | None) -> tuple[str, ...] | None:
    """``--augmentation``: None keeps the recipe's, ``none`` turns it off."""
    if choice is None:
        return None
    return () if choice == "none" else (choice,)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point (``python -m training``, ``mnist-train``)."""
    args = parse_args(argv)
    if not args.no_report and importlib.util.find_spec("matplotlib") is None:
        # Before the data is read and the model fitted: finding out after a full run wastes it.
        print(
            "error: the PNG report needs matplotlib, which is not installed (it comes with the "
            "train extra): run `make train`, or `.venv/bin/pip install -e '.[train]'`, or pass "
            "--no-report to train without the report.",
            file=sys.stderr,
        )
        return 2
    recipe = RECIPES[args.recipe].with_overrides(
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        seed=args.seed,
        validation_size=args.validation_size,
        augmentation=_augmentation(args.augmentation),
    )
    try:
        tick = time.perf_counter()
        extra = load_extra_sets(args.extra_data)  # before MNIST: a bad folder stops at once
        data = load_mnist(args.data_dir)
        load_seconds = time.perf_counter() - tick
        result = run(
            recipe,
            data,
            models_dir=args.models_dir,
            version=args.version,
            report=not args.no_report,
            load_seconds=load_seconds,
            reader_fit=args.reader_fit,
            reader_codes=args.reader_codes,
            extra=extra,
        )
    except (MnistError, FileExistsError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_summary(result))
    return 0
