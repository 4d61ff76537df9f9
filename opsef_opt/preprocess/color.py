"""Colour slot: turn an RGB image into a single grey channel.

These steps are not planewise: they consume the trailing ``C`` axis, turning
``YXC`` into ``YX`` and ``ZYXC`` into ``ZYX``.
"""
from __future__ import annotations

import numpy as np
from skimage.color import rgb2gray, rgb2hed

from opsef_opt.params import Param

from .registry import step

__all__ = ["grayscale", "stain", "STAINS"]

#: Stains separated by :func:`stain`, in the channel order of ``rgb2hed``.
STAINS: tuple[str, ...] = ("hematoxylin", "eosin", "dab")


def _check_rgb(image: np.ndarray, axes: str, step_name: str) -> None:
    if not axes.endswith("C") or image.ndim != len(axes) or image.shape[-1] != 3:
        raise ValueError(
            f"the image has axes {axes} (shape {np.shape(image)}) and the color "
            f"step {step_name!r} needs RGB (axes YXC or ZYXC with 3 channels)"
        )


@step("color", "grayscale", planewise=False)
def grayscale(image: np.ndarray, axes: str = "YXC") -> tuple[np.ndarray, str]:
    """Convert RGB to luminance with ``skimage.color.rgb2gray``.

    Parameters
    ----------
    image : ndarray, shape (..., 3)
        RGB image, float in [0, 1] (integer input is scaled by its dtype range
        by scikit-image).
    axes : {"YXC", "ZYXC"}
        Axis letters of ``image``; the colour axis must be last.

    Returns
    -------
    gray : ndarray of float32, shape ``image.shape[:-1]``
    axes : str
        ``axes`` without ``"C"``.
    """
    _check_rgb(image, axes, "grayscale")
    return rgb2gray(image).astype(np.float32, copy=False), axes[:-1]


@step(
    "color",
    "stain",
    params=(
        Param(
            "stain",
            "categorical",
            default="hematoxylin",
            choices=STAINS,
            help="stain channel kept after colour deconvolution",
        ),
    ),
    planewise=False,
)
def stain(
    image: np.ndarray, axes: str = "YXC", stain: str = "hematoxylin"
) -> tuple[np.ndarray, str]:
    """Keep one stain of a brightfield RGB image (colour deconvolution).

    Uses ``skimage.color.rgb2hed`` (Ruifrok & Johnston's
    haematoxylin-eosin-DAB separation) and returns the chosen channel, which
    is the stain's optical density: high where the stain is dense, whatever
    its colour. Useful for H&E or IHC slides where nuclei are the
    haematoxylin signal.

    Parameters
    ----------
    image : ndarray, shape (..., 3)
        RGB image, float in [0, 1] (or an integer dtype).
    axes : {"YXC", "ZYXC"}
        Axis letters of ``image``; the colour axis must be last.
    stain : {"hematoxylin", "eosin", "dab"}
        Which stain to keep.

    Returns
    -------
    density : ndarray of float32, shape ``image.shape[:-1]``
        Not rescaled (values may be slightly negative); the chain normalises.
    axes : str
        ``axes`` without ``"C"``.
    """
    _check_rgb(image, axes, "stain")
    if stain not in STAINS:
        raise ValueError(f"stain must be one of {', '.join(STAINS)}, got {stain!r}")
    hed = rgb2hed(image)
    return hed[..., STAINS.index(stain)].astype(np.float32), axes[:-1]
