"""Which model versions are loaded and served: TensorFlow Serving's version policy, plus a gate.

- ``latest`` (the default): the newest version that passes the promotion gate is served.
- ``specific``: the listed versions are loaded and served, the highest one by default; this is
  how to roll back (pin the previous version) without deleting anything.
- Labels (``stable=1,canary=2``) name versions; a labelled version is loaded whatever the
  policy, and a request may ask for it by label. ``default_label`` makes a label the version
  answering requests that name none (rollback by relabelling).

The promotion gate (``latest`` only) reads each version's ``metrics.json``, walking versions from
the oldest: the first servable one is the baseline; a newer one replaces it only when its test
accuracy is known, at least the floor, and not below the baseline's by more than the tolerance,
and, when it was measured on held-out labelled real digits (``real_digits``, written by training
with ``--extra-data``), its accuracy there is not below the then served version's on the same
digits by more than the tolerance, whatever its MNIST figure. Otherwise it is *held* with the
reason. The outcome depends only on the files, so a restart serves what was served before.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final, Literal

from app.serving.report import ModelReport

#: Largest version number accepted: above 2**53 a JSON client cannot represent it exactly.
MAX_VERSION: Final = 2**53 - 1
#: Longest version directory name considered (longer names are reported and ignored).
MAX_VERSION_NAME: Final = 16
MAX_LISTED: Final = 16
LABEL_PATTERN: Final = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,31}")

PolicyKind = Literal["latest", "specific"]


def parse_version_name(name: str) -> int | str:
    """A directory name as a version number, or the reason it is not one.

    ASCII digits only (``str.isdigit`` accepts ``'²'``, which ``int`` refuses), at most
    :data:`MAX_VERSION_NAME` characters, at most :data:`MAX_VERSION`.
    """
    if not name or len(name) > MAX_VERSION_NAME:
        return f"a version name has 1 to {MAX_VERSION_NAME} digits"
    if not (name.isascii() and name.isdigit()):
        return "a version name has ASCII digits only"
    value = int(name)
    if value > MAX_VERSION:
        return f"version numbers go up to {MAX_VERSION} (2^53 - 1)"
    return value


def parse_versions(text: str) -> tuple[int, ...]:
    """``"1,3"`` as (1, 3).

    Raises:
        ValueError: naming the bad entry.
    """
    versions: list[int] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        value = parse_version_name(part)
        if isinstance(value, str):
            raise ValueError(f"'{part[:20]}' is not a version number: {value}")
        versions.append(value)
    if len(versions) > MAX_LISTED:
        raise ValueError(f"at most {MAX_LISTED} versions may be listed")
    return tuple(sorted(set(versions)))


def parse_labels(text: str) -> dict[str, int]:
    """``"stable=1,canary=2"`` as {"stable": 1, "canary": 2}.

    Raises:
        ValueError: naming the bad entry.
    """
    labels: dict[str, int] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        name, sep, number = (s.strip() for s in part.partition("="))
        if not sep or not LABEL_PATTERN.fullmatch(name):
            raise ValueError(
                f"'{part[:40]}' is not label=version (a label is a letter, then up to 31 "
                "letters, digits, '_' or '-')"
            )
        value = parse_version_name(number)
        if isinstance(value, str):
            raise ValueError(f"label '{name}': '{number[:20]}' is not a version number: {value}")
        if name in labels:
            raise ValueError(f"label '{name}' is given twice")
        labels[name] = value
    if len(labels) > MAX_LISTED:
        raise ValueError(f"at most {MAX_LISTED} labels may be given")
    return labels


@dataclass(frozen=True)
class Gate:
    """The promotion gate's settings."""

    tolerance: float = 0.005
    """How far a newer version's test accuracy may fall below the baseline's."""
    min_accuracy: float = 0.0
    """The lowest test accuracy a newer version may have."""

    def hold_reason(
        self, report: ModelReport | None, baseline: int, baseline_report: ModelReport | None
    ) -> str | None:
        """Why a version with this ``metrics.json`` must not replace ``baseline``, or None."""
        accuracy = report.test_accuracy if report is not None else None
        if accuracy is None:
            return (
                f"metrics.json gives no test accuracy to compare with version {baseline}'s; "
                "pin the version to serve it anyway"
            )
        if accuracy < self.min_accuracy:
            return (
                f"test accuracy {accuracy:.4f} is below the floor {self.min_accuracy:.4f} "
                "(DIGITS_PROMOTION_MIN_ACCURACY)"
            )
        baseline_accuracy = baseline_report.test_accuracy if baseline_report is not None else None
        if baseline_accuracy is not None and accuracy < baseline_accuracy - self.tolerance:
            return (
                f"test accuracy {accuracy:.4f} is more than {self.tolerance:.4f} below version "
                f"{baseline}'s {baseline_accuracy:.4f} (DIGITS_PROMOTION_TOLERANCE)"
            )
        # Measured at training time on the same held-out digits as the version then served:
        # the only comparison on real handwriting the files can make.
        real = report.real_digits if report is not None else None
        if (
            real is not None
            and real.baseline_accuracy is not None
            and real.accuracy < real.baseline_accuracy - self.tolerance
        ):
            return (
                f"real-digit accuracy {real.accuracy:.4f} on {real.items} held-out labelled "
                f"digits is more than {self.tolerance:.4f} below version "
                f"{real.baseline_version}'s {real.baseline_accuracy:.4f} on the same digits "
                f"(DIGITS_PROMOTION_TOLERANCE), whatever its test accuracy {accuracy:.4f}"
            )
        return None

    def promote(
        self, versions: Iterable[int], report_of: Callable[[int], ModelReport | None]
    ) -> tuple[list[int], dict[int, str]]:
        """Walk ``versions`` from the oldest: (those accepted, oldest first; those held, why).

        The first version is accepted whatever its report; each newer one is compared with the
        last accepted (:meth:`hold_reason`). The last accepted is what ``latest`` serves.
        """
        accepted: list[int] = []
        held: dict[int, str] = {}
        for version in sorted(versions):
            if accepted:
                baseline = accepted[-1]
                reason = self.hold_reason(report_of(version), baseline, report_of(baseline))
                if reason is not None:
                    held[version] = reason
                    continue
            accepted.append(version)
        return accepted, held


@dataclass(frozen=True)
class VersionPolicy:
    """Which versions to load and which one answers by default; see the module docstring."""

    kind: PolicyKind = "latest"
    versions: tuple[int, ...] = ()
    """The pinned versions (``specific``)."""
    latest_versions: int = 1
    """How many of the newest gate-passing versions ``latest`` loads (the newest answers)."""
    labels: Mapping[str, int] = field(default_factory=dict)
    default_label: str | None = None
    gate: Gate = field(default_factory=Gate)

    def __post_init__(self) -> None:
        if not 1 <= self.latest_versions <= MAX_LISTED:
            raise ValueError(f"'latest' loads 1 to {MAX_LISTED} versions")
        if len(self.labels) > MAX_LISTED:
            raise ValueError(f"at most {MAX_LISTED} labels may be given")
        for label in self.labels:
            if not LABEL_PATTERN.fullmatch(label):
                raise ValueError(
                    f"'{label[:40]}' is not a label (a letter, then up to 31 letters, digits, "
                    "'_' or '-')"
                )
        if self.kind == "specific" and not self.versions:
            raise ValueError(
                "the 'specific' version policy needs the versions to serve (DIGITS_VERSIONS)"
            )
        if self.default_label is not None and self.default_label not in self.labels:
            raise ValueError(
                f"the default label '{self.default_label}' is not one of the version labels "
                f"({', '.join(self.labels) or 'none given'}; DIGITS_VERSION_LABELS)"
            )

    def describe(self) -> str:
        """One line for logs and ``/model``."""
        text: str = self.kind
        if self.kind == "latest" and self.latest_versions > 1:
            text += f" {self.latest_versions}"
        if self.kind == "specific":
            text += " " + ",".join(map(str, self.versions))
        if self.labels:
            text += "; labels " + ",".join(f"{k}={v}" for k, v in self.labels.items())
        if self.default_label:
            text += f"; default label {self.default_label}"
        return text
