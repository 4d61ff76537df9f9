"""Invert slot: swap dark and bright, e.g. for dark objects on a bright field."""
from __future__ import annotations

import numpy as np

from ._arrays import as_plane
from .registry import step

__all__ = ["invert"]


@step("invert", "invert")
def invert(image: np.ndarray) -> np.ndarray:
    """Return ``1 - image``.

    Parameters
    ----------
    image : (M, N) ndarray
        Float plane in [0, 1] (converted to float32).

    Returns
    -------
    (M, N) ndarray of float32 in [0, 1]
    """
    plane = as_plane(image, "invert")
    return np.float32(1.0) - plane
