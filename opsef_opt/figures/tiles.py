"""One crop drawn as a tile of a sheet: scaled to the tile first, outlines drawn at display resolution."""
from __future__ import annotations

import numpy as np
from PIL import Image

from opsef_opt.figures.overlay import OUTLINE_RGB, Match, line_width, outline_rgb, to_uint8, truth_overlay

__all__ = ["tile_rgb"]


def _nearest(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    return np.asarray(Image.fromarray(np.asarray(labels).astype(np.int32)).resize(size, Image.Resampling.NEAREST))


def tile_rgb(image: np.ndarray, labels: np.ndarray, side: int, color: tuple[int, int, int] | np.ndarray = OUTLINE_RGB,
             truth: np.ndarray | None = None, match: Match | None = None, what: str = "tile") -> np.ndarray:
    """The crop's overlay with its longer side ``side`` px.

    The image is scaled by area averaging (shrinking) or bilinearly
    (enlarging), label images by nearest neighbours; outlines (on a dark halo)
    are drawn afterwards at display resolution, so they stay crisp and are
    never averaged away: 1 px wide up to 1.5 x enlargement, then 2, from 3 x 3 px.
    With ``match`` and ``truth`` (crops of the whole image's labels, ids as
    matched), true positives, false positives and misses are coloured
    (:func:`opsef_opt.figures.overlay.truth_overlay`); otherwise every outline
    is ``color`` (one RGB, or a ``(max_id + 1, 3)`` table: a colour per label id).
    """
    img8 = to_uint8(image)
    labels = np.asarray(labels)
    if labels.shape != img8.shape[:2]:
        raise ValueError(f"{what}: labels {labels.shape} and image {img8.shape[:2]} differ")
    h, w = labels.shape
    scale = side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    if size != (w, h):
        method = Image.Resampling.BOX if scale < 1 else Image.Resampling.BILINEAR
        img8 = np.asarray(Image.fromarray(img8).resize(size, method))
        labels = _nearest(labels, size)
        truth = None if truth is None else _nearest(truth, size)
    width = line_width(scale)
    if match is not None and truth is not None:
        return truth_overlay(img8, labels, np.asarray(truth), match, width=width)[0]
    return outline_rgb(img8, labels, color, width=width)
