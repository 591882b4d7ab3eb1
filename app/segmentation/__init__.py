"""Cut an image of a handwritten digit string (a postal code) into its digits and read it.

Works on the ink map of :mod:`app.imaging` (ink bright, background 0), in three stages, one
module each::

    components: binarize (Otsu, hysteresis) -> connected components -> drop specks
      -> merge stacked fragments of one digit
    lattice: cut wide components at projection valleys -> atoms, left to right
      -> candidates: every run of atoms that may be one digit
    (the model reads every candidate, in one call)
    reader: the best reading (dynamic programming)

Cutting is deliberately generous: a component that may hold several touching digits gets every
plausible cut, and pieces of a broken digit stay separate atoms. Which cuts and joins are real
is decided by :func:`choose_reading`, from geometry and from how confidently the model reads
each candidate, so a 0 is not cut in two when its halves read badly and two touching digits are
cut when each reads well.

Each candidate keeps only its own ink (neighbours' strokes are masked out) and is normalized by
:func:`app.imaging.center_digit`, exactly as ``/predict`` normalizes a single digit. Only numpy
and Pillow are used; connected components are labelled on run-lengths with a vectorized
union-find, which takes milliseconds on a page-sized image. Errors are
:class:`app.core.errors.DomainError` with a code, never an HTTP status.
"""

from __future__ import annotations

from app.segmentation.components import Box, connected_components, otsu_threshold
from app.segmentation.lattice import (
    MAX_WORK_PIXELS,
    MAX_WORK_SIDE,
    Candidate,
    Lattice,
    build_lattice,
    find_candidates,
    normalize_candidates,
    too_many_digits,
)
from app.segmentation.reader import (
    COUNT_MARGIN,
    FEATURES,
    READING_MARGIN,
    READING_WEIGHTS,
    Reading,
    best_partition,
    check_probabilities,
    choose_reading,
    invalid_model_output,
    reading_features,
)

__all__ = [
    "COUNT_MARGIN",
    "FEATURES",
    "MAX_WORK_PIXELS",
    "MAX_WORK_SIDE",
    "READING_MARGIN",
    "READING_WEIGHTS",
    "Box",
    "Candidate",
    "Lattice",
    "Reading",
    "best_partition",
    "build_lattice",
    "check_probabilities",
    "choose_reading",
    "connected_components",
    "find_candidates",
    "invalid_model_output",
    "normalize_candidates",
    "otsu_threshold",
    "reading_features",
    "too_many_digits",
]
