"""``make lock``'s last step: requirements/client.txt, the lock of the client image.

The client (client/pyproject.toml: the ``digits`` command line) is a project of its own, outside
uv.lock's project, so ``uv export`` cannot write its lock. This resolves its dependencies and its
build backend with ``uv pip compile``, constrained to the versions uv.lock holds (its dev export
holds every package the client uses), and keeps of each pin only the hashes uv.lock lists: the
same files the suite was installed from, never a wheel uv.lock left out (PyPI lists files for
platforms and Pythons outside uv.lock's environments too).

    python scripts/lock_client.py [--uv .venv/bin/uv]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CLIENT = REPO / "client" / "pyproject.toml"
OUT = REPO / "requirements" / "client.txt"
HEADER = """\
# The client image's lock (`make lock`: scripts/lock_client.py): client/pyproject.toml's
# dependencies and build backend at uv.lock's versions, with uv.lock's hashes.
"""
_PIN = re.compile(r"^(?P<name>[A-Za-z0-9_.-]+)==(?P<version>\S+)")
_HASH = re.compile(r"--hash=(sha256:[0-9a-f]{64})")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def locked_hashes() -> dict[tuple[str, str], set[str]]:
    """(name, version) → the hashes of the files uv.lock holds for it."""
    lock = tomllib.loads((REPO / "uv.lock").read_text())
    hashes: dict[tuple[str, str], set[str]] = {}
    for package in lock["package"]:
        files = [package.get("sdist", {}), *package.get("wheels", [])]
        key = (canonical(package["name"]), package["version"])
        hashes[key] = {f["hash"] for f in files if "hash" in f}
    return hashes


def keep_locked_hashes(compiled: str, hashes: dict[tuple[str, str], set[str]]) -> str:
    """The compiled requirements with each pin's hashes narrowed to uv.lock's."""
    lines: list[str] = []
    for entry in re.sub(r"\s*\\\n\s*", " ", compiled).splitlines():
        if not entry.strip() or entry.lstrip().startswith("#"):
            continue
        match = _PIN.match(entry)
        if match is None:
            raise SystemExit(f"lock_client: not a pin: {entry}")
        key = (canonical(match["name"]), match["version"])
        if key not in hashes:
            raise SystemExit(f"lock_client: {key[0]}=={key[1]} is not in uv.lock")
        kept = sorted(set(_HASH.findall(entry)) & hashes[key])
        if not kept:
            raise SystemExit(f"lock_client: no file of {key[0]}=={key[1]} is in uv.lock")
        requirement = _HASH.sub("", entry).strip()
        lines.append(" \\\n".join([requirement, *(f"    --hash={h}" for h in kept)]))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--uv", default=str(REPO / ".venv" / "bin" / "uv"), help="uv to run")
    args = parser.parse_args(argv)
    build_requires = tomllib.loads(CLIENT.read_text())["build-system"]["requires"]
    with tempfile.TemporaryDirectory() as temporary:
        constraints = Path(temporary) / "constraints.txt"
        extra = Path(temporary) / "build-requires.txt"
        extra.write_text("\n".join(build_requires) + "\n")
        export = [args.uv, "export", "--frozen", "--quiet", "--format", "requirements-txt"]
        export += ["--no-emit-project", "--no-hashes", "--extra", "dev", "-o", str(constraints)]
        subprocess.run(export, cwd=REPO, check=True)
        compile_ = [args.uv, "pip", "compile", "--quiet", str(CLIENT), str(extra), "--universal"]
        compile_ += ["--python-version", "3.11", "--generate-hashes", "--no-header"]
        compile_ += ["--no-annotate", "-c", str(constraints)]
        compiled = subprocess.run(
            compile_, cwd=REPO, check=True, capture_output=True, text=True
        ).stdout
    OUT.write_text(HEADER + keep_locked_hashes(compiled, locked_hashes()))
    print(f"wrote {OUT.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
