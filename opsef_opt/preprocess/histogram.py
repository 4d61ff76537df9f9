"""Histogram slot: contrast enhancement of single planes.

Planewise: 2-D float32 in [0, 1] in, 2-D float32 in [0, 1] of the same shape
out.
"""
from __future__ import annotations

import numpy as np
from skimage.exposure import equalize_adapthist, equalize_hist

from opsef_opt.params import Param

from ._arrays import as_plane
from .registry import step

__all__ = ["equalize", "clahe"]


@step("histogram", "equalize")
def equalize(image: np.ndarray) -> np.ndarray:
    """Global histogram equalisation (``skimage.exposure.equalize_hist``).

    Spreads the intensities so their cumulative histogram is linear, which
    stretches low-contrast images.

    Parameters
    ----------
    image : (M, N) ndarray
        Float plane in [0, 1] (converted to float32).

    Returns
    -------
    (M, N) ndarray of float32 in [0, 1]
    """
    plane = as_plane(image, "equalize")
    return equalize_hist(plane).astype(np.float32, copy=False)


@step(
    "histogram",
    "clahe",
    params=(
        Param(
            "clip_limit",
            "float",
            default=0.01,
            low=0.001,
            high=1.0,
            help="contrast limit, normalised to [0, 1] (higher: more contrast)",
        ),
        Param(
            "tile_grid",
            "int",
            default=8,
            low=1,
            high=64,
            help="number of tiles per image side (8 means an 8 x 8 grid)",
        ),
    ),
)
def clahe(
    image: np.ndarray, clip_limit: float = 0.01, tile_grid: int = 8
) -> np.ndarray:
    """Contrast-limited adaptive histogram equalisation (CLAHE).

    ``skimage.exposure.equalize_adapthist``: equalises each tile's histogram
    with a clip limit that caps noise amplification, interpolating between
    tiles.

    ``tile_grid`` follows OpSeF (and OpenCV's ``tileGridSize``): it is the
    number of tiles per side, not a tile size, so ``tile_grid=8`` gives an
    8 x 8 grid whatever the image size. It is translated to scikit-image's
    ``kernel_size = image_shape // tile_grid`` (at least 1 pixel).
    ``clip_limit`` is scikit-image's normalised limit in [0, 1], not OpenCV's
    (where 2.0-4.0 are typical).

    Parameters
    ----------
    image : (M, N) ndarray
        Float plane in [0, 1] (converted to float32).
    clip_limit : float
        Normalised clip limit in [0.001, 1]; higher gives more contrast.
    tile_grid : int
        Tiles per image side.

    Returns
    -------
    (M, N) ndarray of float32 in [0, 1]
    """
    plane = as_plane(image, "clahe")
    grid = max(1, int(tile_grid))
    kernel_size = tuple(max(1, s // grid) for s in plane.shape)
    out = equalize_adapthist(
        np.clip(plane, 0.0, 1.0), kernel_size=kernel_size, clip_limit=float(clip_limit)
    )
    return out.astype(np.float32, copy=False)
