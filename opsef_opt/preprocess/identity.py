"""The ``none`` step, registered in every slot: leave the image unchanged."""
from __future__ import annotations

import numpy as np

from .registry import SLOTS, step

__all__ = ["identity"]


def identity(image: np.ndarray, axes: str) -> tuple[np.ndarray, str]:
    """Leave the image unchanged (the ``none`` choice of every slot).

    Parameters
    ----------
    image : ndarray
        Any dtype and shape.
    axes : str
        Axis letters of ``image``.

    Returns
    -------
    image, axes
        The same array (not a copy) and the same axes.
    """
    return image, axes


for _slot in SLOTS:
    step(_slot, "none", planewise=False)(identity)
