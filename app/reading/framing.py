"""Give a tightly cropped small image the paper margin its background estimate needs.

:func:`app.reading.normalize.ink_map` estimates the paper (its level, lighting and noise) from
the image itself, assuming the ink covers well under half of it and leaves the border to the paper.
A digit cropped tight to its frame (USPS digits: 16×16, ink edge to edge) breaks both: the ink
is about half of the pixels and reaches the border, so the paper estimate lands on the ink and
the digit vanishes (422 ``no_digit_found``) or comes out eroded. Framing must not matter: such
an image is read as if it had been cut with a margin, by adding one in the paper's grey level.
"""

from __future__ import annotations

from typing import Final

import numpy as np
import numpy.typing as npt

from app.reading.components import otsu_threshold

__all__ = ["paper_margin"]

FloatImage = npt.NDArray[np.float32]

# Only images this small are treated: a crop of a photo or scan this small has no uneven
# lighting to estimate, and larger images have room for their own margin.
_SMALL_SIDE: Final = 64
# The margin added, as a share of the longer side: MNIST's own is 4 of 28 px on each side.
_MARGIN: Final = 0.25
#: The widest margin added. A thin strip (one short side, one long) would otherwise be padded by a
#: quarter of its length on every side: a 20×4096 strip grew to 12.7 Mpx of float arrays. Real
#: crops that need a margin are small (no real crop's margin is near this).
MAX_MARGIN: Final = 96
# Below this contrast (grey levels) between the two classes there is nothing to frame.
_MIN_CONTRAST: Final = 24.0


def paper_margin(gray: FloatImage, ink_is_dark: bool) -> tuple[FloatImage, int] | None:
    """The image with a paper-coloured margin added, and the margin's width; None if not needed.

    Needed when the image is small and its ink (the side of Otsu's threshold that
    ``ink_is_dark`` says) touches the frame.
    """
    g = np.asarray(gray, dtype=np.float32)
    if g.ndim != 2 or min(g.shape) >= _SMALL_SIDE or min(g.shape) < 2:
        return None
    # Otsu on 64 bins of 0..256 grey levels (the division by 256 is exact in binary floats).
    level = otsu_threshold(g / 256.0, bins=64) * 256.0
    ink = g < level if ink_is_dark else g >= level
    if ink.all() or not ink.any():
        return None
    paper = float(np.median(g[~ink]))
    if abs(float(np.median(g[ink])) - paper) < _MIN_CONTRAST:
        return None
    touches = ink[0].any() or ink[-1].any() or ink[:, 0].any() or ink[:, -1].any()
    if not touches:
        return None
    pad = min(MAX_MARGIN, max(2, round(_MARGIN * max(g.shape))))
    padded: FloatImage = np.pad(g, pad, constant_values=paper).astype(np.float32)
    return padded, pad
