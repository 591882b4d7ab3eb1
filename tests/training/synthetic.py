"""Tiny synthetic MNIST-shaped data for tests: IDX bytes, gzip files and a matching DatasetSpec."""

from __future__ import annotations

import gzip
import hashlib
import io
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from training.data import IMAGES_MAGIC, LABELS_MAGIC, DatasetSpec, IdxFile, MnistData

N_TRAIN = 40
N_TEST = 12


def idx_payload(array: np.ndarray, magic: int) -> bytes:
    """The IDX encoding of a uint8 array: magic, one big-endian size per dimension, the bytes."""
    header = struct.pack(f">I{array.ndim}I", magic, *array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def write_gz(path: Path, payload: bytes) -> Path:
    """Write ``payload`` gzip-compressed to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(payload, mtime=0))
    return path


def spec_for(name: str, array: np.ndarray, magic: int) -> IdxFile:
    """The IdxFile describing ``array`` stored under ``name`` (digest computed here)."""
    return IdxFile(
        name, magic, tuple(array.shape), hashlib.sha256(idx_payload(array, magic)).hexdigest()
    )


def blob_digits(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n images of one random slanted, thick stroke each (uint8 [n, 28, 28]) and random labels."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:28, 0:28]
    images = np.zeros((n, 28, 28), dtype=np.uint8)
    for i in range(n):
        y0, x0 = rng.uniform(9, 19, size=2)
        slope, half_length, width = rng.uniform(-0.6, 0.6), rng.uniform(4, 9), rng.uniform(1, 2.5)
        along = np.clip(rows - y0, -half_length, half_length)
        distance = np.hypot(cols - (x0 + slope * along), rows - (y0 + along))
        images[i] = np.clip(255 * (1.5 - distance / width), 0, 255).astype(np.uint8)
    labels = rng.integers(0, 10, size=n).astype(np.uint8)
    return images, labels


@dataclass(frozen=True)
class SyntheticDataset:
    """Four valid IDX .gz files in ``directory``, their spec and the arrays they hold."""

    directory: Path
    spec: DatasetSpec
    data: MnistData


def make_dataset(directory: Path, n_train: int = N_TRAIN, n_test: int = N_TEST) -> SyntheticDataset:
    """Write a tiny valid dataset with the real MNIST file names into ``directory``."""
    train_images, train_labels = blob_digits(n_train, seed=1)
    test_images, test_labels = blob_digits(n_test, seed=2)
    arrays = {
        "train-images-idx3-ubyte.gz": (train_images, IMAGES_MAGIC),
        "train-labels-idx1-ubyte.gz": (train_labels, LABELS_MAGIC),
        "t10k-images-idx3-ubyte.gz": (test_images, IMAGES_MAGIC),
        "t10k-labels-idx1-ubyte.gz": (test_labels, LABELS_MAGIC),
    }
    for name, (array, magic) in arrays.items():
        write_gz(directory / name, idx_payload(array, magic))
    files = [spec_for(name, array, magic) for name, (array, magic) in arrays.items()]
    spec = DatasetSpec(*files)
    data = MnistData(
        train_images=train_images,
        train_labels=train_labels,
        test_images=test_images,
        test_labels=test_labels,
        source="synthetic",
        digests={f.name: f.sha256 for f in files},
    )
    return SyntheticDataset(directory=directory, spec=spec, data=data)


def scan_png(image: np.ndarray, scale: int = 2) -> bytes:
    """A 28×28 white-on-black digit as a scan would give it: dark ink on paper, enlarged."""
    paper = Image.fromarray(255 - image).resize((28 * scale, 28 * scale), Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    paper.save(buffer, format="PNG")
    return buffer.getvalue()


def write_digit_set(
    folder: Path,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    sources: list[str] | None = None,
) -> list[str]:
    """A labelled folder in the real-digits layout: ``d<i>.png`` scans and ``labels.csv``
    (with a ``source`` column when ``sources`` is given); returns the file names."""
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"d{i:04d}.png" for i in range(len(images))]
    header = "filename,label" + (",source" if sources is not None else "")
    rows = [header]
    for i, (name, image, label) in enumerate(zip(names, images, labels, strict=True)):
        (folder / name).write_bytes(scan_png(image))
        rows.append(f"{name},{int(label)}" + (f",{sources[i]}" if sources is not None else ""))
    (folder / "labels.csv").write_text("\n".join(rows) + "\n")
    return names
