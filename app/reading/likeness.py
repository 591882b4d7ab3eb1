"""How much a normalized candidate looks like a handwritten digit at all.

The classifier's ten probabilities cannot say "this is not a digit": a ruled line is a confident
1, a scan margin a confident 1 or 7. Digit-likeness answers that question separately. Each digit
class of the MNIST training set spans a low-dimensional subspace of the 784 pixels (its mean
plus a few principal components); a candidate, normalized to 28×28 like any digit, is projected
onto the subspace of the class the model read it as, and what the projection cannot explain
is its distance from being that digit::

    unlikeness = ||x - m_c - P_c P_cᵀ (x - m_c)|| / ||x||      (x in 0..1, c = the digit read)

0 means "exactly a typical c"; values near 1 mean nothing of the image is explained. The basis
and the threshold are fitted offline on MNIST training digits (``training/calibrate.py``) and
shipped with the model version; nothing here is fitted on real scans.
"""

from __future__ import annotations

import dataclasses
import zipfile
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

__all__ = [
    "BASIS_FILE",
    "LikenessBasis",
    "as_saved",
    "load_basis",
    "mass_outside",
    "not_like_digit",
    "not_like_digits",
    "save_basis",
    "unlikeness",
]

PIXELS: Final = 784
CLASSES: Final = 10
#: The basis's file in a version directory (``reader.json`` names it).
BASIS_FILE: Final = "likeness.npz"
#: How the means and components are stored: half the file, and finer than the likeness needs.
_STORED: Final = np.float16
#: The most principal components per class a basis may hold (a version is fitted with 30): each
#: costs every /recognize digit a 784-long dot product, and a file of zeros compresses 20,000
#: of them into 0.3 MiB that would cost 600 MiB once loaded.
MAX_COMPONENTS: Final = 64
#: The largest basis file read at all.
MAX_BASIS_BYTES: Final = 16 * 2**20
#: What each array of a basis may hold once decompressed (float64 at most, a generous header),
#: checked in the archive's directory before any array is read.
_HEADER_BYTES: Final = 4096
_MAX_ARRAY_BYTES: Final = {
    "means.npy": _HEADER_BYTES + CLASSES * PIXELS * 8,
    "components.npy": _HEADER_BYTES + CLASSES * MAX_COMPONENTS * PIXELS * 8,
    "mass_low.npy": _HEADER_BYTES + CLASSES * 8,
    "mass_high.npy": _HEADER_BYTES + CLASSES * 8,
}


@dataclasses.dataclass(frozen=True)
class LikenessBasis:
    """Per-class affine subspaces of MNIST digits.

    ``means`` is [10, 784], ``components`` [10, k, 784] (orthonormal rows).
    """

    means: npt.NDArray[np.float32]
    components: npt.NDArray[np.float32]
    mass_low: npt.NDArray[np.float32] | None = None
    """Per class, the least ink (mean pixel value, 0..1) of a digit-like image (None: no limit)."""
    mass_high: npt.NDArray[np.float32] | None = None
    """Per class, the most ink of a digit-like image (None: no limit)."""

    def __post_init__(self) -> None:
        means, comps = self.means, self.components
        if means.shape != (CLASSES, PIXELS) or comps.ndim != 3 or comps.shape[0] != CLASSES:
            raise ValueError(
                f"a likeness basis needs means [10, 784] and components [10, k, 784], got "
                f"{means.shape} and {comps.shape}"
            )
        if comps.shape[2] != PIXELS or not 1 <= comps.shape[1] <= MAX_COMPONENTS:
            raise ValueError(
                f"components must be [10, k, 784] with 1 <= k <= {MAX_COMPONENTS}, "
                f"got {comps.shape}"
            )
        if not (np.isfinite(means).all() and np.isfinite(comps).all()):
            raise ValueError("the likeness basis holds non-finite values")
        for name in ("mass_low", "mass_high"):
            limit = getattr(self, name)
            if limit is not None and (limit.shape != (CLASSES,) or not np.isfinite(limit).all()):
                raise ValueError(f"{name} must be 10 finite values, got shape {limit.shape}")

    @property
    def rank(self) -> int:
        """Principal components per class."""
        return int(self.components.shape[1])


def _as_vectors(images: npt.NDArray[np.generic]) -> npt.NDArray[np.float32]:
    arr = np.asarray(images)
    flat = arr.reshape(arr.shape[0], -1).astype(np.float32)
    if flat.shape[1] != PIXELS:
        raise ValueError(f"expected 28×28 images, got shape {arr.shape}")
    scale = np.float32(255.0) if arr.dtype == np.uint8 else np.float32(1.0)
    out: npt.NDArray[np.float32] = flat / scale
    return out


def unlikeness(
    basis: LikenessBasis,
    images: npt.NDArray[np.generic],
    classes: npt.NDArray[np.integer],
) -> npt.NDArray[np.float64]:
    """Relative residual of each image in its class's subspace, float64 [N] in 0..~1.

    ``images`` are normalized digits (uint8 0..255 or float 0..1, [N, 28, 28]); ``classes``
    the digit each was read as. An image with no ink at all gets 1 (nothing explained).
    """
    return _unlikeness(basis, _as_vectors(images), classes)


def not_like_digits(
    basis: LikenessBasis,
    images: npt.NDArray[np.generic],
    classes: npt.NDArray[np.integer],
    threshold: float,
) -> npt.NDArray[np.bool_]:
    """Whether each image is unlike a digit of its class: :func:`unlikeness` above
    ``threshold``, or :func:`mass_outside` (one conversion of the images for both)."""
    x = _as_vectors(images)
    return (_unlikeness(basis, x, classes) > threshold) | _mass_outside(basis, x, classes)


def not_like_digit(
    basis: LikenessBasis, image: npt.NDArray[np.generic], digit: int, threshold: float
) -> bool:
    """:func:`not_like_digits` for one 28×28 image read as ``digit``, to the bit.

    The same float32 operations on arrays of the same shapes (so the same BLAS calls and sums),
    without the batch's bookkeeping (grouping by class, gathers, masks): ``/predict`` judges
    every digit it answers, and in a request, with the caches cold, each of those numpy calls
    costs several times what it costs in a loop.
    """
    if not 0 <= digit < CLASSES:
        raise ValueError("classes must be one digit 0..9 per image")
    x = _as_vectors(image[np.newaxis])  # [1, 784], 0..1
    limit_low, limit_high = basis.mass_low, basis.mass_high
    if limit_low is not None or limit_high is not None:
        # x.mean(axis=1) as numpy computes it (a float32 sum, divided in float64, stored as
        # float32), without the Python layer of ndarray.mean.
        mass = np.float32(float(np.add.reduce(x, axis=1)[0]) / PIXELS)
        if (limit_low is not None and mass < limit_low[digit]) or (
            limit_high is not None and mass > limit_high[digit]
        ):
            return True
    centred = x - basis.means[digit : digit + 1]
    comps = basis.components[digit]
    residual = centred - (centred @ comps.T) @ comps
    # np.linalg.norm(axis=1) of both, in one reduction: sqrt(sum of squares), float32.
    both = np.concatenate((x, residual))
    norm, err = (float(v) for v in np.sqrt(np.add.reduce(both * both, axis=1)))
    return (err / max(norm, 1e-12) if norm > 0 else 1.0) > threshold


def _unlikeness(
    basis: LikenessBasis, x: npt.NDArray[np.float32], classes: npt.NDArray[np.integer]
) -> npt.NDArray[np.float64]:
    cls = np.asarray(classes, dtype=np.int64)
    if cls.shape != (x.shape[0],) or (cls.size and (cls.min() < 0 or cls.max() >= CLASSES)):
        raise ValueError("classes must be one digit 0..9 per image")
    centred = x - basis.means[cls]
    # Class by class: each class's components are used in place, never copied per image (a
    # batch of 256 would otherwise gather 256 × k × 784 floats).
    residual = np.empty_like(centred)
    for digit in np.unique(cls):
        rows = cls == digit
        comps = basis.components[digit]  # [k, 784]
        part = centred[rows]
        residual[rows] = part - (part @ comps.T) @ comps
    norm = np.linalg.norm(x, axis=1).astype(np.float64)
    err = np.linalg.norm(residual, axis=1).astype(np.float64)
    out: npt.NDArray[np.float64] = np.where(norm > 0, err / np.maximum(norm, 1e-12), 1.0)
    return out


def mass_outside(
    basis: LikenessBasis, images: npt.NDArray[np.generic], classes: npt.NDArray[np.integer]
) -> npt.NDArray[np.bool_]:
    """Whether each image has less or more ink than digits of its class have (bool [N])."""
    return _mass_outside(basis, _as_vectors(images), classes)


def _mass_outside(
    basis: LikenessBasis, x: npt.NDArray[np.float32], classes: npt.NDArray[np.integer]
) -> npt.NDArray[np.bool_]:
    cls = np.asarray(classes, dtype=np.int64)
    mass = x.mean(axis=1)
    out = np.zeros(x.shape[0], bool)
    if basis.mass_low is not None:
        out |= mass < basis.mass_low[cls]
    if basis.mass_high is not None:
        out |= mass > basis.mass_high[cls]
    return out


def load_basis(path: Path) -> LikenessBasis:
    """Read a basis written by ``training/calibrate.py``, validating its shapes and values.

    Its size, and the size of each array in it, are checked before any array is read: a
    basis costs at most :data:`MAX_COMPONENTS` components per class of memory, whatever the file.

    Raises:
        ValueError: the file is not a valid basis (or not a regular file, or too large).
        OSError: the file cannot be read.
    """
    if not path.is_file():
        raise ValueError(f"{path.name} is not a regular file")
    if path.stat().st_size > MAX_BASIS_BYTES:
        raise ValueError(f"{path.name} is larger than {MAX_BASIS_BYTES // 2**20} MiB")
    try:
        _check_archive(path)
        return _read_basis(path)
    except (zipfile.BadZipFile, EOFError, KeyError) as exc:
        raise ValueError(f"{path.name} is not a basis archive ({exc})") from exc


def _check_archive(path: Path) -> None:
    """Refuse an archive whose arrays would be larger than a basis's, before reading them."""
    with zipfile.ZipFile(path) as archive:
        members = archive.infolist()
        if len(members) > 2 * len(_MAX_ARRAY_BYTES):
            raise ValueError(f"{path.name} holds {len(members)} entries, not a basis")
        for member in members:
            limit = _MAX_ARRAY_BYTES.get(member.filename)
            if limit is not None and member.file_size > limit:
                raise ValueError(
                    f"{member.filename} of {path.name} is {member.file_size} bytes, more than a "
                    f"basis of at most {MAX_COMPONENTS} components per class holds"
                )


def _read_basis(path: Path) -> LikenessBasis:
    with np.load(path, allow_pickle=False) as data:
        if "means" not in data or "components" not in data:
            raise ValueError(f"{path.name} has no 'means' and 'components' arrays")
        means = np.asarray(data["means"], dtype=np.float32)
        comps = np.asarray(data["components"], dtype=np.float32)
        low = np.asarray(data["mass_low"], np.float32) if "mass_low" in data else None
        high = np.asarray(data["mass_high"], np.float32) if "mass_high" in data else None
    return LikenessBasis(means, comps, low, high)


def as_saved(basis: LikenessBasis) -> LikenessBasis:
    """``basis`` exactly as :func:`save_basis` stores it and :func:`load_basis` reads it back
    (means and components rounded to float16), to measure a threshold with what is served."""
    return LikenessBasis(
        basis.means.astype(_STORED).astype(np.float32),
        basis.components.astype(_STORED).astype(np.float32),
        basis.mass_low,
        basis.mass_high,
    )


def save_basis(path: Path, basis: LikenessBasis) -> None:
    """Write ``basis`` in the format :func:`load_basis` reads.

    A compressed ``.npz`` of float16 ``means`` [10, 784] and ``components`` [10, k, 784]
    (orthonormal rows, pixels in 0..1) and, when set, float32 ``mass_low`` and ``mass_high``
    [10]. ``path`` is written as named (no ``.npz`` added).
    """
    # Any: numpy's stub types **kwds like its allow_pickle flag.
    arrays: dict[str, Any] = {
        "means": basis.means.astype(_STORED),
        "components": basis.components.astype(_STORED),
    }
    if basis.mass_low is not None:
        arrays["mass_low"] = basis.mass_low.astype(np.float32)
    if basis.mass_high is not None:
        arrays["mass_high"] = basis.mass_high.astype(np.float32)
    with path.open("wb") as handle:
        np.savez_compressed(handle, **arrays)
