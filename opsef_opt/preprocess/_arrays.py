"""Small array helpers shared by the step modules."""
from __future__ import annotations

import numpy as np

__all__ = ["as_plane"]


def as_plane(image: np.ndarray, step: str) -> np.ndarray:
    """Return ``image`` as a 2-D float32 array, or raise if it is not 2-D.

    Planewise steps work on single YX planes; the chain maps them over Z and
    colour channels. Values are not rescaled.
    """
    arr = np.asarray(image)
    if arr.ndim != 2:
        raise ValueError(
            f"{step} works on 2-D (YX) planes, got an array of shape {arr.shape}; "
            "use opsef_opt.preprocess.run_chain for stacks and RGB images"
        )
    return arr.astype(np.float32, copy=False)
