"""Which window of an image to show: where candidate segmentations disagree most."""
from __future__ import annotations

from typing import Sequence

import numpy as np
from skimage.segmentation import find_boundaries

__all__ = ["choose_crop"]


def choose_crop(image: np.ndarray, labels: Sequence[np.ndarray], size: int = 256) -> tuple[slice, slice]:
    """The ``size`` x ``size`` window (the whole extent where the image is smaller) worth comparing.

    Each pixel scores ``f + 4 f (1 - f) + 4 b (1 - b)``, where ``f`` is the
    fraction of candidate segmentations that call it foreground and ``b`` the
    fraction that draw an object boundary through it.  The first term favours
    windows full of objects (an empty window says nothing about a
    segmentation); the other two are 1 where half the candidates disagree and
    0 where all agree, so windows where candidates split, merge, miss or
    reshape objects differently win over ones where every candidate looks the
    same.  With a single candidate this is simply the window with the most
    object pixels.  Window sums come from a summed-area table, so every
    position is tried; ties go to the top-most, then left-most window.  When
    no candidate has any object, the centred window is returned.

    Parameters
    ----------
    image : numpy.ndarray
        (Y, X) or (Y, X, C) image; only its (Y, X) extent is used.
    labels : sequence of numpy.ndarray
        Candidate label images, each (Y, X).
    size : int
        Side of the window in pixels.

    Returns
    -------
    tuple of slice
        ``(rows, cols)`` to index the image and every label image with.
    """
    height, width = np.asarray(image).shape[:2]
    h, w = min(size, height), min(size, width)
    centred = (slice((height - h) // 2, (height - h) // 2 + h), slice((width - w) // 2, (width - w) // 2 + w))
    labels = [np.asarray(lab) for lab in labels]
    for lab in labels:
        if lab.shape != (height, width):
            raise ValueError(f"labels of shape {lab.shape} do not match the image ({height}, {width})")
    if not labels or not any(lab.any() for lab in labels):
        return centred
    fg = np.mean([lab > 0 for lab in labels], axis=0)
    edge = np.mean([find_boundaries(lab, mode="inner") for lab in labels], axis=0)
    score = fg + 4 * fg * (1 - fg) + 4 * edge * (1 - edge)
    table = np.pad(score.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    sums = table[h:, w:] - table[:-h, w:] - table[h:, :-w] + table[:-h, :-w]
    y0, x0 = np.unravel_index(int(np.argmax(sums)), sums.shape)
    return slice(int(y0), int(y0) + h), slice(int(x0), int(x0) + w)
