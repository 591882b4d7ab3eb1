"""What a model may answer, checked in one place: probabilities and digits, nothing else.

The SavedModel contract (docs/DESIGN.md) says a version answers N images with ``probabilities``
[N, 10], each finite, in [0, 1], each row summing to 1, and ``digit`` [N] in 0..9.
:func:`check_output` is that check. :meth:`~app.serving.loaded.LoadedModel.predict` runs it on
every model call, so no door and no reader ever works on anything else, and the probe
(:mod:`app.serving.probe`) runs it on the probe set before a version is served.

It lives below both of them: the loaded model runs the probe, and the probe runs this check.
"""

from __future__ import annotations

from typing import Any, Final

import numpy as np
import numpy.typing as npt

from app.core.errors import DomainError

#: Tolerance on each probability's range and on their sum (float32 softmax rounding).
PROBABILITY_TOLERANCE: Final = 1e-3


class ModelOutputError(DomainError):
    """A model answered with values no model may give (NaN, a digit 12, rows not summing to 1).

    ``problem`` says which check failed and on how many images, for logs and the probe's
    reason; ``message`` is the client's. With a ``version`` it is the answer to a request
    (503 ``model_output_invalid``, the version in ``details``).
    """

    code = "model_output_invalid"

    def __init__(self, problem: str, version: int | None = None) -> None:
        if version is None:
            message = f"The model's answers are not probabilities and digits: {problem}."
            details: dict[str, Any] | None = None
        else:
            message = (
                f"Model version {version} gave an invalid answer for this input; it has been "
                "logged. Try another version (?version=) or report it."
            )
            details = {"model_version": version}
        super().__init__(message, details)
        self.problem = problem
        self.version = version


def check_output(
    probabilities: npt.NDArray[Any],
    digits: npt.NDArray[Any],
    count: int,
    *,
    version: int | None = None,
    what: str = "images",
) -> None:
    """Check a model's answers for ``count`` images: probabilities [count, 10] and digits [count].

    ``version`` names the model in the error (see :class:`ModelOutputError`); ``what`` names the
    images in its ``problem`` ("probe images").

    Raises:
        ModelOutputError: naming the first check that failed.
    """
    if not _sane(probabilities, digits, count):
        raise ModelOutputError(_problem(probabilities, digits, count, what), version)


def _sane(probabilities: npt.NDArray[Any], digits: npt.NDArray[Any], count: int) -> bool:
    """Every check at once, in a few array passes: the path every model call takes."""
    if probabilities.shape != (count, 10) or digits.shape != (count,):
        return False
    if count == 0:
        return True
    tol = PROBABILITY_TOLERANCE
    sums = probabilities.sum(axis=1, dtype=np.float64)
    return bool(
        np.isfinite(probabilities).all()
        and probabilities.min() >= -tol
        and probabilities.max() <= 1 + tol
        and np.abs(sums - 1.0).max() <= tol
        and digits.min() >= 0
        and digits.max() <= 9
    )


def _problem(
    probabilities: npt.NDArray[Any], digits: npt.NDArray[Any], count: int, what: str
) -> str:
    """Which check failed, and on how many of the images."""
    if probabilities.shape != (count, 10) or digits.shape != (count,):
        return (
            f"answers for {count} {what} have shapes {probabilities.shape} and {digits.shape}, "
            f"expected ({count}, 10) and ({count},)"
        )
    finite = np.isfinite(probabilities).all(axis=1)
    if not finite.all():
        return f"non-finite probabilities on {int((~finite).sum())} of {count} {what}"
    tol = PROBABILITY_TOLERANCE
    out_of_range = ((probabilities < -tol) | (probabilities > 1 + tol)).any(axis=1)
    if out_of_range.any():
        return f"probabilities outside [0, 1] on {int(out_of_range.sum())} of {count} {what}"
    sums = probabilities.astype(np.float64).sum(axis=1)
    bad_sum = np.abs(sums - 1.0) > tol
    if bad_sum.any():
        worst = float(sums[np.argmax(np.abs(sums - 1.0))])
        return (
            f"probabilities do not sum to 1 on {int(bad_sum.sum())} of {count} {what} "
            f"(e.g. {worst:.4g})"
        )
    outside = (digits < 0) | (digits > 9)
    if outside.any():
        return (
            f"'digit' outside 0..9 on {int(outside.sum())} of {count} {what} "
            f"(e.g. {int(digits[np.argmax(outside)])})"
        )
    return f"answers for {count} {what} that are not probabilities and digits"
