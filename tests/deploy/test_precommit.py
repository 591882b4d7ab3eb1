"""The pre-commit hooks run the project's own ruff and mypy, offline, and catch what lint does.

The hooks are run for real by ``pre-commit`` in a scratch git repository holding this project's
configuration (.pre-commit-config.yaml and pyproject.toml), with ``.venv`` pointing at the
virtualenv running the tests: a clean module passes, a module with a lint error, a format error
and a type error fails on each.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from tests.deploy.conftest import REPO

CLEAN = '''"""A module."""


def double(value: int) -> int:
    """Twice the value."""
    return 2 * value
'''
BROKEN = '''"""A module."""
import os


def double(value: int) -> int:
    """Twice the value."""
    return   "twice"
'''


def test_hooks_are_local_and_use_the_venv() -> None:
    config = yaml.safe_load((REPO / ".pre-commit-config.yaml").read_text())
    (repo,) = config["repos"]
    assert repo["repo"] == "local", "no hook repository to fetch: works offline"
    hooks = {hook["id"]: hook for hook in repo["hooks"]}
    assert set(hooks) == {"ruff-check", "ruff-format", "mypy"}
    for hook in hooks.values():
        assert hook["language"] == "system"
        assert hook["entry"].startswith(".venv/bin/"), "the lock's versions, as `make lint`"
    assert hooks["mypy"]["pass_filenames"] is False, "the configured packages, as `make lint`"


def _run(command: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, check=False)


@pytest.fixture
def scratch_repo(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    root = tmp_path / "repo"
    root.mkdir()
    for name in (".pre-commit-config.yaml", "pyproject.toml"):
        shutil.copy(REPO / name, root / name)
    (root / ".venv").symlink_to(Path(sys.executable).parent.parent)
    # The packages mypy checks as a whole (pyproject.toml's [tool.mypy] files).
    for package in tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["mypy"]["files"]:
        (root / package).mkdir()
        (root / package / "__init__.py").write_text(f'"""The {package} package."""\n')
    (root / "app" / "module.py").write_text(CLEAN)
    env = {
        **os.environ,
        "PRE_COMMIT_HOME": str(tmp_path / "pre-commit-home"),
        "MYPY_CACHE_DIR": str(tmp_path / "mypy-cache"),
        "RUFF_CACHE_DIR": str(tmp_path / "ruff-cache"),
    }
    assert _run(["git", "init", "-q"], root, env).returncode == 0
    return root, env


def test_hooks_pass_a_clean_tree_and_catch_each_kind_of_error(
    scratch_repo: tuple[Path, dict[str, str]],
) -> None:
    root, env = scratch_repo
    pre_commit = [sys.executable, "-m", "pre_commit", "run", "--all-files"]
    _run(["git", "add", "-A"], root, env)
    clean = _run(pre_commit, root, env)
    assert clean.returncode == 0, clean.stdout + clean.stderr

    (root / "app" / "module.py").write_text(BROKEN)
    _run(["git", "add", "-A"], root, env)
    broken = _run(pre_commit, root, env)
    assert broken.returncode == 1, broken.stdout + broken.stderr
    report = broken.stdout
    assert "F401" in report, report  # ruff check: the unused import
    assert "- hook id: ruff-format" in report, report  # ruff format --check failed too
    assert 'Incompatible return value type (got "str", expected "int")' in report, report
