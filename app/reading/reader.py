"""Choose the reading of a lattice: which candidates are the digits.

Each partition of the atoms into candidates is scored by a linear function of named features
(geometry and how confidently the model reads each candidate); the best is found by dynamic
programming, and the margins to the runners-up say whether the count or a cut is uncertain.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Final

import numpy as np
import numpy.typing as npt

from app.core.errors import DomainError, domain_error
from app.reading.lattice import Lattice, too_many_digits

__all__ = [
    "COUNT_MARGIN",
    "FEATURES",
    "READING_MARGIN",
    "READING_WEIGHTS",
    "Reading",
    "as_scores",
    "best_partition",
    "choose_reading",
    "invalid_model_output",
    "reading_features",
]

# Probabilities may exceed 1 or miss a sum of 1 by float32 rounding, never by more than this.
_PROBABILITY_SLACK: Final = 1e-3

# The reading score is a linear function of named features of each candidate digit and of the
# boundary on its left (see reading_features). The weights were learned with a structured
# perceptron (benchmarks/tune_reader.py) on synthetic postal codes built from MNIST *training*
# digits, so the benchmark on test digits is not fitted to its own images. Widths and heights
# are in digit heights; the log-probabilities are the model's (0 when reading from geometry).
READING_WEIGHTS: Final[dict[str, float]] = {
    "digit": -0.221,  # 1 per digit read
    "log_confidence": 1.0,  # log of the top probability
    "log_margin": 0.573,  # log(top / second probability)
    "wider_than_1.0": -8.05,
    "wider_than_1.2": -3.26,
    "wider_than_1.4": -0.215,
    "narrower_than_0.3": -0.842,
    "narrower_than_0.2": -0.126,
    "shorter_than_0.9": -13.5,
    "shorter_than_0.7": -5.6,
    "taller_than_1.2": -0.0486,
    "less_ink_than_0.5": -6.84,
    "less_ink_than_0.25": -1.05,
    "extra_atoms": 0.314,  # atoms joined into this digit beyond the first
    "joined_components": -2.19,  # separate components joined into this digit
    "joined_gap": 0.475,  # white space between the components joined, summed
    "cut_ink": -1.55,  # ink crossed by the cut on the left, in stroke widths
    "close_left": 0.185,  # how much less than 0.1 the gap to the component on the left is
    "near_left": 0.731,  # how much less than 0.3 the gap to the component on the left is
}

FEATURES: Final = tuple(READING_WEIGHTS)

# When the best reading with another number of digits scores within this much of the chosen
# one, the count itself is uncertain and the reading goes to review. On codes of MNIST training
# digits read at confidence 0.95, a margin of 2 halves the errors accepted (3.4% to 1.8%) for 2%
# fewer codes accepted: most confident errors are a digit too many or too few.
COUNT_MARGIN: Final = 2.0

# When ANY other way of cutting the ink (same count or not) scores within this much of the
# chosen one, the cut itself is uncertain and the reading goes to review. This contains the
# count test (another count is another cut). Measured on codes of MNIST training digits (seed
# 31, 2,000 codes) and of test digits with a seed other than the benchmark's (seed 7, 1,500
# codes): at every digit threshold from 0.90 to 0.98 it sends 0.5-1.5% more codes to review than
# COUNT_MARGIN alone and lowers the error among those accepted (at 0.95: 2.59% -> 2.06% and
# 3.82% -> 3.62%); margins of 1 and 3 did no better.
READING_MARGIN: Final = 2.0


def invalid_model_output() -> DomainError:
    """The 503 answered when the model's scores are not probabilities: nothing can be read."""
    return domain_error(
        "model_output_invalid",
        "The served model returned scores that are not probabilities (not finite, negative, "
        "above 1, or not one per digit 0-9), so no reading can be trusted and none is given. "
        "Try again later; the operator should check the served version (GET /model).",
        retry_after=30,
    )


def as_scores(probabilities: npt.ArrayLike, count: int) -> npt.NDArray[np.float64]:
    """The model's scores for ``count`` images as float64 [count, 10], clipped to [0, 1].

    The model's answer was checked where it was made (``app.serving.output_check``: the one
    check, within float32 rounding); the clip keeps that rounding out of the logarithms below.
    What no check passed (another shape, a value that is not finite) is still refused here, so
    the search stays bounded whatever calls it.

    Raises:
        DomainError: 503 ``model_output_invalid`` for scores of another shape or not finite.
    """
    scores = np.asarray(probabilities, dtype=np.float64)
    if scores.shape != (count, 10) or not np.isfinite(scores).all():
        raise invalid_model_output()
    clipped: npt.NDArray[np.float64] = np.clip(scores, 0.0, 1.0)
    return clipped


def reading_features(
    lattice: Lattice, probabilities: npt.NDArray[np.floating] | None
) -> npt.NDArray[np.float64]:
    """The :data:`FEATURES` of every candidate, float64 [candidates, features].

    ``probabilities`` is the model's answer for every candidate ([candidates, 10]); None reads
    from geometry alone (the two probability features are then 0).

    Raises:
        DomainError: 503 ``model_output_invalid`` when ``probabilities`` are not scores of the
            candidates (:func:`as_scores`).
    """
    if probabilities is not None:
        probabilities = as_scores(probabilities, len(lattice.candidates))
    rows = np.zeros((len(lattice.candidates), len(FEATURES)), np.float64)
    for index, cand in enumerate(lattice.candidates):
        w, h = cand.width_ratio, cand.height_ratio
        inner = lattice.boundaries[cand.first : cand.last - 1]
        gaps = [b.gap for b in inner if b.gap is not None]
        left = lattice.boundaries[cand.first - 1] if cand.first > 0 else None
        top, second = 0.0, 0.0
        if probabilities is not None:
            second, top = np.log(np.sort(probabilities[index])[-2:] + 1e-6)
        rows[index] = (
            1.0,
            top,
            top - second,
            max(0.0, w - 1.0),
            max(0.0, w - 1.2),
            max(0.0, w - 1.4),
            max(0.0, 0.3 - w),
            max(0.0, 0.2 - w),
            max(0.0, 0.9 - h),
            max(0.0, 0.7 - h),
            max(0.0, h - 1.2),
            max(0.0, 0.5 - cand.area_ratio),
            max(0.0, 0.25 - cand.area_ratio),
            cand.last - cand.first - 1,
            len(gaps),
            sum(max(0.0, g) for g in gaps),
            left.ink if left is not None and left.gap is None else 0.0,
            max(0.0, 0.1 - left.gap) if left is not None and left.gap is not None else 0.0,
            max(0.0, 0.3 - left.gap) if left is not None and left.gap is not None else 0.0,
        )
    return rows


def best_partition(lattice: Lattice, scores: npt.NDArray[np.float64]) -> list[int]:
    """The candidates (indices, left to right) covering every atom once with the top total score.

    Dynamic programming over atom positions: each candidate extends the best reading of the
    atoms before it.
    """
    n = lattice.atom_count
    best = np.full(n + 1, -np.inf)
    best[0] = 0.0
    back = np.full(n + 1, -1, np.int64)
    # In order of the last atom covered, so a candidate's start position is final when read.
    for index in sorted(range(len(scores)), key=lambda i: lattice.candidates[i].last):
        cand = lattice.candidates[index]
        score = best[cand.first] + scores[index]
        if score > best[cand.last]:
            best[cand.last] = score
            back[cand.last] = index
    chosen: list[int] = []
    end = n
    while end > 0:
        index = int(back[end])
        # No candidate reaches here with a finite score (scores that are NaN compare false):
        # there is no reading, and following index -1 could loop forever.
        if index < 0:
            raise invalid_model_output()
        chosen.append(index)
        end = lattice.candidates[index].first
    return chosen[::-1]


@dataclasses.dataclass(frozen=True)
class Reading:
    """The reader's choice: which candidates are the digits, and how sure it is of their count."""

    candidates: tuple[int, ...]
    """Indices into the lattice's candidates, left to right."""
    count_margin: float
    """How much the chosen reading outscores the best reading with another number of digits
    (infinite when no other count is possible)."""
    runner_up: int | None
    """That other number of digits (None when there is none)."""
    margin: float = float("inf")
    """How much the chosen reading outscores the best other reading, whatever its number of
    digits (infinite when the ink can be cut only one way). Never more than ``count_margin``."""
    required_count_margin: float = COUNT_MARGIN
    """The count margin below which the count is uncertain (the version's calibration, else
    :data:`COUNT_MARGIN`)."""
    required_margin: float = READING_MARGIN
    """The margin below which the cut is uncertain (the version's calibration, else
    :data:`READING_MARGIN`)."""

    @property
    def count_is_uncertain(self) -> bool:
        """Whether another number of digits scores almost as well (``required_count_margin``)."""
        return self.count_margin < self.required_count_margin

    @property
    def cut_is_uncertain(self) -> bool:
        """Whether another cut of the ink scores almost as well (``required_margin``)."""
        return self.margin < self.required_margin


def _best_by_count(lattice: Lattice, scores: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """The best total score of a reading with k digits, for k = 0..atom_count (-inf if none)."""
    n = lattice.atom_count
    best = np.full((n + 1, n + 1), -np.inf)
    best[0, 0] = 0.0
    for index in sorted(range(len(scores)), key=lambda i: lattice.candidates[i].last):
        cand = lattice.candidates[index]
        extended = best[cand.first, :-1] + scores[index]
        best[cand.last, 1:] = np.maximum(best[cand.last, 1:], extended)
    result: npt.NDArray[np.float64] = best[n]
    return result


def _best_total(lattice: Lattice, scores: npt.NDArray[np.float64]) -> float:
    """The top total score of a reading covering every atom (-inf when none can)."""
    best = np.full(lattice.atom_count + 1, -np.inf)
    best[0] = 0.0
    for index in sorted(range(len(scores)), key=lambda i: lattice.candidates[i].last):
        cand = lattice.candidates[index]
        best[cand.last] = max(best[cand.last], best[cand.first] + scores[index])
    return float(best[-1])


def _second_best_total(
    lattice: Lattice, scores: npt.NDArray[np.float64], chosen: list[int]
) -> float:
    """The top total score of a reading other than ``chosen`` (-inf when there is none).

    Any other reading leaves out at least one of the chosen candidates (a partition holding all
    of them is the chosen one), so the runner-up is the best reading without one of them.
    """
    second = -np.inf
    for index in chosen:
        without = scores.copy()
        without[index] = -np.inf
        second = max(second, _best_total(lattice, without))
    return float(second)


def choose_reading(
    lattice: Lattice,
    probabilities: npt.NDArray[np.floating] | None,
    *,
    max_digits: int | None = None,
    weights: Mapping[str, float] = READING_WEIGHTS,
    count_margin: float = COUNT_MARGIN,
    reading_margin: float = READING_MARGIN,
) -> Reading:
    """The best reading of the lattice, and its score margins over other readings and counts.

    Each candidate scores the dot product of ``weights`` and its :func:`reading_features`; the
    reading is the partition of the atoms with the highest total (:func:`best_partition`).
    ``probabilities`` is the model's answer for every candidate, or None to read from geometry
    alone. ``count_margin`` and ``reading_margin`` are the margins below which the count and
    the cut are uncertain (a model version's calibration; by default the code's).

    Raises:
        DomainError: 422 ``too_many_digits`` when the reading has more than ``max_digits``; 503
            ``model_output_invalid`` when ``probabilities`` are not probabilities.
    """
    vector = np.array([weights[name] for name in FEATURES], np.float64)
    scores = reading_features(lattice, probabilities) @ vector
    if not np.isfinite(scores).all():
        raise invalid_model_output()
    chosen = best_partition(lattice, scores)
    if max_digits is not None and len(chosen) > max_digits:
        raise too_many_digits(len(chosen), max_digits)
    top = float(scores[chosen].sum())
    second = _second_best_total(lattice, scores, chosen)
    margin = top - second if np.isfinite(second) else float("inf")
    by_count = _best_by_count(lattice, scores)
    others = by_count.copy()
    others[len(chosen)] = -np.inf
    runner_up = int(np.argmax(others))
    if not np.isfinite(others[runner_up]):
        return Reading(tuple(chosen), float("inf"), None, margin, count_margin, reading_margin)
    count_gap = float(by_count[len(chosen)] - others[runner_up])
    return Reading(tuple(chosen), count_gap, runner_up, margin, count_margin, reading_margin)
