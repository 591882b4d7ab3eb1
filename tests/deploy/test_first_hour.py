"""A newcomer's first hour: the sample images, and README's own commands run on a fresh copy.

The curl examples of README.md and of the documentation pages (docs/*.md) are run the same way.

The fresh copy holds what a clone holds (``git ls-files``: tracked and new files, not ignored
ones) in a temporary directory, outside this team's layout (no ``../shared`` beside it). The
commands are taken from README.md and run as written, with three things added: ``VENV=`` points
``make`` at a virtualenv that mirrors the one running the tests (symlinks, with the install
stamps ``make`` leaves, so nothing is downloaded: the point is the commands, not pip), the port
is a free one instead of 8000, and the trainer downloads MNIST from a local HTTP server standing
in for the public mirror (``MNIST_MIRROR_URL``; this machine has no internet). The trainer checks
the SHA-256 of the official files, so the mirror serves the real MNIST, and training is kept
short by README's own one-epoch command.
"""

from __future__ import annotations

import functools
import http.server
import importlib.util
import io
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from app.main import create_app
from app.settings import Settings
from harness.mnist import MISSING
from harness.mnist import mnist_dir as find_mnist_dir
from harness.servers import HOST, free_port, wait_until_ready
from tests.deploy.conftest import REPO

READY_WITHIN_SECONDS = 120.0  # bounds on waiting, not speed claims
TRAIN_WITHIN_SECONDS = 300.0


def _examples_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "make_examples", REPO / "examples" / "make_examples.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


EXAMPLES: dict[str, str] = _examples_module().EXAMPLES


def _fenced_commands(markdown: str) -> list[str]:
    """Every line of every fenced shell block, continuation lines joined, comments kept."""
    blocks: list[str] = []
    language: str | None = None  # inside a block: its language
    for line in markdown.splitlines(keepends=True):
        if line.startswith("```"):
            if language is None:
                language = line[3:].strip()
                blocks.append("")
            else:
                if language not in {"", "bash", "sh", "console"}:
                    blocks.pop()
                language = None
        elif language is not None:
            blocks[-1] += line
    lines: list[str] = []
    for block in blocks:
        lines += [line.strip() for line in re.sub(r"\\\n", " ", block).splitlines()]
    return [line for line in lines if line]


def _words(line: str) -> list[str]:
    lexer = shlex.shlex(line, posix=True)
    lexer.whitespace_split = True
    lexer.commenters = "#"
    return list(lexer)


README_COMMANDS = [_words(line) for line in _fenced_commands((REPO / "README.md").read_text())]
#: The commands of README.md and of every documentation page.
DOC_PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
DOC_COMMANDS = [_words(line) for page in DOC_PAGES for line in _fenced_commands(page.read_text())]


# ----------------------------------------------------------------------------- the examples


def test_examples_are_what_the_script_draws() -> None:
    module = _examples_module()
    assert set(EXAMPLES) == {p.name for p in (REPO / "examples").glob("*.png")}
    assert len(EXAMPLES) >= 2
    for name, digits in EXAMPLES.items():
        shipped = np.asarray(Image.open(REPO / "examples" / name).convert("L"))
        assert np.array_equal(shipped, np.asarray(module.render(digits))), name


def test_examples_are_read_right_by_the_bundled_model() -> None:
    with TestClient(create_app(Settings(models_dir=REPO / "models" / "mnist"))) as client:
        for name, digits in EXAMPLES.items():
            upload = {"file": (name, (REPO / "examples" / name).read_bytes(), "image/png")}
            if len(digits) == 1:
                answer = client.post("/predict", files=upload).json()
                assert str(answer["digit"]) == digits, (name, answer)
            else:
                answer = client.post("/recognize", files=upload).json()
                assert answer["digits"] == digits, (name, answer)


def _uploads(commands: list[list[str]]) -> list[str]:
    return [
        word.split("@", 1)[1]
        for words in commands
        if words and words[0] == "curl"
        for word in words
        if "=@" in word
    ]


def test_readme_uses_every_example_and_no_missing_file() -> None:
    uploads = _uploads(README_COMMANDS)
    assert uploads, "README's curl commands upload no file"
    assert {Path(p).name for p in uploads} >= set(EXAMPLES)
    for path in _uploads(DOC_COMMANDS):
        assert (REPO / path).is_file(), f"the docs upload {path}, which the repository lacks"


def test_readme_training_commands_work_outside_this_teams_layout() -> None:
    readme = (REPO / "README.md").read_text()
    train_section = readme[readme.index("## Train") :].split("\n## ", 1)[0]
    model_page = (REPO / "docs" / "model.md").read_text()
    for line in _fenced_commands(train_section + model_page):
        assert "../shared" not in line, f"a training command needs this team's layout: {line}"
    assert "--no-report" in model_page, "a serve-only install is told about --no-report"


# ----------------------------------------------------------------------------- README, run


def _fresh_copy(destination: Path) -> Path:
    """What a clone of the repository holds, copied with its files' times."""
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout: cannot tell which files a clone would hold")
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in filter(None, (item.decode() for item in listed)):
        source = REPO / name
        if source.is_file():
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination / name)
    return destination


def _mirror_venv(destination: Path) -> Path:
    """A venv that is the one running the tests (symlinks), with make's install stamps."""
    real = Path(sys.prefix)
    destination.mkdir()
    for entry in ("bin", "lib", "pyvenv.cfg"):
        (destination / entry).symlink_to(real / entry)
    for stamp in ("runtime", "train", "dev"):
        (destination / f".installed-{stamp}").touch()
    return destination


def _environment(**extra: str) -> dict[str, str]:
    """This machine's environment without DIGITS_* or MNIST_* settings, plus ``extra``."""
    environment = {
        k: v for k, v in os.environ.items() if not k.startswith(("DIGITS_", "MNIST_", "MAKE"))
    }
    environment.update({"TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1", **extra})
    return environment


def _readme_command(first: list[str]) -> list[str]:
    matches = [words for words in README_COMMANDS if words[: len(first)] == first]
    assert matches, f"README has no `{shlex.join(first)}` command"
    return matches[0]


@pytest.fixture
def fresh(tmp_path: Path) -> tuple[Path, Path]:
    """A fresh copy of the repository and the venv make should use for it."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    copy = _fresh_copy(tmp_path / "clone")
    venv = _mirror_venv(tmp_path / "venv")
    return copy, venv


@pytest.fixture
def served(fresh: tuple[Path, Path], tmp_path: Path) -> Iterator[tuple[Path, int]]:
    """README's `make serve`, running in the fresh copy on a free port."""
    copy, venv = fresh
    port = free_port()
    command = [*_readme_command(["make", "serve"]), f"VENV={venv}", f"HOST={HOST}", f"PORT={port}"]
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command,
            cwd=copy,
            env=_environment(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # make and uvicorn in one group, stopped together below
        )
    try:
        wait_until_ready(
            f"http://{HOST}:{port}/health/ready", process, READY_WITHIN_SECONDS, log_path
        )
        yield copy, port
    finally:
        _stop_group(process)
    assert "pip install" not in log_path.read_text(errors="replace"), "an installed venv"


def _stop_group(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to make and uvicorn (one process group); SIGKILL whatever outlives 30 s."""
    os.killpg(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        process.poll()
        try:
            os.killpg(process.pid, 0)  # anyone left in the group?
        except ProcessLookupError:
            return
        time.sleep(0.1)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(10)


@pytest.mark.slow
def test_readme_serve_and_curl_commands_answer_the_examples(served: tuple[Path, int]) -> None:
    copy, port = served
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    answered = 0
    for words in DOC_COMMANDS:
        if not words or words[0] != "curl" or not any("=@examples/" in w for w in words):
            continue
        command = [w.replace("127.0.0.1:8000", f"{HOST}:{port}") for w in words]
        if "127.0.0.1:8000" not in " ".join(words):
            continue  # the Kubernetes port-forward example, another address
        result = subprocess.run(command, cwd=copy, capture_output=True, text=True, check=True)
        answer = json.loads(result.stdout)
        files = [w.split("@", 1)[1] for w in words if "=@" in w]
        expected = [EXAMPLES[Path(f).name] for f in files]
        if "/recognize" in " ".join(words):
            assert answer["digits"] == expected[0], answer
        elif "/predict/batch" in " ".join(words):
            digits = [str(item["prediction"]["digit"]) for item in answer["results"]]
            assert digits == expected, answer
        else:
            assert str(answer["digit"]) == expected[0], answer
        answered += 1
    assert answered >= 3, "the docs show /predict, /predict/batch and /recognize with examples"


@pytest.fixture
def mnist_mirror() -> Iterator[str]:
    """A local HTTP server handing out the real MNIST files, as the public mirror does."""
    directory = find_mnist_dir()
    if directory is None:
        pytest.skip(MISSING)
    handler = functools.partial(_QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer((HOST, 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://{HOST}:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        """Keep test output quiet."""


@pytest.mark.slow
def test_readme_training_command_downloads_mnist_and_writes_a_version(
    fresh: tuple[Path, Path], mnist_mirror: str, tmp_path: Path
) -> None:
    copy, venv = fresh
    command = _readme_command(["make", "train", "TRAIN_ARGS=--recipe seed --epochs 1"])
    cache = tmp_path / "mnist-cache"
    result = subprocess.run(
        [*command, f"VENV={venv}"],
        cwd=copy,
        env=_environment(MNIST_MIRROR_URL=mnist_mirror, MNIST_CACHE_DIR=str(cache)),
        capture_output=True,
        text=True,
        timeout=TRAIN_WITHIN_SECONDS,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "pip install" not in result.stdout, "an installed venv"
    assert sorted(p.name for p in cache.glob("*.gz")) == sorted(
        [
            "train-images-idx3-ubyte.gz",
            "train-labels-idx1-ubyte.gz",
            "t10k-images-idx3-ubyte.gz",
            "t10k-labels-idx1-ubyte.gz",
        ]
    ), "MNIST came through the download path"
    bundled = {p.name for p in (REPO / "models" / "mnist").iterdir() if p.name.isdigit()}
    new = {p.name for p in (copy / "models" / "mnist").iterdir() if p.name.isdigit()} - bundled
    (version,) = new
    metrics = json.loads((copy / "models" / "mnist" / version / "metrics.json").read_text())
    assert metrics["hyperparameters"]["epochs"] == 1
    assert metrics["test"]["accuracy"] > 0.8, "one epoch of the seed recipe learns digits"
    assert any((copy / "models" / "mnist" / version / "report").glob("*.png")), "report written"
    assert f"models/mnist/{version}" in output


def test_fresh_copy_holds_no_local_state(tmp_path: Path) -> None:
    copy = _fresh_copy(tmp_path / "clone")
    assert (copy / "Makefile").is_file()
    assert (copy / "examples" / "digit.png").is_file()
    for local in (".venv", ".git", "artifacts", ".mypy_cache"):
        assert not (copy / local).exists(), local
    buffer = io.BytesIO((copy / "examples" / "digit.png").read_bytes())
    assert Image.open(buffer).format == "PNG"
