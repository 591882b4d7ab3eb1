"""Entrypoint smoke test: the image's exact start command, run here against the bundled model.

The final stage's files are laid out under a temporary root as its COPY instructions place them
(honouring .dockerignore), and its CMD runs in its WORKDIR with its ENV, so a service that needed
a file the image lacks would fail here. Only --host and --port change (loopback and a free port
instead of 0.0.0.0:8000). The image's HEALTHCHECK probe runs against the live server too, so the
probe itself is tested, not just the route it names.

The command runs as PID 1 of a new PID namespace (``unshare --pid --fork``), as in a container.
That matters for the exit code: after a graceful shutdown uvicorn re-raises SIGTERM with the
default action; a PID 1 ignores it and exits 0, which is what Docker reports after `docker stop`.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from app.settings import Settings
from harness.servers import HOST, as_pid_1, child_pid, free_port, log_tail, wait_until_ready
from tests.deploy.conftest import REPO
from tests.deploy.formats import Dockerfile, DockerIgnore

READY_WITHIN_SECONDS = 60.0  # a bound on waiting, not a speed claim
IMAGE_PORT = "8000"


def _replace_option(argv: list[str], name: str, value: str) -> list[str]:
    assert argv.count(name) == 1, f"{name} must appear once in {argv}"
    index = argv.index(name) + 1
    return [*argv[:index], value, *argv[index + 1 :]]


def _status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return None


def _lay_out_image(dockerfile: Dockerfile, root: Path) -> None:
    """Copy what the final stage COPYs from the build context to the same paths under root."""
    ignore = DockerIgnore.parse((REPO / ".dockerignore").read_text())

    def left_out(directory: str, names: list[str]) -> set[str]:
        relative = Path(directory).relative_to(REPO)
        return {n for n in names if ignore.excluded((relative / n).as_posix())}

    for copy in dockerfile.final.all("COPY"):
        if copy.flag("from"):
            continue
        *sources, destination = copy.words()
        for source in sources:
            target = root / destination.lstrip("/")
            if (REPO / source).is_file():
                # A file: to the path named, or into the directory named (a trailing /).
                if destination.endswith("/"):
                    target = target / Path(source).name
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(REPO / source, target)
            else:
                shutil.copytree(REPO / source, target, ignore=left_out, dirs_exist_ok=True)


def _image_environment(dockerfile: Dockerfile, root: Path) -> dict[str, str]:
    """This machine's environment minus any DIGITS_* setting, plus the image's ENV under root."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("DIGITS_")}
    image = dockerfile.final.env()
    image.pop("PATH")  # /opt/venv/bin in the image; here, the virtualenv running the tests
    image["DIGITS_MODELS_DIR"] = str(root / image["DIGITS_MODELS_DIR"].lstrip("/"))
    environment.update(image)
    environment["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{environment['PATH']}"
    return environment


@pytest.mark.slow
def test_start_command_serves_the_bundled_model_and_stops_on_sigterm(
    dockerfile: Dockerfile, tmp_path: Path
) -> None:
    final = dockerfile.final
    cmd, healthcheck = final.last("CMD"), final.last("HEALTHCHECK")
    assert cmd is not None
    assert healthcheck is not None
    image_argv, probe_argv = cmd.exec_form(), healthcheck.exec_form()
    assert image_argv is not None
    assert probe_argv is not None
    port = str(free_port())
    argv = _replace_option(_replace_option(image_argv, "--host", HOST), "--port", port)
    assert [a for a, b in zip(argv, image_argv, strict=True) if a != b] == [HOST, port]
    image_url = f"http://127.0.0.1:{IMAGE_PORT}/"
    assert image_url in probe_argv[-1]
    probe = [*probe_argv[:-1], probe_argv[-1].replace(image_url, f"http://{HOST}:{port}/")]
    root = tmp_path / "image"
    _lay_out_image(dockerfile, root)
    workdir = final.last("WORKDIR")
    assert workdir is not None
    environment = _image_environment(dockerfile, root)
    assert any(p.name.isdigit() for p in Path(environment["DIGITS_MODELS_DIR"]).iterdir())
    log = tmp_path / "server.log"

    with log.open("wb") as output:
        server = subprocess.Popen(
            as_pid_1(argv),
            cwd=root / workdir.arguments.lstrip("/"),
            env=environment,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until_ready(f"http://{HOST}:{port}/health/ready", server, READY_WITHIN_SECONDS, log)
        assert _status(f"http://{HOST}:{port}/health/live") == 200

        healthy = subprocess.run(probe, env=environment, capture_output=True, timeout=30)
        assert healthy.returncode == 0, healthy.stderr.decode()

        # The launcher applies the graceful-shutdown timeout; the image leaves it at its default.
        graceful = Settings.model_fields["graceful_shutdown_seconds"].default
        assert "DIGITS_GRACEFUL_SHUTDOWN_SECONDS" not in environment
        os.kill(child_pid(server), signal.SIGTERM)  # what `docker stop` sends, to PID 1
        assert server.wait(timeout=graceful + 15) == 0, log_tail(log)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()

    stopped = subprocess.run(probe, env=environment, capture_output=True, timeout=30)
    assert stopped.returncode != 0, "the probe must fail when nothing answers"
