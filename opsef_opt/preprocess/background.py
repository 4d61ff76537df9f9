"""Background slot: remove slowly varying or constant background.

All steps are planewise: 2-D float32 in [0, 1] in, 2-D float32 of the same
shape out, background subtracted and clipped at 0 (no rescaling; the chain
re-normalises). They assume a dark background with bright objects
(fluorescence); for brightfield, invert first outside the chain or use the
colour slot.
"""
from __future__ import annotations

import numpy as np
from skimage.measure import block_reduce
from skimage.morphology import disk, white_tophat
from skimage.restoration import ellipsoid_kernel, rolling_ball as _rolling_ball
from skimage.transform import resize

from opsef_opt.params import Param

from ._arrays import as_plane
from .registry import step

__all__ = ["subtract_constant", "rolling_ball", "tophat", "imagej_shrink_factor"]

#: Intensity units per image range used for the ball's height (see rolling_ball).
_BALL_UNITS = 255.0


@step(
    "background",
    "constant",
    params=(
        Param(
            "percentile",
            "float",
            default=5.0,
            low=0.0,
            high=50.0,
            help="percentile of the plane taken as the constant background",
        ),
    ),
)
def subtract_constant(image: np.ndarray, percentile: float = 5.0) -> np.ndarray:
    """Subtract a constant background: the plane's ``percentile``-th percentile.

    OpSeF's constant background subtraction: a single offset (camera offset,
    uniform autofluorescence) is estimated as a low percentile of the plane
    and removed; values below it are clipped to 0.

    Parameters
    ----------
    image : (M, N) ndarray
        Float plane, normally in [0, 1] (converted to float32).
    percentile : float
        In [0, 50]; 0 subtracts the minimum.

    Returns
    -------
    (M, N) ndarray of float32
        ``max(image - percentile(image), 0)``.
    """
    plane = as_plane(image, "subtract_constant")
    level = np.float32(np.percentile(plane, float(percentile)))
    return np.clip(plane - level, 0.0, None)


def imagej_shrink_factor(radius: float) -> int:
    """ImageJ's shrink factor for the rolling ball: 1, 2, 4 or 8 by radius."""
    if radius <= 10:
        return 1
    if radius <= 30:
        return 2
    if radius <= 100:
        return 4
    return 8


def _ball_opening(plane: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Grey opening of ``plane`` by the non-flat ``kernel`` (symmetric ball)."""
    eroded = _rolling_ball(plane, kernel=kernel)  # apex height of the ball
    return -_rolling_ball(-eroded, kernel=kernel)  # envelope of the balls


@step(
    "background",
    "rolling_ball",
    params=(
        Param(
            "radius",
            "int",
            default=50,
            low=2,
            high=500,
            help="ball radius in pixels; larger than the objects to keep",
        ),
    ),
)
def rolling_ball(
    image: np.ndarray, radius: int = 50, *, shrink: int | None = None
) -> np.ndarray:
    """Subtract a rolling-ball background (ImageJ's "Subtract Background").

    The background is the surface swept by the top of a ball of ``radius``
    pixels rolled under the intensity landscape, i.e. the grey opening by the
    ball, as in ImageJ and Sternberg (1983). ``skimage.restoration.rolling_ball``
    returns only the first half of that (the height of the ball's apex, an
    erosion), which lies below any sloped background; it is therefore applied
    twice, the second time to the negated result (the matching dilation).
    The ball's height is measured in 8-bit grey levels, i.e. the [0, 1] plane
    is treated as 0..255, so ``radius`` behaves as in ImageJ on 8-bit images
    whatever the original dtype.

    The exact algorithm costs ``O(radius**2)`` per pixel (over a second at
    radius 25 and many minutes at radius 500 on 512 x 512). Like ImageJ, radii
    above 10 px are therefore computed on a shrunken plane: block minima over
    ``shrink`` x ``shrink`` blocks (2 up to radius 30, 4 up to 100, 8 above),
    a ball of radius ``radius / shrink`` with the same height, and the
    background interpolated back bilinearly. This changes the result little
    (on 256 x 256 crops of scikit-image's cell, camera and coins images,
    radii 20-120: correlation >= 0.99 with the exact result, mean absolute
    difference < 0.01); pass ``shrink=1`` for the exact computation.

    Parameters
    ----------
    image : (M, N) ndarray
        Float plane in [0, 1] (converted to float32); bright objects on a
        dark background.
    radius : int
        Ball radius in pixels; should exceed the radius of the objects.
    shrink : int, optional
        Shrink factor; ``None`` (default) chooses ImageJ's factor by radius.
        Not a tunable parameter.

    Returns
    -------
    (M, N) ndarray of float32
        ``max(image - background, 0)``.
    """
    plane = as_plane(image, "rolling_ball")
    radius = int(radius)
    factor = imagej_shrink_factor(radius) if shrink is None else int(shrink)
    if factor < 1:
        raise ValueError(f"shrink must be >= 1, got {shrink}")
    height = radius / _BALL_UNITS
    if factor == 1:
        kernel = ellipsoid_kernel((2 * radius + 1, 2 * radius + 1), height)
        background = _ball_opening(plane, kernel)
    else:
        small = block_reduce(plane, (factor, factor), np.min, cval=float(plane.max()))
        small_radius = max(1, round(radius / factor))
        kernel = ellipsoid_kernel((2 * small_radius + 1, 2 * small_radius + 1), height)
        small_bg = _ball_opening(small.astype(np.float32), kernel)
        full = (small.shape[0] * factor, small.shape[1] * factor)
        background = resize(small_bg, full, order=1, mode="edge", anti_aliasing=False)
        background = background[: plane.shape[0], : plane.shape[1]]
    return np.clip(plane - background.astype(np.float32), 0.0, None)


@step(
    "background",
    "tophat",
    params=(
        Param(
            "radius",
            "int",
            default=25,
            low=1,
            high=500,
            help="disk radius in pixels; larger than the objects to keep",
        ),
    ),
)
def tophat(image: np.ndarray, radius: int = 25) -> np.ndarray:
    """Subtract the grey opening by a disk: white top-hat transform.

    Keeps bright structures narrower than the disk and removes everything
    broader (uneven illumination, large blobs). The disk is scikit-image's
    ``disk(radius, decomposition="crosses")``: a sequence of small footprints
    whose combined shape equals or closely approximates the disk, so the cost
    grows linearly rather than quadratically with the radius (about 0.1 s at
    radius 25 on 512 x 512).

    Parameters
    ----------
    image : (M, N) ndarray
        Float plane, normally in [0, 1] (converted to float32).
    radius : int
        Disk radius in pixels.

    Returns
    -------
    (M, N) ndarray of float32, >= 0
    """
    plane = as_plane(image, "tophat")
    footprint = disk(int(radius), decomposition="crosses")
    return white_tophat(plane, footprint).astype(np.float32, copy=False)
