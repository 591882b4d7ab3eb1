"""The client package installs and imports without TensorFlow (or NumPy, or Pillow).

Checked offline, three ways: the dependencies its pyproject.toml declares, the metadata its
build backend writes from it (what pip reads), and everything those dependencies pull in by the
lock. Importing the client, command line included, loads none of the service.
"""

from __future__ import annotations

import email.parser
import importlib
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.client.conftest import REPO

CLIENT = REPO / "client"
ALLOWED = {"httpx", "pydantic", "typer", "rich"}
HEAVY = {"tensorflow", "tensorflow-cpu", "keras", "numpy", "pillow", "mnist-digits"}


def client_project() -> dict[str, Any]:
    project: dict[str, Any] = tomllib.loads((CLIENT / "pyproject.toml").read_text())["project"]
    return project


def test_the_client_declares_only_httpx_pydantic_typer_and_rich() -> None:
    project = client_project()
    assert project["name"] == "mnist-digits-client"
    names = {canonicalize_name(Requirement(line).name) for line in project["dependencies"]}
    assert names == ALLOWED
    assert "optional-dependencies" not in project
    assert project["scripts"] == {"digits": "digits_client.cli:main"}


def test_the_built_metadata_requires_no_tensorflow(tmp_path: Path) -> None:
    # The build backend's own metadata (what `pip install ./client` resolves), made offline from
    # a copy so the work tree gets no egg-info.
    source = tmp_path / "client"
    shutil.copytree(CLIENT, source, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    build = (
        "import sys; from setuptools import build_meta; "
        "print(build_meta.prepare_metadata_for_build_wheel(sys.argv[1]))"
    )
    (tmp_path / "meta").mkdir()
    result = subprocess.run(
        [sys.executable, "-c", build, str(tmp_path / "meta")],
        cwd=source,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    dist_info = tmp_path / "meta" / result.stdout.strip().splitlines()[-1]
    metadata = email.parser.Parser().parsestr((dist_info / "METADATA").read_text())
    assert metadata["Name"] == "mnist-digits-client"
    required = {canonicalize_name(Requirement(r).name) for r in metadata.get_all("Requires-Dist")}
    assert required == ALLOWED
    entry_points = (dist_info / "entry_points.txt").read_text()
    assert re.search(r"^digits = digits_client\.cli:main$", entry_points, re.M)


def test_nothing_the_client_depends_on_pulls_tensorflow_in() -> None:
    lock = tomllib.loads((REPO / "uv.lock").read_text())
    dependencies = {
        canonicalize_name(package["name"]): {
            canonicalize_name(d["name"]) for d in package.get("dependencies", [])
        }
        for package in lock["package"]
    }
    assert set(dependencies) >= ALLOWED, "the client's dependencies are locked (dev extra)"
    seen: set[str] = set()
    todo = list(ALLOWED)
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo += dependencies.get(name, set())
    assert seen & HEAVY == set()
    assert len(seen) < 25, sorted(seen)


def test_importing_the_client_loads_none_of_the_service() -> None:
    probe = (
        "import sys, digits_client, digits_client.cli, digits_client.run; "
        "print(' '.join(sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'app', 'training', 'harness', 'tensorflow', 'numpy', 'PIL'})))"
    )
    path = [str(CLIENT), *os.environ.get("PYTHONPATH", "").split(os.pathsep)]
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in path if p)}
    result = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=CLIENT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert result.stdout.strip() == ""
    assert importlib.import_module("digits_client.cli").main


def test_make_install_dev_installs_the_client_editable(tmp_path: Path) -> None:
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    plan = subprocess.run(
        ["make", "-n", "-B", "install-dev", f"VENV={tmp_path / 'venv'}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "MAKEFLAGS": ""},
    ).stdout
    assert "pip install --no-deps -e client" in plan
    install = subprocess.run(
        ["make", "-n", "-B", "install", f"VENV={tmp_path / 'venv'}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "MAKEFLAGS": ""},
    ).stdout
    assert "-e client" not in install, "the service's own install does without it"
