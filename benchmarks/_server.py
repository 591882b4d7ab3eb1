"""Shared helpers for the serving benchmarks: a real uvicorn server, its memory, test images.

A benchmark runs the service the way it ships: the production launcher (``python -m app.serve
--host --port``, the command of ``make serve``, the image and compose, with their
``MALLOC_ARENA_MAX=2``; uvloop + httptools with the connection limits), ``WEB_CONCURRENCY``
workers, in its own process on loopback, so the figures include the HTTP server, the framework
and the middleware, not just the handler. The bench-only variant of the app (the no-op
endpoint) is served by the same launcher; the typical-app baseline by plain ``uvicorn``, as its
authors would run it.
"""

from __future__ import annotations

import contextlib
import io
import os
import platform
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Final

import httpx
import numpy as np
from PIL import Image

REPO: Final = Path(__file__).resolve().parents[1]
HOST: Final = "127.0.0.1"
PUBLIC_APP: Final = "app.main:create_app"
BENCH_APP: Final = "benchmarks.bench_app:create_bench_app"
TYPICAL_APP: Final = "benchmarks.typical_app:app"
#: What every start command (Makefile, Dockerfile, compose) sets.
MALLOC_ARENA_MAX: Final = "2"
# A bound on waiting for TensorFlow to load on a busy machine, not a speed claim.
READY_TIMEOUT_SECONDS: Final = 180.0


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def rss_bytes(pid: int) -> int:
    """Resident memory of a process (VmRSS from /proc), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


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


def tree_cpu_seconds(pid: int) -> float:
    """CPU time used so far by ``pid`` and every process under it."""
    total = 0.0
    for member in process_tree(pid):
        with contextlib.suppress(OSError):  # ended in between
            total += cpu_seconds(member)
    return total


@dataclass
class Server:
    """A running uvicorn process and how long it took to become ready."""

    process: subprocess.Popen[bytes]
    port: int
    log_path: Path
    ready_seconds: float = 0.0
    workers: int = 1
    _log: io.BufferedWriter | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        """Base URL, e.g. http://127.0.0.1:12345."""
        return f"http://{HOST}:{self.port}"

    @property
    def pid(self) -> int:
        """The server's process id."""
        return self.process.pid

    def rss_mib(self) -> float:
        """The server's resident memory now (all its processes), in MiB."""
        return sum(rss_bytes(pid) for pid in process_tree(self.pid)) / 1048576

    def log_tail(self, lines: int = 30) -> str:
        """The end of the server's log, for error messages."""
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM, wait for the graceful shutdown, kill if it hangs; return the exit code."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._log is not None:
            self._log.close()
            self._log = None
        return self.process.returncode


def start_server(
    app: str,
    models_dir: Path,
    log_path: Path,
    env: dict[str, str] | None = None,
    workers: int = 1,
) -> Server:
    """Start ``app`` with ``workers`` processes and wait until it answers.

    The service's factories (``module:create_*``) run under the production launcher; any other
    app (the typical-app baseline) under plain ``uvicorn``. Ready means /health/ready says 200
    for the service, and the process listening for the baseline. ``ready_seconds`` is measured
    from just before the process is spawned.
    """
    port = free_port()
    environment = {k: v for k, v in os.environ.items() if not k.startswith("DIGITS_")}
    environment.update(
        {
            "DIGITS_MODELS_DIR": str(models_dir),
            "MALLOC_ARENA_MAX": MALLOC_ARENA_MAX,
            "PYTHONUNBUFFERED": "1",
            "TF_CPP_MIN_LOG_LEVEL": "1",
            "WEB_CONCURRENCY": str(workers),
        }
    )
    environment.update(env or {})
    service = app != TYPICAL_APP
    if service:
        command = [
            sys.executable,
            "-c",
            "import sys; from app.serve import main; main(sys.argv[2:], app=sys.argv[1])",
            app,
            "--host",
            HOST,
            "--port",
            str(port),
        ]
        if app == PUBLIC_APP:  # exactly the production command
            command = [sys.executable, "-m", "app.serve", "--host", HOST, "--port", str(port)]
    else:
        command = [sys.executable, "-m", "uvicorn", app, "--host", HOST, "--port", str(port)]
    ready_path = "/health/ready" if service else "/docs"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = log_path.open("wb")
    started = time.perf_counter()
    process = subprocess.Popen(
        command, cwd=REPO, env=environment, stdout=log, stderr=subprocess.STDOUT
    )
    server = Server(process, port, log_path, workers=workers, _log=log)
    deadline = started + READY_TIMEOUT_SECONDS
    with httpx.Client(timeout=2.0) as client:
        while True:
            if process.poll() is not None:
                server.stop()
                raise RuntimeError(f"server exited with {process.returncode}:\n{server.log_tail()}")
            try:
                if client.get(f"{server.url}{ready_path}").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.perf_counter() > deadline:
                server.stop()
                raise RuntimeError(f"server not ready in time:\n{server.log_tail()}")
            time.sleep(0.02)
    server.ready_seconds = time.perf_counter() - started
    return server


# --- request bodies --------------------------------------------------------------------------


def mnist_test_images() -> np.ndarray | None:
    """The MNIST test images from $MNIST_DATA_DIR (or the team's shared copy), if present."""
    from training.data import MNIST, MnistError, read_idx, resolve_data_dir

    directory = resolve_data_dir() or REPO.parent / "shared" / "data" / "mnist"
    try:
        return read_idx(directory / MNIST.test_images.name, MNIST.test_images)
    except MnistError:
        return None


def digit_images(count: int) -> tuple[np.ndarray, str]:
    """``count`` 28×28 white-on-black digits: MNIST test images, or synthetic strokes."""
    images = mnist_test_images()
    if images is not None:
        return images[:count], "MNIST test images"
    rng = np.random.default_rng(0)
    synthetic = np.zeros((count, 28, 28), np.uint8)
    for image in synthetic:
        top, left = rng.integers(4, 12, size=2)
        image[top : top + 12, left : left + 3] = 255
        image[top : top + 3, left : left + 10] = 220
    return synthetic, "synthetic strokes (MNIST_DATA_DIR not set)"


def png(image: np.ndarray) -> bytes:
    """PNG bytes of a uint8 grayscale image."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "PNG")
    return buffer.getvalue()


def multipart(field_name: str, files: list[bytes]) -> tuple[bytes, str]:
    """A multipart/form-data body with one part per file, and its Content-Type header."""
    boundary = uuid.uuid4().hex
    parts = []
    for index, data in enumerate(files):
        parts.append(
            (
                f"--{boundary}\r\n"
                f'Content-Disposition: form-data; name="{field_name}"; '
                f'filename="digit-{index}.png"\r\n'
                "Content-Type: image/png\r\n\r\n"
            ).encode()
            + data
            + b"\r\n"
        )
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


# --- the machine -----------------------------------------------------------------------------


def machine_lines() -> list[str]:
    """CPU, cores, load and versions, as markdown list items."""
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    versions = []
    # The lock installs tensorflow-cpu on Linux x86-64 and tensorflow elsewhere.
    tensorflow = "tensorflow-cpu"
    try:
        metadata.version(tensorflow)
    except metadata.PackageNotFoundError:
        tensorflow = "tensorflow"
    for package in (
        tensorflow,
        "fastapi",
        "starlette",
        "uvicorn",
        "uvloop",
        "httptools",
        "python-multipart",
        "pillow",
        "numpy",
    ):
        try:
            versions.append(f"{package} {metadata.version(package)}")
        except metadata.PackageNotFoundError:
            versions.append(f"{package} (not installed)")
    memory = "unknown"
    try:
        total_kb = int(Path("/proc/meminfo").read_text().split()[1])
        memory = f"{total_kb / 1048576:.0f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    return [
        f"- CPU: {cpu}, {os.cpu_count()} cores, {memory} RAM; {platform.system()} "
        f"{platform.release()}",
        f"- Load average (1, 5, 15 min) at start: {load}",
        f"- Python {platform.python_version()}; " + ", ".join(versions),
    ]
