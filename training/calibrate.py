"""Fit the reader's calibration for one model version and write it beside its SavedModel.

What the service's string reader and review rule use besides the model's probabilities, fitted
on MNIST-derived data only (never on the real scans, which are for measuring):

* the digit-likeness basis (``likeness.npz``): per digit class, the mean and the first
  principal components of MNIST training digits, float16 arrays ``means`` [10, 784] and
  ``components`` [10, k, 784] (orthonormal rows, pixels in 0..1);
* the likeness threshold: the unlikeness (relative residual of a digit in the subspace of the
  class this version reads it as) that this share of held-out MNIST training digits stays
  below; a candidate above it is not digit-like and sends the reading to review;
* the ink mass range of each class (mean pixel value, the same central share of held-out
  digits), stored in the basis file as ``mass_low`` and ``mass_high`` [10]: a blob can lie
  near a class's subspace (a filled disc near the 0s) but has far more ink than its digits;
* ``reader.json``: the threshold and how it was found, plus the reader settings
  (:func:`fit_reader_settings`, which runs :mod:`training.reader_fit`), by ``--reader-fit``:
  ``rule`` (the default) keeps the service's default reading weights, count and reading margins
  and review threshold and fits this version's review rule (``app.reading.review``) on scan codes
  of MNIST training digits; ``full`` fits all of them on synthetic codes; ``none`` writes no
  reader settings (the version is served with the defaults).

Both files are written in the format ``app.reading`` defines and reads
(:func:`app.reading.calibration.write_calibration`), and the threshold is measured with the
service's own :func:`app.reading.likeness.unlikeness`.

Usage::

    python -m training.calibrate models/mnist/2 [--reader-fit {rule,full,none}] [--reader-codes N]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from app.reading.calibration import write_calibration
from app.reading.likeness import LikenessBasis, as_saved, unlikeness
from training.reader_fit import (
    REVIEW_RULE_CODES,
    REVIEW_RULE_SEED,
    fit_default_reader,
    fit_reader,
)

__all__ = [
    "DEFAULT_READER_FIT",
    "HOLDOUT",
    "LIKENESS_QUANTILE",
    "RANK",
    "READER_FIT_CODES",
    "READER_FIT_MODES",
    "REVIEW_RULE_CODES",
    "REVIEW_RULE_SEED",
    "add_reader_fit_arguments",
    "calibrate_version",
    "check_reader_fit",
    "fit_basis",
    "fit_reader_settings",
    "holdout_size",
]

#: Principal components per class: enough to explain most of a class's variation, too few to
#: reproduce a line or a blob that is not one of its digits.
RANK: Final = 30
#: Share of held-out MNIST training digits that must pass as digit-like.
LIKENESS_QUANTILE: Final = 0.99
# The basis is fitted on the first part of the training digits, the threshold set on the rest
# (at most this many, and at most a fifth).
HOLDOUT: Final = 10_000


def holdout_size(train_count: int) -> int:
    """How many of the last training digits set the threshold."""
    return max(1, min(HOLDOUT, train_count // 5))


#: What the reader step fits (``--reader-fit``). ``rule``, the default, keeps the service's
#: reading weights, margins and review threshold (fitted for the first version on many more
#: codes, and measured on the real sets) and fits only the version's review rule; ``full``
#: refits them all, but chooses the threshold and margins on a few hundred codes, which proved
#: noisy: its choice measured worse on the real scans than the defaults (see
#: docs/real-scans.md). ``none`` leaves the reader defaults.
READER_FIT_MODES: Final = ("rule", "full", "none")
DEFAULT_READER_FIT: Final = "rule"
#: Synthetic codes per part of the full fit (weights, margins and threshold, review rule):
#: enough for stable weights, small enough that training stays a few minutes.
READER_FIT_CODES: Final = 300
# The default step's review-rule fit runs on REVIEW_RULE_CODES scan-like codes of seed
# REVIEW_RULE_SEED (training.reader_fit): those that fitted the bundled versions' rules.


def _vectors(images: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
    flat: npt.NDArray[np.float32] = images.reshape(images.shape[0], -1).astype(np.float32) / 255.0
    return flat


def fit_basis(
    images: npt.NDArray[np.uint8], labels: npt.NDArray[np.integer[Any]], rank: int = RANK
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """Per-class mean [10, 784] and ``rank`` principal components [10, rank, 784]."""
    x = _vectors(images)
    y = np.asarray(labels, dtype=np.int64)
    means = np.zeros((10, x.shape[1]), np.float32)
    comps = np.zeros((10, rank, x.shape[1]), np.float32)
    for digit in range(10):
        members = x[y == digit]
        if members.shape[0] <= rank:
            raise ValueError(f"class {digit} has {members.shape[0]} images, need more than {rank}")
        means[digit] = members.mean(axis=0)
        centred = (members - means[digit]).astype(np.float64)
        # The covariance's top eigenvectors are the principal directions; 784×784 whatever
        # the number of images.
        _, vectors = np.linalg.eigh(centred.T @ centred)
        comps[digit] = vectors[:, ::-1][:, :rank].T.astype(np.float32)
    return means, comps


def calibrate_version(
    directory: Path,
    train_images: npt.NDArray[np.uint8],
    train_labels: npt.NDArray[np.integer[Any]],
    predicted: npt.NDArray[np.integer[Any]],
    *,
    reader: Mapping[str, object] | None = None,
) -> dict[str, object]:
    """Fit and write ``likeness.npz`` and ``reader.json`` into ``directory``; return the JSON.

    ``predicted`` is this version's reading of the last held-out training digits (the
    ``len(predicted)`` last images), so the threshold is the likeness of digits as this model
    reads them. ``reader`` adds reader settings (weights, margins, review threshold) that were
    fitted for this version elsewhere.
    """
    held = len(predicted)
    fit_images, fit_labels = train_images[:-held], train_labels[:-held]
    smallest = int(np.bincount(np.asarray(fit_labels, np.int64), minlength=10).min())
    # A tiny training set (tests) gets as many components as its smallest class allows.
    rank = min(RANK, smallest - 1)
    if rank < 1:
        raise ValueError(f"too few training digits to calibrate: a class has {smallest}")
    means, comps = fit_basis(fit_images, fit_labels, rank)
    # How much ink a digit of each class has (mean pixel value): a blob has far more than any
    # digit's shape and can still be close to a subspace (a filled disc to the 0s).
    mass = _vectors(train_images[-held:]).mean(axis=1)
    tail = (1.0 - LIKENESS_QUANTILE) / 2
    classes = np.asarray(predicted, dtype=np.int64)
    # A class this version never predicts among the held-out digits gets the overall range.
    members = [mass[classes == d] if (classes == d).any() else mass for d in range(10)]
    mass_low = np.array([np.quantile(m, tail) for m in members], np.float32)
    mass_high = np.array([np.quantile(m, 1 - tail) for m in members], np.float32)
    # The threshold is measured with the basis as the service will load it (float16).
    basis = as_saved(LikenessBasis(means, comps, mass_low, mass_high))
    scores = unlikeness(basis, train_images[-held:], classes)
    threshold = float(np.quantile(scores, LIKENESS_QUANTILE))
    return write_calibration(
        directory,
        basis,
        fitted_on=(
            f"MNIST training digits: basis on the first {len(fit_images)}, threshold on the "
            f"last {held} as this version reads them"
        ),
        quantile=LIKENESS_QUANTILE,
        threshold=round(threshold, 4),
        reader=reader,
    )


def check_reader_fit(mode: str) -> None:
    """Raise ValueError unless ``mode`` is one of :data:`READER_FIT_MODES`."""
    if mode not in READER_FIT_MODES:
        raise ValueError(f"reader fit {mode!r}: expected one of {', '.join(READER_FIT_MODES)}")


def fit_reader_settings(
    train_images: npt.NDArray[np.uint8],
    train_labels: npt.NDArray[np.integer[Any]],
    predict: Callable[[npt.NDArray[np.uint8]], npt.NDArray[np.float32]],
    *,
    mode: str = DEFAULT_READER_FIT,
    count: int | None = None,
) -> dict[str, object] | None:
    """The reader settings of a version (for ``reader.json``), fitted on synthetic codes of
    these MNIST training digits as ``predict`` (the version's model) reads them.

    ``mode`` is one of :data:`READER_FIT_MODES`: ``rule`` (the service's default weights,
    margins and review threshold, the review rule fitted on ``count`` scan-like codes, default
    :data:`REVIEW_RULE_CODES`, seed :data:`REVIEW_RULE_SEED`), ``full`` (everything fitted on
    ``count`` codes per part, default :data:`READER_FIT_CODES`) or ``none`` (None: no settings).

    The fit reads codes with the service's own segmentation (``app.reading``) drawn by the
    synthetic code generators (``training.postal_codes``, ``training.scan_codes``).
    """
    check_reader_fit(mode)
    if mode == "none":
        return None
    started = time.perf_counter()
    settings: dict[str, object]
    if mode == "full":
        settings = fit_reader(
            train_images, train_labels, predict, count=READER_FIT_CODES if count is None else count
        )
    else:
        settings = fit_default_reader(
            train_images,
            train_labels,
            predict,
            count=REVIEW_RULE_CODES if count is None else count,
            seed=REVIEW_RULE_SEED,
        )
    settings["reader_fit_seconds"] = round(time.perf_counter() - started, 1)
    return settings


def add_reader_fit_arguments(parser: argparse.ArgumentParser) -> None:
    """``--reader-fit {rule,full,none}``, ``--no-reader-fit`` (= none) and ``--reader-codes``."""
    parser.add_argument(
        "--reader-fit",
        choices=READER_FIT_MODES,
        default=DEFAULT_READER_FIT,
        help="the version's reader settings: rule (default) keeps the service's reading "
        "weights, margins and review threshold and fits the review rule; full fits them all "
        "(threshold and margins on a few hundred codes: noisy); none writes none",
    )
    parser.add_argument(
        "--no-reader-fit",
        dest="reader_fit",
        action="store_const",
        const="none",
        help="the same as --reader-fit none",
    )
    parser.add_argument(
        "--reader-codes",
        type=int,
        default=None,
        help=f"synthetic codes per part of the reader fit (default: {REVIEW_RULE_CODES} "
        f"scan-like codes for rule, {READER_FIT_CODES} per part for full)",
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Calibrate an existing version directory (its SavedModel reads the held-out digits)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("version_dir", type=Path)
    parser.add_argument("--data-dir", default=None, help="MNIST directory ($MNIST_DATA_DIR)")
    parser.add_argument(
        "--reader",
        type=Path,
        default=None,
        help="JSON of reader settings fitted elsewhere (then no reader fit runs)",
    )
    add_reader_fit_arguments(parser)
    args = parser.parse_args(argv)

    from training.data import load_mnist
    from training.evaluate import predict
    from training.export import load_signature

    data = load_mnist(args.data_dir, progress=False)
    held = holdout_size(len(data.train_images))
    signature = load_signature(args.version_dir)
    _, digits = predict(signature, data.train_images[-held:])
    reader = json.loads(args.reader.read_text("utf-8")) if args.reader else None
    if reader is None:
        reader = fit_reader_settings(
            data.train_images,
            data.train_labels,
            lambda batch: predict(signature, batch)[0],
            mode=args.reader_fit,
            count=args.reader_codes,
        )
    document = calibrate_version(
        args.version_dir, data.train_images, data.train_labels, digits, reader=reader
    )
    print(json.dumps(document["likeness"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
