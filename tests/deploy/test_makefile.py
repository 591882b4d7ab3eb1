"""`make serve` starts the service the way the image does: the launcher, allocator capped; `make
bench` runs benchmarks that start."""

from __future__ import annotations

import shlex
import shutil
import subprocess

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
