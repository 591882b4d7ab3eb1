"""Learn the reading weights of app/segmentation.py (READING_WEIGHTS) from synthetic codes.

The reader picks, among all ways of cutting the ink into digits, the one with the highest score,
a linear function of named features (``app.segmentation.FEATURES``). This script learns the
weights with an averaged structured perceptron: for every training code, the best-scoring
reading is compared with the right one (the candidates that match the digits' true boxes), and
the weights move toward the features of the right one when they differ.

The codes are built from MNIST **training** digits (never test digits, which the benchmark uses)
and read with the same functions as ``POST /recognize`` and the served model. Usage::

    python -m benchmarks.tune_reader --count 3000 --seed 21

It prints the learned weights (paste them into READING_WEIGHTS) and the whole-code accuracy on
held-out training-digit codes, for the current weights and the learned ones.
"""

from __future__ import annotations

import argparse
import io
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from PIL import Image

from app.core.errors import ApiError
from app.model_store import LoadedModel, load_version, versions_on_disk
from app.segmentation import (
    FEATURES,
    READING_WEIGHTS,
    Lattice,
    best_partition,
    choose_reading,
    find_candidates,
    normalize_candidates,
    reading_features,
)
from benchmarks.postal_codes import Box, PostalCode, generate_postal_codes

# A candidate matches a true digit when their boxes overlap this much (intersection / union).
MATCH_IOU = 0.5


@dataclass(frozen=True)
class Example:
    """One code, read up to the model: the lattice, its features, and the right reading."""

    truth: str
    lattice: Lattice
    probabilities: npt.NDArray[np.float32]
    features: npt.NDArray[np.float64]
    right: list[int] | None


def iou(a: Box, b: Box) -> float:
    """Intersection over union of two boxes."""
    ix = max(0, min(a.x + a.width, b.x + b.width) - max(a.x, b.x))
    iy = max(0, min(a.y + a.height, b.y + b.height) - max(a.y, b.y))
    inter = ix * iy
    return inter / (a.width * a.height + b.width * b.height - inter)


def right_reading(lattice: Lattice, truth: tuple[Box, ...]) -> list[int] | None:
    """The reading whose digits best match the true boxes, or None if the lattice has none."""
    # reach[atom position] = (summed IoU, candidates) after matching the first k true digits.
    reach: dict[int, tuple[float, list[int]]] = {0: (0.0, [])}
    for box in truth:
        following: dict[int, tuple[float, list[int]]] = {}
        for position, (score, path) in reach.items():
            for index, cand in enumerate(lattice.candidates):
                if cand.first != position:
                    continue
                found = cand.box
                overlap = iou(Box(found.x, found.y, found.width, found.height), box)
                best = following.get(cand.last)
                if overlap >= MATCH_IOU and (best is None or best[0] < score + overlap):
                    following[cand.last] = (score + overlap, [*path, index])
        reach = following
    done = reach.get(lattice.atom_count)
    return done[1] if done else None


def read_codes(codes: list[PostalCode], model: LoadedModel, max_digits: int) -> list[Example]:
    """Segment and classify every code (one model call per code, as the service does)."""
    examples = []
    for code in codes:
        img = Image.open(io.BytesIO(code.png))
        img.load()
        try:
            lattice = find_candidates(img, max_digits=max_digits)
        except ApiError:
            continue
        probabilities, _ = model.predict(normalize_candidates(lattice))
        examples.append(
            Example(
                code.digits,
                lattice,
                probabilities,
                reading_features(lattice, probabilities),
                right_reading(lattice, code.boxes),
            )
        )
    return examples


def best_reading(example: Example, weights: npt.NDArray[np.float64]) -> list[int]:
    """The reading the service would choose with these weights."""
    return best_partition(example.lattice, example.features @ weights)


def accuracy(examples: list[Example], weights: npt.NDArray[np.float64], count: int) -> float:
    """Whole-code accuracy over ``count`` codes (codes refused count as wrong)."""
    right = 0
    for example in examples:
        chosen = best_reading(example, weights)
        digits = "".join(str(int(np.argmax(example.probabilities[i]))) for i in chosen)
        right += digits == example.truth
    return right / count


def count_margin_effect(
    examples: list[Example], weights: npt.NDArray[np.float64], threshold: float, margin: float
) -> tuple[int, float]:
    """Codes accepted, and the error rate among them, when a reading needs every digit's
    confidence at least ``threshold`` and a count margin (see COUNT_MARGIN) at least ``margin``.
    """
    named = dict(zip(FEATURES, weights, strict=True))
    accepted = wrong = 0
    for example in examples:
        reading = choose_reading(example.lattice, example.probabilities, weights=named)
        top = [float(example.probabilities[i].max()) for i in reading.candidates]
        if min(top) >= threshold and reading.count_margin >= margin:
            accepted += 1
            digits = "".join(
                str(int(np.argmax(example.probabilities[i]))) for i in reading.candidates
            )
            wrong += digits != example.truth
    return accepted, wrong / accepted if accepted else float("nan")


def learn(examples: list[Example], epochs: int, seed: int) -> npt.NDArray[np.float64]:
    """Averaged structured perceptron over the examples that have a right reading."""
    rng = np.random.default_rng(seed)
    usable = [e for e in examples if e.right is not None]
    weights = np.zeros(len(FEATURES))
    weights[FEATURES.index("digit")] = 1.0
    weights[FEATURES.index("log_confidence")] = 1.0
    total = np.zeros(len(FEATURES))
    steps = 0
    for _ in range(epochs):
        for k in rng.permutation(len(usable)):
            example = usable[k]
            assert example.right is not None
            chosen = best_reading(example, weights)
            if chosen != example.right:
                weights = (
                    weights
                    + example.features[example.right].sum(axis=0)
                    - example.features[chosen].sum(axis=0)
                )
            total += weights
            steps += 1
    averaged = total / max(steps, 1)
    # Only the ratios matter: express the weights with log_confidence at 1.
    scale = averaged[FEATURES.index("log_confidence")]
    return averaged / scale if scale > 0 else averaged


def main(argv: list[str] | None = None) -> int:
    """Learn and print the reading weights."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=3000, help="training codes")
    parser.add_argument("--held-out", type=int, default=1000, help="codes to check the result")
    parser.add_argument("--seed", type=int, default=21)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--data-dir", default=None, help="MNIST directory ($MNIST_DATA_DIR)")
    parser.add_argument("--models-dir", type=Path, default=Path("models/mnist"))
    args = parser.parse_args(argv)

    from training.data import load_mnist

    data = load_mnist(args.data_dir, progress=False)
    versions = versions_on_disk(args.models_dir)
    if not versions:
        parser.error(f"no model version under {args.models_dir}")
    newest = versions[0]
    model = load_version(args.models_dir / str(newest), newest)
    images, labels = data.train_images, data.train_labels
    train_codes = generate_postal_codes(images, labels, args.count, seed=args.seed)
    held_codes = generate_postal_codes(images, labels, args.held_out, seed=args.seed + 1)
    train = read_codes(train_codes, model, max_digits=12)
    held = read_codes(held_codes, model, max_digits=12)
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
