"""`make serve` starts the service the way the image does: the launcher, allocator capped."""

from __future__ import annotations

import shlex
import shutil
import subprocess

import pytest

from tests.deploy.conftest import REPO
from tests.support.servers import LAUNCHER, MALLOC_ARENA_MAX


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
