"""Fixtures for the client tests: folders of scans, a real server, the command line in-process.

The real server is the production launcher (:class:`harness.servers.RunningServer`) with one
worker and the bundled models; each test module that needs one starts its own, with the
settings it is about (limits, an API key).
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest
from digits_client.cli import app
from PIL import Image
from typer.testing import CliRunner

from harness.bodies import digit_images, png
from harness.servers import RunningServer

REPO = Path(__file__).resolve().parents[2]
BUNDLED_MODELS = REPO / "models" / "mnist"
#: The version the bundled models serve by default: the newest committed one.
SERVED_VERSION = max(int(p.name) for p in BUNDLED_MODELS.iterdir() if p.name.isdigit())
EXAMPLES = REPO / "examples"


def start_server(log: Path, env: Mapping[str, str] | None = None) -> RunningServer:
    """The service on a free loopback port, one worker, the bundled models."""
    return RunningServer.start(BUNDLED_MODELS, log, env={"WEB_CONCURRENCY": "1", **(env or {})})


def digit_files(folder: Path, count: int, *, start: int = 0) -> list[Path]:
    """``count`` small PNG digits (MNIST test images where available) under ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    images, _ = digit_images(start + count)
    paths = []
    for index in range(start, start + count):
        path = folder / f"digit-{index:05d}.png"
        path.write_bytes(png(images[index]))
        paths.append(path)
    return paths


def photo(width: int, height: int, *, seed: int = 0, quality: int = 95) -> bytes:
    """A JPEG that looks like a phone photo of a digit: noisy paper, a dark stroke.

    The noise keeps it large (incompressible), as real photos are.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    paper = rng.integers(180, 256, size=(height, width, 3), dtype=np.uint8)
    paper[height // 4 : 3 * height // 4, width // 2 - width // 20 : width // 2 + width // 20] = 20
    buffer = io.BytesIO()
    Image.fromarray(paper).save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


@dataclass
class Result:
    """What one run of the command line did."""

    exit_code: int
    stdout: str
    stderr: str


def run_cli(*arguments: str | Path, env: Mapping[str, str] | None = None) -> Result:
    """``digits ARGUMENTS`` in this process (Typer's runner), stdout and stderr apart."""
    runner = CliRunner()
    result = runner.invoke(app, [str(a) for a in arguments], env=dict(env or {}))
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return Result(result.exit_code, result.stdout, result.stderr)


def rows(path: Path) -> list[dict[str, object]]:
    """The rows of a JSON Lines results file."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """The service with its default settings."""
    running = start_server(tmp_path_factory.mktemp("server") / "server.log")
    try:
        yield running
    finally:
        running.stop()
