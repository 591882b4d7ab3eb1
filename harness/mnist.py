"""The real MNIST for tests and benchmarks: one way to find it, read through the verified loader."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import numpy.typing as npt

from training.data import DATA_DIR_ENV, MNIST, read_idx

REPO = Path(__file__).resolve().parents[1]
SHARED_MNIST = REPO.parent / "shared" / "data" / "mnist"
"""The team's copy beside the checkout, where CI lays it out."""

MISSING = f"real MNIST not available: set {DATA_DIR_ENV} to a directory with the four .gz files"


def mnist_dir() -> Path | None:
    """``$MNIST_DATA_DIR``, else the shared copy beside the repository, if it has all four files."""
    for candidate in (os.environ.get(DATA_DIR_ENV), str(SHARED_MNIST)):
        if candidate and all((Path(candidate) / f.name).is_file() for f in MNIST.files):
            return Path(candidate)
    return None


def read_test_set(directory: Path) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.uint8]]:
    """The 10,000 test images (uint8 [N, 28, 28], white on black) and labels, digests checked."""
    return (
        read_idx(directory / MNIST.test_images.name, MNIST.test_images),
        read_idx(directory / MNIST.test_labels.name, MNIST.test_labels),
    )
