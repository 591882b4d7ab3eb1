"""The Wilson interval against values worked out by hand and its defining properties."""

from __future__ import annotations

import math

import pytest

from app.reviews.audit import AuditEstimate, wilson_interval


def test_no_error_in_ten_gives_the_rule_of_three_like_upper_bound() -> None:
    # With 0 wrong the upper bound is z² / (n + z²): 3.8415 / 13.8415.
    low, high = wilson_interval(0, 10)
    assert low == 0.0
    assert high == pytest.approx(1.959963984540054**2 / (10 + 1.959963984540054**2))


def test_half_of_ten_is_symmetric_about_one_half() -> None:
    low, high = wilson_interval(5, 10)
    assert low == pytest.approx(0.2366, abs=1e-4)
    assert high == pytest.approx(0.7634, abs=1e-4)
    assert low + high == pytest.approx(1.0)


@pytest.mark.parametrize(("wrong", "n"), [(1, 50), (3, 200), (40, 41), (2, 2)])
def test_the_interval_holds_the_estimate_and_stays_in_zero_one(wrong: int, n: int) -> None:
    low, high = wilson_interval(wrong, n)
    assert 0.0 <= low <= wrong / n <= high <= 1.0


def test_more_samples_narrow_the_interval() -> None:
    widths = [math.fsum((-a, b)) for a, b in (wilson_interval(k, 10 * k) for k in (1, 10, 100))]
    assert widths[0] > widths[1] > widths[2]


def test_no_samples_says_nothing() -> None:
    assert wilson_interval(0, 0) == (0.0, 1.0)
    assert AuditEstimate(3, 0, 0).error_rate is None


@pytest.mark.parametrize(("wrong", "n"), [(-1, 5), (6, 5), (0, -1)])
def test_counts_that_are_not_a_proportion_are_refused(wrong: int, n: int) -> None:
    with pytest.raises(ValueError, match="not a proportion"):
        wilson_interval(wrong, n)


def test_the_json_form_carries_the_interval() -> None:
    estimate = AuditEstimate(model_version=2, reviewed=10, wrong=5).as_dict()
    assert estimate["error_rate"] == 0.5
    assert estimate["low"] == pytest.approx(0.2366, abs=1e-4)
    assert estimate["model_version"] == 2
