"""The dependency lock: every dependency pinned with hashes, consistent with pyproject.toml, and
what the Dockerfile and the Makefile install.

``uv.lock`` is the resolution (``make lock``); ``requirements/{runtime,train,dev}.txt`` are its
exports with hashes, installed by pip with ``--require-hashes --no-deps``. A dependency added to
pyproject.toml without running ``make lock`` fails here, naming the command.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

from tests.deploy.conftest import REPO
from tests.deploy.formats import Dockerfile

RELOCK = (
    "pyproject.toml and the lock disagree: run `make lock` and commit uv.lock and requirements/"
)
# Lock file -> the extras of pyproject.toml it holds (besides the runtime dependencies).
LOCK_FILES = {"runtime": [], "train": ["train"], "dev": ["dev"]}


def _environment(python: str, system: str, machine: str) -> dict[str, str]:
    """PEP 508 marker variables of a target platform."""
    return {
        "python_version": python,
        "python_full_version": f"{python}.0",
        "sys_platform": system,
        "platform_system": {"linux": "Linux", "darwin": "Darwin"}[system],
        "platform_machine": machine,
        "os_name": "posix",
        "implementation_name": "cpython",
        "platform_python_implementation": "CPython",
        "extra": "",
    }


# Where the lock must install: the image and CI (Linux x86-64, Python 3.11), arm64 images, a
# newer Python, and a Mac.
PLATFORMS = {
    "linux-x86_64-py3.11": _environment("3.11", "linux", "x86_64"),
    "linux-aarch64-py3.11": _environment("3.11", "linux", "aarch64"),
    "linux-x86_64-py3.12": _environment("3.12", "linux", "x86_64"),
    "darwin-arm64-py3.12": _environment("3.12", "darwin", "arm64"),
}


@dataclass(frozen=True)
class Pin:
    """One line of an exported requirements file."""

    name: str
    version: str
    marker: Marker | None
    hashes: frozenset[str]

    def applies(self, environment: dict[str, str]) -> bool:
        return self.marker is None or self.marker.evaluate(environment)


def parse_lock_file(text: str) -> list[Pin]:
    """The pins of a ``pip install -r`` file written by ``uv export --hashes``.

    Anything that is not ``name==version ; marker --hash=...`` (an editable, a URL, a range)
    fails: a lock pins exact versions.
    """
    pins: list[Pin] = []
    logical = re.sub(r"\\\n", " ", text)
    for raw in logical.splitlines():
        line = raw.split("#", 1)[0].strip() if not raw.lstrip().startswith("#") else ""
        if not line:
            continue
        hashes = frozenset(re.findall(r"--hash=(sha256:[0-9a-f]{64})", line))
        requirement = Requirement(re.sub(r"\s--hash=\S+", "", line).strip())
        (specifier,) = list(requirement.specifier) or [None]
        assert specifier is not None, f"not pinned: {line}"
        assert specifier.operator == "==", f"not pinned: {line}"
        assert hashes, f"no hash: {line}"
        assert requirement.url is None, f"not from the index: {line}"
        pins.append(
            Pin(canonicalize_name(requirement.name), specifier.version, requirement.marker, hashes)
        )
    return pins


def declared(project: dict[str, Any], extras: list[str]) -> Iterator[Requirement]:
    """The runtime dependencies plus those of ``extras``, the project's own extras expanded."""
    own = canonicalize_name(project["name"])
    optional: dict[str, list[str]] = project.get("optional-dependencies", {})
    seen: set[str] = set()

    def expand(lines: list[str]) -> Iterator[Requirement]:
        for line in lines:
            requirement = Requirement(line)
            if canonicalize_name(requirement.name) == own:
                for extra in sorted(requirement.extras - seen):
                    seen.add(extra)
                    yield from expand(optional[extra])
            else:
                yield requirement

    yield from expand(project["dependencies"])
    for extra in extras:
        if extra not in seen:
            seen.add(extra)
            yield from expand(optional[extra])


@pytest.fixture(scope="module")
def project() -> dict[str, Any]:
    project: dict[str, Any] = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return project


@pytest.fixture(scope="module")
def uv_lock() -> dict[str, Any]:
    return tomllib.loads((REPO / "uv.lock").read_text())


@pytest.fixture(scope="module")
def lock_files() -> dict[str, list[Pin]]:
    return {
        name: parse_lock_file((REPO / "requirements" / f"{name}.txt").read_text())
        for name in LOCK_FILES
    }


@pytest.mark.parametrize("platform", sorted(PLATFORMS))
@pytest.mark.parametrize("lock", sorted(LOCK_FILES))
def test_every_declared_dependency_is_pinned_within_its_range(
    project: dict[str, Any], lock_files: dict[str, list[Pin]], lock: str, platform: str
) -> None:
    environment = PLATFORMS[platform]
    for requirement in declared(project, LOCK_FILES[lock]):
        if requirement.marker is not None and not requirement.marker.evaluate(environment):
            continue
        name = canonicalize_name(requirement.name)
        pins = [p for p in lock_files[lock] if p.name == name and p.applies(environment)]
        assert len(pins) == 1, (
            f"{lock}.txt on {platform}: {name} pinned {len(pins)} times. {RELOCK}"
        )
        assert requirement.specifier.contains(pins[0].version, prereleases=True), (
            f"{lock}.txt pins {name}=={pins[0].version}, outside {requirement}. {RELOCK}"
        )


def test_x86_64_linux_gets_tensorflow_cpu_and_arm64_gets_tensorflow(
    lock_files: dict[str, list[Pin]],
) -> None:
    for lock, pins in lock_files.items():
        for platform, wanted, unwanted in [
            ("linux-x86_64-py3.11", "tensorflow-cpu", "tensorflow"),
            ("linux-aarch64-py3.11", "tensorflow", "tensorflow-cpu"),
        ]:
            names = {p.name for p in pins if p.applies(PLATFORMS[platform])}
            assert wanted in names, (lock, platform)
            assert unwanted not in names, (lock, platform)


def test_lock_files_are_exports_of_uv_lock(
    uv_lock: dict[str, Any], lock_files: dict[str, list[Pin]]
) -> None:
    locked: dict[tuple[str, str], set[str]] = {}
    for package in uv_lock["package"]:
        files = [package.get("sdist", {}), *package.get("wheels", [])]
        hashes = {f["hash"] for f in files if "hash" in f}
        locked[(canonicalize_name(package["name"]), package["version"])] = hashes
    for lock, pins in lock_files.items():
        for pin in pins:
            assert (pin.name, pin.version) in locked, f"{lock}.txt: {pin.name}=={pin.version}"
            assert pin.hashes <= locked[(pin.name, pin.version)], f"{lock}.txt: {pin.name}"


def test_runtime_lock_is_inside_the_train_lock_inside_the_dev_lock(
    lock_files: dict[str, list[Pin]],
) -> None:
    def versions(lock: str) -> set[tuple[str, str]]:
        return {(p.name, p.version) for p in lock_files[lock]}

    assert versions("runtime") < versions("train") < versions("dev")
    dev_only = {name for name, _ in versions("dev") - versions("runtime")}
    assert {"pytest", "ruff", "mypy", "matplotlib"} <= dev_only


def _marker_outcomes(marker: str | None, extras: list[str]) -> list[bool]:
    """A marker's value on every test platform with each extra: equal lists mean same marker."""
    if marker is None:
        return [True] * (len(PLATFORMS) * len(extras))
    return [
        Marker(marker).evaluate({**environment, "extra": extra})
        for environment in PLATFORMS.values()
        for extra in extras
    ]


def test_uv_lock_was_resolved_from_this_pyproject(
    project: dict[str, Any], uv_lock: dict[str, Any]
) -> None:
    (root,) = [p for p in uv_lock["package"] if p["name"] == project["name"]]
    extras = ["", *project.get("optional-dependencies", {})]
    recorded = sorted(
        (
            canonicalize_name(entry["name"]),
            tuple(sorted(entry.get("extras", []))),
            SpecifierSet(entry.get("specifier", "")),
            tuple(_marker_outcomes(entry.get("marker"), extras)),
        )
        for entry in root["metadata"]["requires-dist"]
    )
    lines = [(line, None) for line in project["dependencies"]]
    for extra, group in project.get("optional-dependencies", {}).items():
        lines += [(line, extra) for line in group]
    wanted = []
    for line, extra in lines:
        requirement = Requirement(line)
        marker = str(requirement.marker) if requirement.marker else None
        if extra is not None:
            marker = f"({marker}) and extra == '{extra}'" if marker else f"extra == '{extra}'"
        wanted.append(
            (
                canonicalize_name(requirement.name),
                tuple(sorted(requirement.extras)),
                requirement.specifier,
                tuple(_marker_outcomes(marker, extras)),
            )
        )
    assert sorted(wanted, key=str) == sorted(recorded, key=str), RELOCK


def test_the_lock_parser_refuses_what_is_not_a_lock() -> None:
    good = "numpy==2.0.0 ; sys_platform == 'linux' \\\n    --hash=sha256:" + "a" * 64 + "\n"
    (pin,) = parse_lock_file(f"# header\n{good}    # via\n    #   tensorflow\n")
    assert (pin.name, pin.version, len(pin.hashes)) == ("numpy", "2.0.0", 1)
    with pytest.raises(AssertionError, match="not pinned"):
        parse_lock_file("numpy>=2 --hash=sha256:" + "a" * 64)
    with pytest.raises(AssertionError, match="no hash"):
        parse_lock_file("numpy==2.0.0\n")


# ----------------------------------------------------------------------------- the client's lock

CLIENT = REPO / "client" / "pyproject.toml"


@pytest.fixture(scope="module")
def client_lock() -> list[Pin]:
    return parse_lock_file((REPO / "requirements" / "client.txt").read_text())


def _locked_packages(uv_lock: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (canonicalize_name(package["name"]), package["version"]): package
        for package in uv_lock["package"]
    }


@pytest.mark.parametrize("platform", sorted(PLATFORMS))
def test_client_lock_pins_what_the_client_needs_at_uv_locks_versions(
    uv_lock: dict[str, Any], client_lock: list[Pin], platform: str
) -> None:
    # requirements/client.txt (the client image's, `make lock`): the client's dependencies and
    # its build backend, each at the version and with hashes uv.lock holds, and with every
    # dependency of every pin pinned too, since pip installs it with --no-deps.
    environment = PLATFORMS[platform]
    client = tomllib.loads(CLIENT.read_text())
    locked = _locked_packages(uv_lock)
    pins = {p.name: p for p in client_lock if p.applies(environment)}
    assert len(pins) == len([p for p in client_lock if p.applies(environment)]), "one pin each"
    wanted = [*client["project"]["dependencies"], *client["build-system"]["requires"]]
    for line in wanted:
        requirement = Requirement(line)
        pin = pins.get(canonicalize_name(requirement.name))
        assert pin is not None, f"client.txt on {platform}: {requirement.name} missing. {RELOCK}"
        assert requirement.specifier.contains(pin.version), f"client.txt: {pin}. {RELOCK}"
    for pin in pins.values():
        package = locked.get((pin.name, pin.version))
        assert package is not None, f"client.txt: {pin.name}=={pin.version} is not uv.lock's"
        files = [package.get("sdist", {}), *package.get("wheels", [])]
        assert pin.hashes <= {f["hash"] for f in files if "hash" in f}, pin.name
        for dependency in package.get("dependencies", []):
            marker = dependency.get("marker")
            if marker is not None and not Marker(marker).evaluate(environment):
                continue
            assert canonicalize_name(dependency["name"]) in pins, (
                f"client.txt on {platform}: {pin.name} needs {dependency['name']}. {RELOCK}"
            )


def test_make_lock_writes_the_client_lock() -> None:
    plan = _make("-B", "lock").replace("\\\n", " ").splitlines()
    (command,) = [line for line in plan if "scripts/lock_client.py" in line]
    assert command.split()[0].endswith("/python")
    assert re.search(r"--uv \S+/uv$", command), "the uv `make lock` installs"
    assert plan.index(command) > max(i for i, line in enumerate(plan) if "uv lock" in line)
    script = (REPO / "scripts" / "lock_client.py").read_text()
    assert '"--generate-hashes"' in script
    assert '"--frozen"' in script, "constrained to what uv.lock holds, never a new resolution"
    assert (REPO / "requirements" / "client.txt").read_text().startswith("# The client image")


# ----------------------------------------------------------------------------- who installs it


def test_dockerfile_installs_the_locks(dockerfile: Dockerfile) -> None:
    for stage, lock in [("deps", "runtime"), ("train-deps", "train"), ("client-deps", "client")]:
        runs = " ".join(item.arguments for item in dockerfile.stage(stage).all("RUN"))
        assert f"pip install --require-hashes --no-deps -r {lock}.txt" in runs, stage
        copied = [item.words()[:-1] for item in dockerfile.stage(stage).all("COPY")]
        assert [f"requirements/{lock}.txt"] in copied, stage


def _make(*arguments: str, cwd: Path = REPO) -> str:
    """What ``make`` would run (``-n``: print, do not execute)."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    result = subprocess.run(
        ["make", "-n", *arguments],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "MAKEFLAGS": ""},
    )
    return result.stdout


@pytest.mark.parametrize(
    ("target", "lock"),
    [("install", "runtime"), ("serve", "runtime"), ("train", "train"), ("install-dev", "dev")],
)
def test_make_installs_the_lock_with_hashes(target: str, lock: str, tmp_path: Path) -> None:
    plan = _make("-B", target, f"VENV={tmp_path / 'venv'}")
    assert f"pip install --require-hashes --no-deps -r requirements/{lock}.txt" in plan
    assert "pip install --no-deps -e ." in plan, "the project itself, without re-resolving"
    assert not re.search(r"pip install (?!--require-hashes|--no-deps -e|--upgrade pip)", plan)


def test_make_lock_writes_every_lock_file() -> None:
    plan = _make("-B", "lock").replace("\\\n", " ")
    assert re.search(r"uv lock\b", plan)
    exports = [line for line in plan.splitlines() if "uv export" in line]
    for lock, extras in LOCK_FILES.items():
        (command,) = [line for line in exports if f"-o requirements/{lock}.txt" in line]
        assert "--hashes" in command
        assert "--frozen" in command, "exports what uv.lock holds, never a new resolution"
        assert re.findall(r"--extra (\S+)", command) == extras
        # The file was written by that command (uv puts it in the header).
        header = (REPO / "requirements" / f"{lock}.txt").read_text().splitlines()[1]
        assert f"-o requirements/{lock}.txt" in header
        assert re.findall(r"--extra (\S+)", header) == extras


def _fake_venv(root: Path) -> Path:
    """A directory that looks like an installed venv to the Makefile (python and stamps)."""
    shutil.copy(REPO / "Makefile", root / "Makefile")
    shutil.copy(REPO / "pyproject.toml", root / "pyproject.toml")
    shutil.copytree(REPO / "requirements", root / "requirements")
    venv = root / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(sys.executable)
    for stamp in ("runtime", "train", "dev"):
        (venv / f".installed-{stamp}").touch()
    return venv


def test_make_serve_installs_only_when_the_lock_changed(tmp_path: Path) -> None:
    venv = _fake_venv(tmp_path)
    plan = _make("serve", f"VENV={venv}", "HOST=127.0.0.2", "PORT=8123", cwd=tmp_path)
    assert "pip install" not in plan, "an installed venv serves without touching the network"
    assert "--host 127.0.0.2 --port 8123" in plan
    future = (venv / ".installed-runtime").stat().st_mtime + 10
    os.utime(tmp_path / "requirements" / "runtime.txt", (future, future))
    plan = _make("serve", f"VENV={venv}", cwd=tmp_path)
    assert "pip install --require-hashes --no-deps -r requirements/runtime.txt" in plan
    assert "--host 127.0.0.1 --port 8000" in plan, "loopback and 8000 by default"


def test_make_test_fast_leaves_out_browser_and_real_server_tests() -> None:
    plan = _make("-B", "test-fast", "VENV=.venv")
    (selection,) = re.findall(r'pytest -m "([^"]+)"', plan)
    assert selection == "not browser and not slow"
    # What that selection keeps of the suites that start a real server or a browser: nothing.
    real_server_suites = ["tests/ops", "tests/browser", "tests/deploy/test_entrypoint.py"]
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "--collect-only",
            "-q",
            "-m",
            selection,
            *real_server_suites,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 5, result.stdout[-2000:]  # 5: no test collected
    assert re.search(r"\d+ deselected", result.stdout), result.stdout[-2000:]
