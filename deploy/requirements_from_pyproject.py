"""Print the project's dependencies from pyproject.toml as requirement lines.

The Dockerfile installs dependencies in a layer that only ``pyproject.toml`` (and this script)
can invalidate, before any source is copied, so a code change rebuilds in seconds. pyproject.toml
stays the single list of dependencies: nothing here names a package except through options.

    python requirements_from_pyproject.py [--extra train] [--tensorflow-package tensorflow-cpu]
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from pathlib import Path

# PEP 508: a name, optionally followed by [extras]; the rest (versions, markers) is kept verbatim.
_REQUIREMENT = re.compile(r"^\s*(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[(?P<extras>[^\]]*)\])?")


def _normalize(name: str) -> str:
    """PEP 503 normalized form, so ``Foo_Bar`` and ``foo-bar`` compare equal."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirements(
    pyproject: dict[str, object], extras: list[str], tensorflow_package: str = "tensorflow"
) -> list[str]:
    """The runtime dependencies plus those of ``extras``, in declaration order, without repeats.

    An extra that names the project itself (``mnist-digits[train,bench]``) is expanded in place,
    since pip cannot install the project before its source is in the image. ``tensorflow`` is
    renamed to ``tensorflow_package`` keeping its version bounds (``tensorflow-cpu`` is the same
    library without the CUDA kernels).
    """
    project = pyproject["project"]
    if not isinstance(project, dict):
        raise ValueError("pyproject.toml has no [project] table")
    own_name = _normalize(str(project["name"]))
    optional: dict[str, list[str]] = project.get("optional-dependencies", {})
    lines: list[str] = []
    seen_extras: set[str] = set()

    def add(requirement: str) -> None:
        match = _REQUIREMENT.match(requirement)
        if match is None:
            raise ValueError(f"not a PEP 508 requirement: {requirement!r}")
        name = _normalize(match["name"])
        if name == own_name:
            for extra in (match["extras"] or "").split(","):
                add_extra(extra.strip())
            return
        if name == "tensorflow" and tensorflow_package != "tensorflow":
            requirement = tensorflow_package + requirement[match.end("name") :]
        if requirement not in lines:
            lines.append(requirement)

    def add_extra(extra: str) -> None:
        if not extra or extra in seen_extras:
            return
        if extra not in optional:
            raise ValueError(f"unknown extra {extra!r}; pyproject.toml declares {sorted(optional)}")
        seen_extras.add(extra)
        for requirement in optional[extra]:
            add(requirement)

    for requirement in project.get("dependencies", []):
        add(requirement)
    for extra in extras:
        add_extra(extra)
    return lines


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point: print one requirement per line on stdout."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pyproject", type=Path, default=Path("pyproject.toml"))
    parser.add_argument("--extra", action="append", default=[], help="optional extra to add")
    parser.add_argument(
        "--tensorflow-package",
        default="tensorflow",
        help="distribution that provides TensorFlow (tensorflow or tensorflow-cpu)",
    )
    args = parser.parse_args(argv)
    with args.pyproject.open("rb") as file:
        pyproject = tomllib.load(file)
    try:
        lines = requirements(pyproject, args.extra, args.tensorflow_package)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
