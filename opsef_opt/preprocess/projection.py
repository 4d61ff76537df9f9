"""Projection slot: collapse a Z stack to one plane.

These steps are not planewise: they take ``(image, axes)`` and reduce the
``Z`` axis, turning ``ZYX`` into ``YX`` and ``ZYXC`` into ``YXC``. On data
without a Z axis they return the input unchanged. Output is float32, not
rescaled (the chain re-normalises, so ``sum`` and ``mean`` give the same
chain output).
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from .registry import step

__all__ = ["max_projection", "sum_projection", "mean_projection", "median_projection"]


def _project(image: np.ndarray, axes: str, reduce: Callable) -> tuple[np.ndarray, str]:
    if "Z" not in axes:
        return image, axes
    z = axes.index("Z")
    out = reduce(np.asarray(image, dtype=np.float32), axis=z)
    return np.asarray(out, dtype=np.float32), axes.replace("Z", "")


def _doc(what: str) -> str:
    return f"""{what}.

    Parameters
    ----------
    image : ndarray
        Stack with a ``Z`` axis (any real dtype, computed in float32).
    axes : str
        Axis letters of ``image``, e.g. ``"ZYX"`` or ``"ZYXC"``.

    Returns
    -------
    projected : ndarray of float32
        ``image`` without the Z axis (unchanged if there is none).
    axes : str
        ``axes`` without ``"Z"``.
    """


def max_projection(image: np.ndarray, axes: str = "ZYX") -> tuple[np.ndarray, str]:
    return _project(image, axes, np.max)


def sum_projection(image: np.ndarray, axes: str = "ZYX") -> tuple[np.ndarray, str]:
    return _project(image, axes, np.sum)


def mean_projection(image: np.ndarray, axes: str = "ZYX") -> tuple[np.ndarray, str]:
    return _project(image, axes, np.mean)


def median_projection(image: np.ndarray, axes: str = "ZYX") -> tuple[np.ndarray, str]:
    return _project(image, axes, np.median)


for _func, _name, _what in (
    (max_projection, "max", "Maximum-intensity projection along Z: brightest value"),
    (sum_projection, "sum", "Sum projection along Z: total intensity"),
    (mean_projection, "mean", "Mean projection along Z: average intensity"),
    (median_projection, "median", "Median projection along Z: ignores outlier planes"),
):
    _func.__doc__ = _doc(_what)
    step("projection", _name, planewise=False)(_func)
