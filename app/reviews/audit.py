"""The error among accepted answers, estimated from reviewed audit samples.

A share of the answers the service did NOT flag is queued as ``audit``; once people have keyed
them, the share they found wrong estimates how often an accepted answer is wrong. With few
samples the estimate is rough, so it always comes with a Wilson score interval, which (unlike
the normal approximation) stays inside [0, 1] and is sensible at 0 wrong out of n.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

#: z for a two-sided 95% interval.
Z_95: Final = 1.959963984540054


def wilson_interval(wrong: int, n: int, z: float = Z_95) -> tuple[float, float]:
    """The Wilson score interval of a proportion ``wrong / n`` (``(0.0, 1.0)`` when n is 0).

    Raises:
        ValueError: for counts that are not a proportion (negative, or wrong > n).
    """
    if n < 0 or wrong < 0 or wrong > n:
        raise ValueError(f"not a proportion: {wrong} of {n}")
    if n == 0:
        return 0.0, 1.0
    p = wrong / n
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True, slots=True)
class AuditEstimate:
    """How often one model version's accepted answers were wrong, as reviewed audits say."""

    model_version: int
    reviewed: int
    """Audit samples people have keyed (unreadable and not-a-digit-string count as wrong)."""
    wrong: int
    """Of those, the ones whose answer differed from what the reviewer keyed."""

    @property
    def error_rate(self) -> float | None:
        """wrong / reviewed, or None before any audit was reviewed."""
        return self.wrong / self.reviewed if self.reviewed else None

    @property
    def interval(self) -> tuple[float, float]:
        """The Wilson 95% interval of the error rate."""
        return wilson_interval(self.wrong, self.reviewed)

    def as_dict(self) -> dict[str, object]:
        """The JSON form (``/model``'s ``audit`` entries)."""
        low, high = self.interval
        return {
            "model_version": self.model_version,
            "reviewed": self.reviewed,
            "wrong": self.wrong,
            "error_rate": self.error_rate,
            "low": low,
            "high": high,
        }
