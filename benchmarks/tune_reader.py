"""Print what the reader fit (training/reader_fit.py) learns: reading weights, review rule.

The command line of :mod:`training.reader_fit`, for the newest version under ``--models-dir``:
it learns the reading weights (app/reading/reader.py READING_WEIGHTS) with the averaged
structured perceptron on synthetic postal codes of MNIST **training** digits (never test
digits, which the benchmark uses), read with the same functions as ``POST /recognize`` and the
served model. Usage::

    python -m benchmarks.tune_reader --count 3000 --seed 21

It prints the learned weights (paste them into READING_WEIGHTS) and the whole-code accuracy on
held-out training-digit codes, for the current weights and the learned ones.
``--review-rule --count N --seed S`` prints instead the review rule the training pipeline's
default reader step fits with the same count and seed (``fit_default_reader``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import numpy.typing as npt

from app.reading.reader import FEATURES, READING_WEIGHTS
from app.serving.loaded import load_version
from app.serving.model_dir import versions_on_disk
from training.data import load_mnist
from training.postal_codes import generate_postal_codes
from training.reader_fit import (
    MAX_DIGITS,
    accuracy,
    count_margin_effect,
    fit_default_reader,
    learn,
    read_codes,
)


def main(argv: list[str] | None = None) -> int:
    """Learn and print the reading weights (or the review rule)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=3000, help="training codes")
    parser.add_argument("--held-out", type=int, default=1000, help="codes to check the result")
    parser.add_argument("--seed", type=int, default=21)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--data-dir", default=None, help="MNIST directory ($MNIST_DATA_DIR)")
    parser.add_argument("--models-dir", type=Path, default=Path("models/mnist"))
    parser.add_argument(
        "--review-rule",
        action="store_true",
        help="fit only the review rule (app.reading.review) for the current weights, on scan codes",
    )
    args = parser.parse_args(argv)

    data = load_mnist(args.data_dir, progress=False)
    versions = versions_on_disk(args.models_dir)
    if not versions:
        parser.error(f"no model version under {args.models_dir}")
    newest = versions[0]
    model = load_version(args.models_dir / str(newest), newest)
    images, labels = data.train_images, data.train_labels
    train_codes = generate_postal_codes(images, labels, args.count, seed=args.seed)
    held_codes = generate_postal_codes(images, labels, args.held_out, seed=args.seed + 1)

    def predict(batch: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
        return model.predict(batch)[0]

    if args.review_rule:
        settings = fit_default_reader(images, labels, predict, count=args.count, seed=args.seed)
        print(settings["review_rule"])
        return 0
    train = read_codes(train_codes, predict, max_digits=MAX_DIGITS)
    held = read_codes(held_codes, predict, max_digits=MAX_DIGITS)
    covered = sum(e.right is not None for e in train) / len(train_codes)
    print(f"model version {newest}; right reading among the candidates: {covered:.1%}")

    current = np.array([READING_WEIGHTS[name] for name in FEATURES])
    learned = learn(train, args.epochs, args.seed)
    for name, weights in (("current", current), ("learned", learned)):
        print(
            f"{name}: whole-code accuracy train {accuracy(train, weights, len(train_codes)):.2%}"
            f", held out {accuracy(held, weights, len(held_codes)):.2%}"
        )
    print(
        "\nCOUNT_MARGIN on held-out codes with the learned weights (accepted / error among them):"
    )
    for threshold in (0.9, 0.95):
        cells = []
        for margin in (0.0, 1.0, 2.0, 3.0):
            accepted, wrong = count_margin_effect(held, learned, threshold, margin)
            cells.append(f"margin {margin:g}: {accepted / len(held_codes):.1%} / {wrong:.2%}")
        print(f"  threshold {threshold}: " + ", ".join(cells))
    print("READING_WEIGHTS = {")
    for name, value in zip(FEATURES, learned, strict=True):
        print(f'    "{name}": {value:.3g},')
    print("}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
