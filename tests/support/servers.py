"""The real service under uvicorn, in its own process, for the tests that need a live server.

:meth:`RunningServer.start` runs the production launcher, ``python -m app.serve`` (the command
of ``make serve``, the Dockerfile and compose, so the server has their connection limits), on
loopback and a free port, with this machine's environment minus any ``DIGITS_*`` setting (so a
developer's shell cannot change what a test sees) plus the start commands' ``MALLOC_ARENA_MAX``,
output captured to a log file, and waits until a health route answers 200. Waits are bounded,
never speed checks: importing TensorFlow on a busy 2-core machine takes seconds.

The pieces are usable on their own too (:func:`free_port`, :func:`wait_until_ready`,
:func:`as_pid_1`, :func:`child_pid`) for tests that must start a command of their own, such as
the Dockerfile's exact CMD.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"
LAUNCHER = "app.serve"
#: What every start command (Makefile, Dockerfile, compose) sets; tests/deploy checks they agree.
MALLOC_ARENA_MAX = "2"
READY_TIMEOUT_SECONDS = 120.0
STOP_TIMEOUT_SECONDS = 30.0


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def server_environment(
    models_dir: Path, overrides: Mapping[str, str] | None = None
) -> dict[str, str]:
    """This machine's environment without ``DIGITS_*``, serving ``models_dir``, then ``overrides``.

    Output is unbuffered so the log is complete when a test reads it, and TensorFlow's C++
    chatter is kept out of it. The allocator is capped as the start commands cap it. One worker
    process (``WEB_CONCURRENCY``) unless ``overrides`` asks for more: the launcher's default of
    one per core would double every test server's memory and start-up.
    """
    environment = {k: v for k, v in os.environ.items() if not k.startswith("DIGITS_")}
    environment.update(
        {
            "DIGITS_MODELS_DIR": str(models_dir),
            "MALLOC_ARENA_MAX": MALLOC_ARENA_MAX,
            "PYTHONUNBUFFERED": "1",
            "TF_CPP_MIN_LOG_LEVEL": "2",
            "WEB_CONCURRENCY": "1",
        }
    )
    environment.update(overrides or {})
    return environment


def log_tail(log_path: Path, lines: int = 40) -> str:
    """The end of a server log, for failure messages."""
    if not log_path.exists():
        return f"(no server log at {log_path})"
    return "\n".join(log_path.read_text(errors="replace").splitlines()[-lines:])


def wait_until_ready(
    url: str, process: subprocess.Popen[bytes], timeout: float, log_path: Path
) -> None:
    """Poll ``url`` until it answers 200; fail with the log's tail if the process exits first."""
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=5.0) as client:
        while True:
            if process.poll() is not None:
                pytest.fail(f"server exited with {process.returncode}:\n{log_tail(log_path)}")
            try:
                if client.get(url).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"{url} not 200 after {timeout:.0f} s:\n{log_tail(log_path)}")
            time.sleep(0.05)


def as_pid_1(argv: Sequence[str]) -> list[str]:
    """argv run as PID 1 of a new PID namespace; unprivileged users get a user namespace too.

    As in a container: after a graceful shutdown uvicorn re-raises SIGTERM, which a PID 1
    ignores, so it exits 0.
    """
    unshare = shutil.which("unshare")
    assert unshare is not None, "unshare (util-linux) runs the command as a container's PID 1"
    user = [] if os.geteuid() == 0 else ["--user", "--map-root-user"]
    return [unshare, *user, "--pid", "--fork", "--kill-child", *argv]


def child_pid(parent: subprocess.Popen[bytes]) -> int:
    """The PID (as seen from here) of the process that unshare forked."""
    children = Path(f"/proc/{parent.pid}/task/{parent.pid}/children")
    deadline = time.monotonic() + 10
    while not (text := children.read_text().split()):
        assert parent.poll() is None, f"unshare exited with {parent.returncode}"
        assert time.monotonic() < deadline, "unshare started no child"
        time.sleep(0.02)
    return int(text[0])


def rss_bytes(pid: int) -> int:
    """Resident memory of a process (VmRSS in /proc/<pid>/status), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for process {pid}")


@dataclass
class RunningServer:
    """The launcher's uvicorn process serving the app; ``pid`` is its own (not unshare's)."""

    process: subprocess.Popen[bytes]
    pid: int
    port: int
    log_path: Path

    @classmethod
    def start(
        cls,
        models_dir: Path,
        log_path: Path,
        *,
        env: Mapping[str, str] | None = None,
        pid_1: bool = False,
        ready_path: str = "/health/ready",
        ready_timeout: float = READY_TIMEOUT_SECONDS,
    ) -> RunningServer:
        """Start the service and wait until ``ready_path`` answers 200 (stopped if it never does).

        ``env`` overrides the clean :func:`server_environment` (limits are ``DIGITS_*``
        settings, as in production); ``pid_1`` runs the server as PID 1 of a new PID namespace.
        """
        port = free_port()
        command = [sys.executable, "-m", LAUNCHER, "--host", HOST, "--port", str(port)]
        if pid_1:
            command = as_pid_1(command)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                command,
                cwd=REPO,
                env=server_environment(models_dir, env),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            server = cls(process, child_pid(process) if pid_1 else process.pid, port, log_path)
            wait_until_ready(f"{server.url}{ready_path}", process, ready_timeout, log_path)
        except BaseException:  # pytest.fail raises an exception outside Exception
            process.kill()
            process.wait()
            raise
        return server

    @property
    def url(self) -> str:
        """Base URL, e.g. http://127.0.0.1:12345."""
        return f"http://{HOST}:{self.port}"

    def log(self) -> str:
        """Everything the server has written so far."""
        return self.log_path.read_text(errors="replace")

    def tail(self, lines: int = 40) -> str:
        """The end of the log, for assertion messages."""
        return log_tail(self.log_path, lines)

    def rss(self) -> int:
        """The server process's resident memory now, in bytes."""
        return rss_bytes(self.pid)

    def stop(self, timeout: float = STOP_TIMEOUT_SECONDS) -> None:
        """SIGTERM (graceful), then kill if it does not end in time."""
        if self.process.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
