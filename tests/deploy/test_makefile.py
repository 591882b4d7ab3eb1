"""`make serve` starts the service the way the image does: the launcher, allocator capped; `make
bench` runs benchmarks that start."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from harness.servers import LAUNCHER, MALLOC_ARENA_MAX
from tests.deploy.conftest import REPO


def test_make_serve_runs_the_launcher_with_the_allocator_capped() -> None:
    make = shutil.which("make")
    if make is None:
        pytest.skip("make is not installed")
    # -n prints the commands without running them, expanded as make would run them.
    printed = subprocess.run(
        [make, "-n", "serve", "PORT=8123"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    (line,) = [line for line in printed if LAUNCHER in line]
    words = shlex.split(line)
    assert words[0] == f"MALLOC_ARENA_MAX={MALLOC_ARENA_MAX}"
    assert words[1].endswith("/python")
    assert words[2:] == ["-m", LAUNCHER, "--host", "127.0.0.1", "--port", "8123"]


@pytest.mark.slow
def test_make_bench_commands_start() -> None:
    # Each benchmark `make bench` runs must get past its imports as the Makefile calls it (a
    # script run as a file has no `benchmarks` package on its path unless it adds one).
    make = shutil.which("make")
    if make is None:
        pytest.skip("make is not installed")
    printed = subprocess.run(
        [make, "-n", "bench"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    commands = [shlex.split(line) for line in printed if "benchmarks" in line]
    assert len(commands) >= 3
    for words in commands:
        python = words[0]
        target = words[1:3] if words[1] == "-m" else words[1:2]
        result = subprocess.run(
            [python, *target, "--help"], cwd=REPO, capture_output=True, text=True, timeout=120
        )
        assert result.returncode == 0, f"{shlex.join(words)}: {result.stderr[-600:]}"
        assert "usage:" in result.stdout


# --- the Python the venv is made with --------------------------------------------------------


def fake_python(directory: Path, version: str) -> Path:
    """An executable that answers every command with ``version``, as ``python -c`` printing
    ``sys.version_info`` would, and records its arguments in ``calls.log`` beside it."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "python"
    path.write_text(f'#!/bin/sh\necho "$@" >> "{directory}/calls.log"\necho {version}\n')
    path.chmod(0o755)
    return path


def run_make(*words: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    make = shutil.which("make")
    if make is None:
        pytest.skip("make is not installed")
    environment = {k: v for k, v in os.environ.items() if k not in {"PYTHON", "VENV"}}
    return subprocess.run(
        [make, *words],
        cwd=REPO,
        env={**environment, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_supported_pythons_are_the_ones_the_lock_covers() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    lowest = re.fullmatch(r">=\s*3\.(\d+)", project["project"]["requires-python"])
    assert lowest is not None
    bounds = {
        int(minor)
        for marker in project["tool"]["uv"]["environments"]
        for minor in re.findall(r"python_full_version < '3\.(\d+)'", marker)
    }
    assert len(bounds) == 1, "one upper bound for every platform"
    expected = [f"3.{minor}" for minor in range(int(lowest[1]), bounds.pop())]
    supported = re.search(r"^PYTHON_SUPPORTED\s*:=(.*)$", (REPO / "Makefile").read_text(), re.M)
    assert supported is not None
    assert supported[1].split() == expected


@pytest.mark.parametrize("version", ["3.10.12", "3.14.0", "2.7.18"])
def test_an_unsupported_python_is_refused_before_anything_is_made(
    tmp_path: Path, version: str
) -> None:
    python = fake_python(tmp_path / "interpreter", version)
    venv = tmp_path / "venv"
    result = run_make("serve", f"PYTHON={python}", f"VENV={venv}")
    assert result.returncode != 0
    assert f"is Python {version}" in result.stderr, result.stderr
    assert "3.11, 3.12 or 3.13" in result.stderr
    assert "make serve PYTHON=python3.11" in result.stderr
    assert not venv.exists()
    # Asked its version, never to make a venv.
    calls = (tmp_path / "interpreter" / "calls.log").read_text().splitlines()
    assert calls
    assert all(call.startswith("-c ") for call in calls), calls


def test_a_missing_python_is_named(tmp_path: Path) -> None:
    result = run_make(
        "install", f"PYTHON={tmp_path / 'no-such-python'}", f"VENV={tmp_path / 'venv'}"
    )
    assert result.returncode != 0
    assert "not a Python that runs here" in result.stderr
    assert not (tmp_path / "venv").exists()


@pytest.mark.parametrize("version", ["3.11.9", "3.13.1"])
def test_a_supported_python_passes_the_check(tmp_path: Path, version: str) -> None:
    python = fake_python(tmp_path / "interpreter", version)
    result = run_make("python-check", f"PYTHON={python}", f"VENV={tmp_path / 'venv'}")
    assert result.returncode == 0, result.stderr


def test_a_venv_made_by_an_unsupported_python_is_not_reused(tmp_path: Path) -> None:
    # What an earlier `make serve` with Python 3.10 left behind: a venv, pip install failed.
    venv = tmp_path / "venv"
    fake_python(venv / "bin", "3.10.12")
    python = fake_python(tmp_path / "interpreter", "3.11.9")
    result = run_make("serve", f"PYTHON={python}", f"VENV={venv}")
    assert result.returncode != 0
    assert f"{venv} was made by Python 3.10.12" in result.stderr, result.stderr
    assert f"make clean VENV={venv}" in result.stderr
    calls = (venv / "bin" / "calls.log").read_text().splitlines()
    assert all(call.startswith("-c ") for call in calls), "nothing installed into it"


def test_a_venv_of_another_version_than_the_python_asked_for_is_named(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    fake_python(venv / "bin", "3.12.4")
    python = fake_python(tmp_path / "interpreter", "3.11.9")
    result = run_make("install", f"PYTHON={python}", f"VENV={venv}")
    assert result.returncode != 0
    assert "was made by Python 3.12.4, not by" in result.stderr, result.stderr
    # A PYTHON that is only the environment's default (not asked for here) keeps the venv.
    kept = run_make("python-check", f"VENV={venv}", env={"PYTHON": str(python)})
    assert kept.returncode == 0, kept.stderr
