"""Fit a version's reader settings: reading weights, margins, review threshold and review rule.

The service's string reader (``app.reading.reader``) picks, among all ways of cutting the ink
into digits, the one with the highest score, a linear function of named features
(``app.reading.reader.FEATURES``); its review rule (``app.reading.review``) sends a reading to
people when a digit is unsure or its geometry is unlike a correctly read code's. This module
fits both on synthetic codes built from MNIST **training** digits (never test digits, which the
benchmarks use, never real scans, which measure), read with the service's own segmentation and
the version's model:

* the weights, by an averaged structured perceptron: for every training code, the best-scoring
  reading is compared with the right one (the candidates that match the digits' true boxes),
  and the weights move toward the features of the right one when they differ (:func:`learn`);
* the review threshold and margins, the pair accepting the most held-out codes with an error
  within :data:`TARGET_ERROR` (:func:`fit_reader`);
* the review rule's limits, on scan-like codes (:func:`fit_review_rule`).

:func:`fit_default_reader` (the training pipeline's default reader step) keeps the service's
default weights, margins and threshold and fits the review rule alone; :func:`fit_reader` fits
everything. ``training/calibrate.py`` writes either into the version's ``reader.json``;
``benchmarks/tune_reader.py`` is the command line that prints what they fit.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt
from PIL import Image

from app.core.errors import DomainError
from app.reading.components import Box
from app.reading.lattice import Lattice, find_candidates, normalize_candidates
from app.reading.reader import (
    COUNT_MARGIN,
    FEATURES,
    READING_MARGIN,
    READING_WEIGHTS,
    Reading,
    best_partition,
    choose_reading,
    reading_features,
)
from app.reading.review import (
    DEFAULT_REVIEW_THRESHOLD,
    EDGE_ROOM,
    cut_by_the_edge,
    joined_too_wide,
    line_offsets,
    off_the_line,
    page_has_marks,
    spans_the_image,
)
from training.postal_codes import PostalCode, generate_postal_codes
from training.scan_codes import generate_scan_codes

__all__ = [
    "LIMIT_QUANTILE",
    "MARGINS",
    "MATCH_IOU",
    "MAX_DIGITS",
    "REVIEW_RULE_CODES",
    "REVIEW_RULE_SEED",
    "TARGET_ERROR",
    "THRESHOLDS",
    "Example",
    "Judged",
    "Predict",
    "accepted_error",
    "accuracy",
    "best_reading",
    "count_margin_effect",
    "fit_default_reader",
    "fit_reader",
    "fit_review_rule",
    "geometry_flagged",
    "iou",
    "judge",
    "learn",
    "read_codes",
    "right_reading",
]

Predict = Callable[[npt.NDArray[np.uint8]], npt.NDArray[np.float32]]
"""The version's model: normalized digits (uint8 [N, 28, 28]) to probabilities [N, 10]."""

#: A candidate matches a true digit when their boxes overlap this much (intersection / union).
MATCH_IOU: Final = 0.5
#: The review rule is fitted to keep the error among accepted synthetic codes within half of
#: the service's promise (2%): synthetic codes are easier than real scans.
TARGET_ERROR: Final = 0.01
#: Geometric limits: what this share of the digits of correctly read scan-like codes stays within.
LIMIT_QUANTILE: Final = 0.99
THRESHOLDS: Final = (0.9, 0.95, 0.97, 0.98, 0.99, 0.995, 0.998, 0.999)
MARGINS: Final = (1.0, 2.0, 3.0)
#: The longest code the fit segments (the synthetic codes have at most this many digits).
MAX_DIGITS: Final = 12
#: Scan-like codes and seed of :func:`fit_default_reader`: those of ``python -m
#: benchmarks.tune_reader --review-rule --count 1500 --seed 95``, which fitted the bundled
#: versions' rules, so that the training pipeline writes the same rule.
REVIEW_RULE_CODES: Final = 1500
REVIEW_RULE_SEED: Final = 95


@dataclass(frozen=True)
class Example:
    """One code, read up to the model: the lattice, its features, and the right reading."""

    truth: str
    lattice: Lattice
    probabilities: npt.NDArray[np.float32]
    features: npt.NDArray[np.float64]
    right: list[int] | None
    size: tuple[int, int] = (0, 0)
    """The image's (width, height), the boxes' coordinates."""


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
                overlap = iou(cand.box, box)
                best = following.get(cand.last)
                if overlap >= MATCH_IOU and (best is None or best[0] < score + overlap):
                    following[cand.last] = (score + overlap, [*path, index])
        reach = following
    done = reach.get(lattice.atom_count)
    return done[1] if done else None


def read_codes(
    codes: Sequence[PostalCode], predict: Predict, max_digits: int = MAX_DIGITS
) -> list[Example]:
    """Segment and classify every code (one model call per code, as the service does).

    A code the segmentation refuses is left out.
    """
    examples = []
    for code in codes:
        img = Image.open(io.BytesIO(code.png))
        img.load()
        try:
            lattice = find_candidates(img, max_digits=max_digits)
        except DomainError:
            continue
        probabilities = predict(normalize_candidates(lattice))
        examples.append(
            Example(
                code.digits,
                lattice,
                probabilities,
                reading_features(lattice, probabilities),
                right_reading(lattice, code.boxes),
                (code.width, code.height),
            )
        )
    return examples


def _digits(example: Example, chosen: Sequence[int]) -> str:
    """The digits the model reads in the chosen candidates."""
    return "".join(str(int(np.argmax(example.probabilities[i]))) for i in chosen)


def best_reading(example: Example, weights: npt.NDArray[np.float64]) -> list[int]:
    """The reading the service would choose with these weights."""
    return best_partition(example.lattice, example.features @ weights)


def accuracy(examples: Sequence[Example], weights: npt.NDArray[np.float64], count: int) -> float:
    """Whole-code accuracy over ``count`` codes (codes refused count as wrong)."""
    right = sum(_digits(e, best_reading(e, weights)) == e.truth for e in examples)
    return right / count


def count_margin_effect(
    examples: Sequence[Example], weights: npt.NDArray[np.float64], threshold: float, margin: float
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
            wrong += _digits(example, reading.candidates) != example.truth
    return accepted, wrong / accepted if accepted else float("nan")


def learn(examples: Sequence[Example], epochs: int, seed: int) -> npt.NDArray[np.float64]:
    """Averaged structured perceptron over the examples that have a right reading."""
    rng = np.random.default_rng(seed)
    usable = [(e, e.right) for e in examples if e.right is not None]
    weights = np.zeros(len(FEATURES))
    weights[FEATURES.index("digit")] = 1.0
    weights[FEATURES.index("log_confidence")] = 1.0
    total = np.zeros(len(FEATURES))
    steps = 0
    for _ in range(epochs):
        for k in rng.permutation(len(usable)):
            example, right = usable[k]
            chosen = best_reading(example, weights)
            if chosen != right:
                weights = (
                    weights
                    + example.features[right].sum(axis=0)
                    - example.features[chosen].sum(axis=0)
                )
            total += weights
            steps += 1
    averaged: npt.NDArray[np.float64] = total / max(steps, 1)
    # Only the ratios matter: express the weights with log_confidence at 1.
    scale = averaged[FEATURES.index("log_confidence")]
    return averaged / scale if scale > 0 else averaged


@dataclass(frozen=True)
class Judged:
    """One example read with given weights and margins: its reading and whether it is right."""

    example: Example
    reading: Reading
    right: bool
    top: list[float]


def judge(
    examples: Sequence[Example],
    weights: dict[str, float],
    count_margin: float,
    reading_margin: float,
) -> list[Judged]:
    """Read every example as the service would (weights and margins given)."""
    out = []
    for example in examples:
        reading = choose_reading(
            example.lattice,
            example.probabilities,
            weights=weights,
            count_margin=count_margin,
            reading_margin=reading_margin,
        )
        top = [float(example.probabilities[i].max()) for i in reading.candidates]
        right = _digits(example, reading.candidates) == example.truth
        out.append(Judged(example, reading, right, top))
    return out


def geometry_flagged(judged: Judged, limits: dict[str, float]) -> bool:
    """Whether app.reading.review's geometric signals send this reading to review."""
    lattice, chosen = judged.example.lattice, list(judged.reading.candidates)
    return (
        any(joined_too_wide(lattice, chosen, limits["max_joined_width"]))
        or any(off_the_line(lattice, chosen, limits["max_line_offset"]))
        or any(cut_by_the_edge(lattice, chosen, judged.example.size, limits["edge_room"]))
        or any(spans_the_image(lattice, chosen, judged.example.size))
    )


def accepted_error(
    judged: Sequence[Judged], threshold: float, limits: dict[str, float] | None = None
) -> tuple[int, int]:
    """(accepted, wrong among them) when a reading needs every digit at ``threshold``, a sure
    count and cut, and (``limits``) no geometric signal."""
    accepted = wrong = 0
    for item in judged:
        reading = item.reading
        if reading.count_is_uncertain or reading.cut_is_uncertain or min(item.top) < threshold:
            continue
        if limits is not None and geometry_flagged(item, limits):
            continue
        accepted += 1
        wrong += not item.right
    return accepted, wrong


def fit_review_rule(
    scan: Sequence[Example],
    weights: dict[str, float],
    count_margin: float,
    reading_margin: float,
    threshold: float,
) -> dict[str, float]:
    """The review rule's limits for a version, from scan-like codes of MNIST training digits.

    The geometric limits are what :data:`LIMIT_QUANTILE` of the digits of correctly read codes
    stay within; the marked-page threshold is the lowest of :data:`THRESHOLDS` (not below
    ``threshold``) keeping the error among accepted marked codes within :data:`TARGET_ERROR`
    (the highest when none does).
    """
    judged = judge(scan, weights, count_margin, reading_margin)
    right = [j for j in judged if j.right]
    widths = [
        j.example.lattice.candidates[i].width_ratio
        for j in right
        for i in j.reading.candidates
        if j.example.lattice.candidates[i].last - j.example.lattice.candidates[i].first >= 2
    ]
    offsets = [
        offset
        for j in right
        if len(j.reading.candidates) > 1
        for offset in line_offsets(j.example.lattice, list(j.reading.candidates))
    ]
    limits = {
        "max_joined_width": round(float(np.quantile(widths, LIMIT_QUANTILE)), 3) if widths else 1.4,
        "max_line_offset": round(float(np.quantile(offsets, LIMIT_QUANTILE)), 3)
        if offsets
        else 0.5,
        "edge_room": EDGE_ROOM,
    }
    marked = [j for j in judged if page_has_marks(j.example.lattice)]
    candidates = [t for t in THRESHOLDS if t >= threshold] or [threshold]
    chosen = candidates[-1]
    for candidate in candidates:
        accepted, wrong = accepted_error(marked, candidate, limits)
        if accepted and wrong / accepted <= TARGET_ERROR:
            chosen = candidate
            break
    return {**limits, "marked_threshold": chosen}


def fit_reader(
    images: npt.NDArray[np.uint8],
    labels: npt.NDArray[np.integer[Any]],
    predict: Predict,
    *,
    count: int = 400,
    epochs: int = 8,
    seed: int = 21,
) -> dict[str, object]:
    """Fit a version's whole reader calibration on synthetic codes of ``images`` (which must be
    MNIST *training* digits) as ``predict`` reads them; a dict for ``reader.json``.

    ``count`` postal codes train the weights, ``count`` more choose the review threshold and
    the margins (the pair accepting the most codes with an error within :data:`TARGET_ERROR`),
    and ``count`` scan-like codes fit the review rule.
    """
    started = time.perf_counter()
    held = read_codes(generate_postal_codes(images, labels, count, seed=seed + 1), predict)
    train = read_codes(generate_postal_codes(images, labels, count, seed=seed), predict)
    learned = learn(train, epochs, seed)
    weights = {name: round(float(v), 4) for name, v in zip(FEATURES, learned, strict=True)}
    best: tuple[int, float, float, float] | None = None
    for margin in MARGINS:
        judged = judge(held, weights, margin, margin)
        for threshold in THRESHOLDS:
            accepted, wrong = accepted_error(judged, threshold)
            if accepted and wrong / accepted <= TARGET_ERROR:
                if best is None or accepted > best[0]:
                    best = (accepted, margin, threshold, wrong / accepted)
                break
    margin, threshold = (best[1], best[2]) if best else (MARGINS[-1], THRESHOLDS[-1])
    fitted = "weights (structured perceptron), margins and review threshold"
    scan = read_codes(generate_scan_codes(images, labels, count, seed=seed + 2), predict)
    rule = fit_review_rule(scan, weights, margin, margin, threshold)
    return {
        "reading_weights": weights,
        "count_margin": margin,
        "reading_margin": margin,
        "review_threshold": threshold,
        "review_rule": rule,
        "reader_fitted_by": (
            f"training/reader_fit.py fit_reader: {fitted} on {count} synthetic postal codes "
            f"each (seed {seed}) and the review rule on {count} scan-like codes "
            f"(training/scan_codes.py) of MNIST training digits, target error "
            f"{TARGET_ERROR:.0%}, in {time.perf_counter() - started:.0f} s"
        ),
    }


def fit_default_reader(
    images: npt.NDArray[np.uint8],
    labels: npt.NDArray[np.integer[Any]],
    predict: Predict,
    *,
    count: int = REVIEW_RULE_CODES,
    seed: int = REVIEW_RULE_SEED,
) -> dict[str, object]:
    """A version's reader calibration with the service's default reading weights, margins and
    review threshold, and the review rule fitted for this version; a dict for ``reader.json``.

    The rule is fitted on ``count`` scan-like codes (seed ``seed + 2``) of ``images`` (MNIST
    *training* digits) as ``predict`` reads them. ``benchmarks/tune_reader.py --review-rule``
    runs exactly this, so ``--review-rule --count N --seed S`` and the training pipeline's
    default reader step with the same count and seed give the same rule.
    """
    weights = dict(READING_WEIGHTS)
    scan = read_codes(generate_scan_codes(images, labels, count, seed=seed + 2), predict)
    rule = fit_review_rule(scan, weights, COUNT_MARGIN, READING_MARGIN, DEFAULT_REVIEW_THRESHOLD)
    return {
        "reading_weights": weights,
        "count_margin": COUNT_MARGIN,
        "reading_margin": READING_MARGIN,
        "review_threshold": DEFAULT_REVIEW_THRESHOLD,
        "reader_fitted_by": (
            "the service's defaults (app.reading.reader READING_WEIGHTS, COUNT_MARGIN and "
            "READING_MARGIN, app.settings DEFAULT_REVIEW_THRESHOLD): the weights by "
            "benchmarks/tune_reader.py (structured perceptron on synthetic postal codes of MNIST "
            "training digits, read by version 1), review threshold and margins chosen with "
            "benchmarks/bench_postal.py on MNIST training digits (seed 31) and test digits "
            "(seed 7); kept for this version, whose review rule alone is fitted (the reader "
            "step's default; its full refit chooses margins and threshold on a few hundred codes "
            "and proved noisy, see docs/real-scans.md)"
        ),
        "review_rule": rule,
        "review_rule_fitted_by": (
            f"benchmarks/tune_reader.py --review-rule --count {count} --seed {seed}: {count:,} "
            f"scan-like codes (training/scan_codes.py, seed {seed + 2}) of MNIST training "
            "digits read by this version with the weights, margins and review threshold above; "
            f"limits: the {LIMIT_QUANTILE:.0%} quantile over correctly read codes; "
            "marked_threshold: the lowest keeping the error among accepted marked codes within "
            f"{TARGET_ERROR:.0%}"
        ),
    }
