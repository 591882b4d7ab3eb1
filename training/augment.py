"""Training augmentation: extra copies of the training digits, on raw uint8 images.

Applied to the fit split only, BEFORE the recipe's numeric preprocessing (which lives inside the
SavedModel and so runs on every copy exactly as it will on an upload). The model stays the same
784 -> 10 softmax layer; what changes is what it is fitted on.

``thickness``: every fit digit plus a dilated copy (strokes a pixel wider on each side) and a
thinned copy (strokes eroded where that keeps them). Real pens are thicker or finer than
MNIST's; a linear model fitted on one stroke width is less sure of the others, and the review
rule flags what it is unsure of.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Final

import numpy as np
import numpy.typing as npt

__all__ = ["AUGMENTATIONS", "augment_split", "dilate", "thin"]

Images = npt.NDArray[np.uint8]


def _check(images: Images) -> None:
    if images.dtype != np.uint8 or images.ndim != 3:
        raise ValueError(
            f"expected uint8 images of shape (n, height, width), got {images.dtype} {images.shape}"
        )


def dilate(images: Images) -> Images:
    """Each pixel becomes the brightest of its 3x3 neighbourhood: strokes one pixel wider on
    every side (MNIST polarity: white ink on black)."""
    _check(images)
    height, width = images.shape[1:]
    padded = np.pad(images, ((0, 0), (1, 1), (1, 1)))
    out = images.copy()
    for dy in range(3):
        for dx in range(3):
            np.maximum(out, padded[:, dy : dy + height, dx : dx + width], out=out)
    return out


def thin(images: Images) -> Images:
    """A soft erosion: each pixel drops to the darkest of its four cross neighbours, but never
    below half its own value, so a stroke one or two pixels wide is dimmed, not erased."""
    _check(images)
    height, width = images.shape[1:]
    padded = np.pad(images, ((0, 0), (1, 1), (1, 1)))
    half = images // 2
    out = images.copy()
    for dy, dx in ((0, 1), (2, 1), (1, 0), (1, 2)):
        neighbour = padded[:, dy : dy + height, dx : dx + width]
        np.minimum(out, np.maximum(neighbour, half), out=out)
    return out


#: Augmentation name -> the transforms whose copies are added beside the originals.
AUGMENTATIONS: Final[dict[str, tuple[Callable[[Images], Images], ...]]] = {
    "thickness": (dilate, thin),
}


def augment_split(
    images: Images,
    labels: npt.NDArray[np.integer[Any]],
    names: Sequence[str],
    seed: int,
) -> tuple[Images, npt.NDArray[np.integer[Any]]]:
    """The fit split with every named augmentation's copies added, shuffled with ``seed``.

    The originals are kept; each transform adds one copy of every image with its label, so
    ``thickness`` triples the split. No names: the split unchanged (not shuffled). The shuffle
    mixes copies into every batch; the same seed gives the same order.
    """
    _check(images)
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    unknown = [name for name in names if name not in AUGMENTATIONS]
    if unknown:
        raise ValueError(f"unknown augmentation {unknown[0]!r}; known: {sorted(AUGMENTATIONS)}")
    if not names:
        return images, labels
    parts, part_labels = [images], [labels]
    for name in names:
        for transform in AUGMENTATIONS[name]:
            parts.append(transform(images))
            part_labels.append(labels)
    all_images, all_labels = np.concatenate(parts), np.concatenate(part_labels)
    order = np.random.default_rng(seed).permutation(len(all_images))
    return all_images[order], all_labels[order]
