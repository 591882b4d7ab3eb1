"""One check of what a model answers (app.serving.output_check): every model call, and the probe.

NaN, values outside [0, 1], rows that do not sum to 1, a wrong shape or a digit outside 0..9
are refused by the same function, with the same error, whether a request or the probe set
found them.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from app.core.errors import DomainError, api_error
from app.serving.loaded import LoadedModel
from app.serving.output_check import PROBABILITY_TOLERANCE, ModelOutputError, check_output
from app.serving.probe import ProbeError, check_outputs, probe_set
from app.serving.runtime import Answers, SignatureInfo

Probabilities = npt.NDArray[np.float32]
Digits = npt.NDArray[np.int64]


def sane(labels: Digits) -> tuple[Probabilities, Digits]:
    """Answers a good model could give: most of the mass on each label, rows summing to 1."""
    probabilities = np.full((len(labels), 10), 0.01, np.float32)
    probabilities[np.arange(len(labels)), labels] = 0.91
    return probabilities, labels.copy()


def set_nan(p: Probabilities, d: Digits) -> tuple[Probabilities, Digits]:
    p[1, 2] = np.nan
    return p, d


def set_negative(p: Probabilities, d: Digits) -> tuple[Probabilities, Digits]:
    p[0] = p[0] * 1.5 - 0.05  # still sums to 1
    return p, d


def set_above_one(p: Probabilities, d: Digits) -> tuple[Probabilities, Digits]:
    p[0] = 0.0
    p[0, 3] = 1.01
    return p, d


def halve_row(p: Probabilities, d: Digits) -> tuple[Probabilities, Digits]:
    p[2] *= 0.5
    return p, d


def digit_12(p: Probabilities, d: Digits) -> tuple[Probabilities, Digits]:
    d[0] = 12
    return p, d


def digit_negative(p: Probabilities, d: Digits) -> tuple[Probabilities, Digits]:
    d[1] = -1
    return p, d


def one_row_short(p: Probabilities, d: Digits) -> tuple[Probabilities, Digits]:
    return p[:-1], d[:-1]


def nine_classes(p: Probabilities, d: Digits) -> tuple[Probabilities, Digits]:
    return p[:, :9], d


Garbage = Callable[[Probabilities, Digits], tuple[Probabilities, Digits]]
GARBAGE: dict[str, tuple[Garbage, str]] = {
    "nan": (set_nan, "non-finite probabilities on 1 of 3 images"),
    "negative": (set_negative, "probabilities outside [0, 1] on 1 of 3 images"),
    "above one": (set_above_one, "probabilities outside [0, 1] on 1 of 3 images"),
    "not summing to 1": (halve_row, "probabilities do not sum to 1 on 1 of 3 images (e.g. 0.5)"),
    "digit 12": (digit_12, "'digit' outside 0..9 on 1 of 3 images (e.g. 12)"),
    "digit -1": (digit_negative, "'digit' outside 0..9 on 1 of 3 images (e.g. -1)"),
    "a row short": (one_row_short, "answers for 3 images have shapes (2, 10) and (2,)"),
    "nine classes": (nine_classes, "answers for 3 images have shapes (3, 9) and (3,)"),
}
LABELS = np.array([4, 0, 9], np.int64)


def test_sane_answers_pass() -> None:
    check_output(*sane(LABELS), 3)
    check_output(np.zeros((0, 10), np.float32), np.zeros(0, np.int64), 0)


def test_float32_rounding_is_tolerated_and_no_more() -> None:
    probabilities, digits = sane(LABELS)
    slack = PROBABILITY_TOLERANCE / 2
    probabilities[0, 4] += slack  # the row sums to 1 + slack
    check_output(probabilities, digits, 3)
    probabilities[0, 4] += PROBABILITY_TOLERANCE
    with pytest.raises(ModelOutputError, match="do not sum to 1"):
        check_output(probabilities, digits, 3)


@pytest.mark.parametrize(("garbage", "problem"), GARBAGE.values(), ids=GARBAGE.keys())
def test_garbage_is_refused_with_what_is_wrong(garbage: Garbage, problem: str) -> None:
    probabilities, digits = garbage(*sane(LABELS))
    with pytest.raises(ModelOutputError) as refused:
        check_output(probabilities, digits, 3)
    error = refused.value
    assert error.problem.startswith(problem)
    assert error.code == "model_output_invalid"
    assert isinstance(error, DomainError)
    assert problem in error.message


def test_a_request_time_refusal_names_the_version_and_is_a_503() -> None:
    with pytest.raises(ModelOutputError) as refused:
        check_output(*halve_row(*sane(LABELS)), 3, version=4)
    error = refused.value
    assert "Model version 4 gave an invalid answer" in error.message
    assert error.details == {"model_version": 4}
    answer = api_error(error)
    assert (answer.status_code, answer.code) == (503, "model_output_invalid")
    assert answer.headers == {"Retry-After": "5"}


class Answering:
    """A predictor that answers what it is told to, whatever the images."""

    def __init__(self, answers: Answers) -> None:
        self.answers = answers

    def warm(self) -> None:
        """Nothing to warm."""

    def predict(self, images: npt.NDArray[np.uint8]) -> Answers:
        return self.answers

    def describe(self) -> SignatureInfo:
        raise NotImplementedError


@pytest.mark.parametrize(("garbage", "problem"), GARBAGE.values(), ids=GARBAGE.keys())
def test_every_model_call_is_checked(garbage: Garbage, problem: str) -> None:
    model = LoadedModel(
        version=7,
        path=Path("7"),
        predictor=Answering(garbage(*sane(LABELS))),
        report=None,
        probe=None,
        loaded_at=datetime.now(UTC),
        load_seconds=0.0,
    )
    with pytest.raises(ModelOutputError) as refused:
        model.predict(np.zeros((3, 28, 28), np.uint8))
    assert refused.value.version == 7
    assert refused.value.problem.startswith(problem)


def test_a_sane_model_call_answers_unchanged() -> None:
    answers = sane(LABELS)
    model = LoadedModel(
        version=7,
        path=Path("7"),
        predictor=Answering(answers),
        report=None,
        probe=None,
        loaded_at=datetime.now(UTC),
        load_seconds=0.0,
    )
    probabilities, digits = model.predict(np.zeros((3, 28, 28), np.uint8))
    assert probabilities is answers[0]
    assert digits is answers[1]


@pytest.mark.parametrize(("garbage", "_"), GARBAGE.values(), ids=GARBAGE.keys())
def test_the_probe_refuses_with_the_same_check(garbage: Garbage, _: str) -> None:
    probe = probe_set()
    count = len(probe.images)
    labels = np.concatenate([probe.labels, np.zeros(count - len(probe.labels), np.int64)])
    probabilities, digits = garbage(*sane(labels))
    with pytest.raises(ModelOutputError) as checked:
        check_output(probabilities, digits, count, what="probe images")
    with pytest.raises(ProbeError) as probed:
        check_outputs(probabilities, digits, probe, min_accuracy=0.0)
    assert str(probed.value) == checked.value.problem
    assert "probe images" in str(probed.value)
