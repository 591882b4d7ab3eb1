"""The real service under uvicorn, in its own process, for the tests and benchmarks that need it.

:meth:`RunningServer.start` runs the production launcher, ``python -m app.serve`` (the command
of ``make serve``, the Dockerfile and compose, so the server has their connection limits), on
loopback and a free port, with this machine's environment minus any ``DIGITS_*`` setting (so a
developer's shell cannot change what a test or a benchmark sees) plus the start commands'
``MALLOC_ARENA_MAX``, output captured to a log file, and waits until a health route answers 200.
Waits are bounded, never speed checks: importing TensorFlow on a busy 2-core machine takes
seconds. Benchmarks also start another app factory under the same launcher (``app=``), a plain
ASGI app under plain uvicorn (``launcher=False``, as its authors would run it) or several
worker processes (``workers=``), and read the server's start-up time, memory and CPU time.

The pieces are usable on their own too (:func:`free_port`, :func:`wait_until_ready`,
:func:`as_pid_1`, :func:`child_pid`) for tests that must start a command of their own, such as
the Dockerfile's exact CMD.

A server that exits or never becomes ready raises :class:`ServerError` with the end of its log
(this package serves benchmarks too, which run without pytest).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import httpx

REPO: Final = Path(__file__).resolve().parents[1]
HOST: Final = "127.0.0.1"
LAUNCHER: Final = "app.serve"
#: The service's own app factory: started by :data:`LAUNCHER` exactly as in production.
PUBLIC_APP: Final = "app.main:create_app"
#: What every start command (Makefile, Dockerfile, compose) sets; tests/deploy checks they agree.
MALLOC_ARENA_MAX: Final = "2"
# A bound on waiting for TensorFlow to load on a busy machine, not a speed claim.
READY_TIMEOUT_SECONDS: Final = 180.0
STOP_TIMEOUT_SECONDS: Final = 30.0
_POLL_SECONDS: Final = 0.02


class ServerError(RuntimeError):
    """A server process exited, or did not become ready in time."""


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def server_environment(
    models_dir: Path, overrides: Mapping[str, str] | None = None
) -> dict[str, str]:
    """This machine's environment without ``DIGITS_*``, serving ``models_dir``, then ``overrides``.

    Output is unbuffered so the log is complete when it is read, and TensorFlow's C++ chatter
    is kept out of it. The allocator is capped as the start commands cap it. One worker process
    (``WEB_CONCURRENCY``) unless ``overrides`` asks for more: the launcher's default of one per
    core would double every server's memory and start-up.
    """
    environment = {k: v for k, v in os.environ.items() if not k.startswith("DIGITS_")}
    environment.update(
        {
            "DIGITS_MODELS_DIR": str(models_dir),
            "MALLOC_ARENA_MAX": MALLOC_ARENA_MAX,
            "PYTHONUNBUFFERED": "1",
            "TF_CPP_MIN_LOG_LEVEL": "2",
            "WEB_CONCURRENCY": "1",
            # The service's own state (the review queue's SQLite file) in a directory of its
            # own, never in the checkout; a test that restarts a server passes the same one.
            "DIGITS_DATA_DIR": tempfile.mkdtemp(prefix="digits-data-"),
        }
    )
    environment.update(overrides or {})
    return environment


def launch_command(port: int, app: str = PUBLIC_APP, *, launcher: bool = True) -> list[str]:
    """The command serving ``app`` (``module:attribute``) on loopback and ``port``.

    The service's own app: exactly the production command. Another factory of the service
    (``launcher``): the production launcher with that app. Otherwise plain ``uvicorn``.
    """
    address = ["--host", HOST, "--port", str(port)]
    if not launcher:
        return [sys.executable, "-m", "uvicorn", app, *address]
    if app == PUBLIC_APP:
        return [sys.executable, "-m", LAUNCHER, *address]
    serve = "import sys; from app.serve import main; main(sys.argv[2:], app=sys.argv[1])"
    return [sys.executable, "-c", serve, app, *address]


def log_tail(log_path: Path, lines: int = 40) -> str:
    """The end of a server log, for failure messages."""
    if not log_path.exists():
        return f"(no server log at {log_path})"
    return "\n".join(log_path.read_text(errors="replace").splitlines()[-lines:])


def wait_until_ready(
    url: str, process: subprocess.Popen[bytes], timeout: float, log_path: Path
) -> None:
    """Poll ``url`` until it answers 200.

    Raises:
        ServerError: the process exited first, or ``timeout`` seconds passed (with the log's
            tail).
    """
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=5.0) as client:
        while True:
            if process.poll() is not None:
                raise ServerError(f"server exited with {process.returncode}:\n{log_tail(log_path)}")
            try:
                if client.get(url).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise ServerError(f"{url} not 200 after {timeout:.0f} s:\n{log_tail(log_path)}")
            time.sleep(_POLL_SECONDS)


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


# --- a process's memory and CPU time (Linux /proc) -------------------------------------------


def rss_bytes(pid: int) -> int:
    """Resident memory of a process (VmRSS in /proc/<pid>/status), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise ServerError(f"no VmRSS for process {pid}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    # The command name may hold spaces; the fields after its closing parenthesis do not.
    fields = stat[stat.rindex(")") + 2 :].split()
    ticks = int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (the launcher's worker processes)."""
    found = [pid]
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        for child in children:
            found.extend(process_tree(int(child)))
    return found


def _cmdline(pid: int) -> bytes:
    """A process's command line (empty once it has ended)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def tree_cpu_seconds(pid: int) -> float:
    """CPU time used so far by ``pid`` and every process under it."""
    total = 0.0
    for member in process_tree(pid):
        with contextlib.suppress(OSError):  # ended in between
            total += cpu_seconds(member)
    return total


# --- the server --------------------------------------------------------------------------------


@dataclass
class RunningServer:
    """A server process serving an app; ``pid`` is its own (not unshare's)."""

    process: subprocess.Popen[bytes]
    pid: int
    port: int
    log_path: Path
    workers: int = 1
    ready_seconds: float = 0.0
    """From just before the process was spawned until it answered ready."""

    @classmethod
    def start(
        cls,
        models_dir: Path,
        log_path: Path,
        *,
        env: Mapping[str, str] | None = None,
        app: str = PUBLIC_APP,
        launcher: bool = True,
        workers: int = 1,
        pid_1: bool = False,
        ready_path: str | None = None,
        ready_timeout: float = READY_TIMEOUT_SECONDS,
    ) -> RunningServer:
        """Start ``app`` (:func:`launch_command`) and wait until ``ready_path`` answers 200.

        ``env`` overrides the clean :func:`server_environment` (limits are ``DIGITS_*``
        settings, as in production; a ``WEB_CONCURRENCY`` there wins over ``workers``);
        ``pid_1`` runs the server as PID 1 of a new PID namespace. ``ready_path`` is
        ``/health/ready`` under the launcher, and ``/docs`` (the process listening) for an app
        under plain uvicorn. A server that never becomes ready is killed.

        Raises:
            ServerError: the server exited or did not become ready within ``ready_timeout``.
        """
        port = free_port()
        command = launch_command(port, app, launcher=launcher)
        if pid_1:
            command = as_pid_1(command)
        if ready_path is None:
            ready_path = "/health/ready" if launcher else "/docs"
        environment = server_environment(
            models_dir, {"WEB_CONCURRENCY": str(workers), **(env or {})}
        )
        log_path.parent.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                command, cwd=REPO, env=environment, stdout=log, stderr=subprocess.STDOUT
            )
        try:
            pid = child_pid(process) if pid_1 else process.pid
            server = cls(process, pid, port, log_path, workers)
            wait_until_ready(f"{server.url}{ready_path}", process, ready_timeout, log_path)
        except BaseException:
            process.kill()
            process.wait()
            raise
        server.ready_seconds = time.perf_counter() - started
        return server

    @classmethod
    def spawn(
        cls,
        models_dir: Path,
        log_path: Path,
        *,
        env: Mapping[str, str] | None = None,
        workers: int = 1,
    ) -> RunningServer:
        """Start the service under the launcher and return at once, before it is ready.

        For tests of what happens while it starts (its log lines, its answers); stop it with
        :meth:`stop`. ``env`` and ``workers`` as for :meth:`start`.
        """
        port = free_port()
        environment = server_environment(
            models_dir, {"WEB_CONCURRENCY": str(workers), **(env or {})}
        )
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                launch_command(port),
                cwd=REPO,
                env=environment,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        return cls(process, process.pid, port, log_path, workers)

    def worker_pids(self) -> list[int]:
        """The launcher's worker processes (none when it serves alone, in its own process).

        Started by multiprocessing's spawn, unlike its resource tracker, which serves nothing.
        """
        return [
            pid for pid in process_tree(self.pid)[1:] if b"multiprocessing.spawn" in _cmdline(pid)
        ]

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

    def rss_mib(self) -> float:
        """The resident memory now of the server and every process under it, in MiB."""
        return sum(rss_bytes(pid) for pid in process_tree(self.pid)) / 1048576

    def stop(self, timeout: float = STOP_TIMEOUT_SECONDS) -> int | None:
        """SIGTERM (graceful), then kill if it does not end in time; return the exit code."""
        if self.process.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode
