"""The machine a benchmark ran on, as every benchmark prints it: the CPU, cores, memory, load
and the versions that matter, so a figure is never quoted without its machine."""

from __future__ import annotations

import os
import platform
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path


def cpu_model() -> str:
    """The CPU's model name, from /proc/cpuinfo where available."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_lines(extra_packages: Sequence[str] = ()) -> list[str]:
    """CPU, cores, load and versions (the serving stack's, then ``extra_packages``), as
    markdown list items."""
    cpu = cpu_model()
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
        *extra_packages,
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
