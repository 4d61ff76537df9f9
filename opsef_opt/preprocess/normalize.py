"""Min-max normalisation to [0, 1], the common intensity scale of the chain."""
from __future__ import annotations

import numpy as np

__all__ = ["normalize01", "normalize_range", "value_range"]


def normalize01(image: np.ndarray) -> np.ndarray:
    """Rescale an image to float32 in [0, 1] using its own minimum and maximum.

    The range is taken from the image itself rather than from its dtype:
    microscopy uint16 data often use only 12 bits, so dividing by 65535 would
    leave it dark and compress every later threshold into a sliver of [0, 1].

    Parameters
    ----------
    image : ndarray
        Any real dtype (bool, integer or float), any shape.

    Returns
    -------
    ndarray of float32, same shape
        ``(image - min) / (max - min)``. A constant image gives zeros.
        NaN and infinite values are ignored when finding the range and are set
        to 0 in the output, so downstream filters never see them.
    """
    arr = np.asarray(image)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    if arr.size == 0:
        return arr.astype(np.float32)
    return normalize_range(arr, *value_range(arr))


def value_range(image: np.ndarray) -> tuple[float, float]:
    """(min, max) of the finite values of ``image``; (0, 0) when there are none."""
    arr = np.asarray(image)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    if arr.size == 0:
        return 0.0, 0.0
    if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
        finite = arr[np.isfinite(arr)]
        return (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    return float(arr.min()), float(arr.max())


def normalize_range(image: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Rescale ``image`` to float32 [0, 1] with a given range (values outside are clipped).

    Used to scale a tile with the range of the whole image it belongs to,
    so tiles of one image are scaled alike (see :func:`normalize01`).
    """
    out = np.asarray(image).astype(np.float32, copy=True)
    out[~np.isfinite(out)] = lo
    if hi <= lo:
        return np.zeros(out.shape, np.float32)
    out -= np.float32(lo)
    out /= np.float32(hi - lo)
    np.clip(out, 0.0, 1.0, out=out)
    return out
