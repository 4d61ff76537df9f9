"""Edges slot: gradient magnitude, turning objects into their outlines.

Planewise: 2-D float32 in, 2-D float32 >= 0 of the same shape out (not
rescaled; the chain re-normalises).
"""
from __future__ import annotations

import numpy as np
from skimage import filters

from ._arrays import as_plane
from .registry import step

__all__ = ["sobel", "roberts"]


@step("edges", "sobel")
def sobel(image: np.ndarray) -> np.ndarray:
    """Sobel gradient magnitude (``skimage.filters.sobel``), 3 x 3 kernels.

    Parameters
    ----------
    image : (M, N) ndarray
        Float plane, normally in [0, 1] (converted to float32).

    Returns
    -------
    (M, N) ndarray of float32, >= 0
    """
    plane = as_plane(image, "sobel")
    return filters.sobel(plane).astype(np.float32, copy=False)


@step("edges", "roberts")
def roberts(image: np.ndarray) -> np.ndarray:
    """Roberts cross gradient magnitude (``skimage.filters.roberts``), 2 x 2 kernels.

    Sharper but noisier than Sobel.

    Parameters
    ----------
    image : (M, N) ndarray
        Float plane, normally in [0, 1] (converted to float32).

    Returns
    -------
    (M, N) ndarray of float32, >= 0
    """
    plane = as_plane(image, "roberts")
    return filters.roberts(plane).astype(np.float32, copy=False)
