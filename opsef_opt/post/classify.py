"""Sort objects into two classes by a mask (OpSeF's user-mask / second-channel classification).

The mask comes from a second channel (``mask_from_channel``, OpSeF's way:
smooth, threshold at Otsu times a factor, clean up) or from a user-drawn
mask image; ``classify_objects`` then calls each object inside or outside,
and ``class_overlay`` draws the two classes in two colours for checking.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import ndimage as ndi
from skimage.filters import gaussian, threshold_otsu
from skimage.morphology import ball, disk
from skimage.morphology import closing as _closing
from skimage.morphology import opening as _opening
from skimage.segmentation import find_boundaries

__all__ = ["mask_from_channel", "classify_objects", "class_overlay", "CLASS_COLORS", "DEFAULT_CLASS_COLORS"]

#: outline colours: magenta and green (told apart with the common colour-vision
#: deficiencies, visible on grey, fluorescence and H&E), then more for other classes
CLASS_COLORS = ((255, 0, 255), (0, 255, 0), (255, 255, 0), (0, 255, 255), (255, 128, 0), (255, 255, 255))
#: fixed colours of classify_objects' default names, the same in every image
DEFAULT_CLASS_COLORS = {"inside": CLASS_COLORS[0], "outside": CLASS_COLORS[1]}


def _footprint(radius: int, ndim: int) -> np.ndarray:
    return disk(radius) if ndim == 2 else ball(radius)


def mask_from_channel(
    channel: np.ndarray,
    sigma: float = 2.0,
    otsu_factor: float = 1.0,
    opening: int = 0,
    closing: int = 0,
    fill_holes: bool = True,
    min_size: int = 0,
) -> np.ndarray:
    """Boolean foreground mask of a (second) channel, as OpSeF made its classification masks.

    Steps: Gaussian smoothing (``sigma`` px; 0 = none), threshold = Otsu's
    threshold of the smoothed image times ``otsu_factor`` (> 1 stricter,
    < 1 more permissive), then a binary opening and a closing with a disk
    (ball for 3D) of the given radii (0 = skip), holes filled, and connected
    components smaller than ``min_size`` pixels removed. A constant channel
    gives an empty mask. Deterministic.
    """
    img = np.asarray(channel, dtype=np.float64)
    if img.ndim not in (2, 3):
        raise ValueError(f"channel must be 2D (Y, X) or 3D (Z, Y, X); got shape {img.shape}")
    if otsu_factor <= 0 or sigma < 0 or opening < 0 or closing < 0 or min_size < 0:
        raise ValueError("mask_from_channel: otsu_factor must be > 0 and sigma, opening, closing, "
                         f"min_size >= 0 (got {otsu_factor}, {sigma}, {opening}, {closing}, {min_size})")
    if not np.isfinite(img).all():
        raise ValueError("mask_from_channel: the channel contains NaN or infinite values")
    smooth = gaussian(img, sigma=sigma, preserve_range=True) if sigma > 0 else img
    if smooth.size == 0 or float(smooth.max()) <= float(smooth.min()):
        return np.zeros(img.shape, dtype=bool)
    mask = smooth > threshold_otsu(smooth) * otsu_factor
    if opening:
        mask = _opening(mask, _footprint(opening, img.ndim))
    if closing:
        mask = _closing(mask, _footprint(closing, img.ndim))
    if fill_holes:
        mask = ndi.binary_fill_holes(mask)
    if min_size > 1:
        comp, _ = ndi.label(mask)
        sizes = np.bincount(comp.ravel())
        small = sizes < min_size
        small[0] = False
        mask = mask & ~small[comp]
    return np.asarray(mask, dtype=bool)



def classify_objects(
    labels: np.ndarray,
    mask: np.ndarray,
    rule: str = "centroid",
    min_overlap: float = 0.5,
    names: Sequence[str] = ("inside", "outside"),
) -> pd.DataFrame:
    """Class of each object of ``labels``: ``names[0]`` if in ``mask``, else ``names[1]``.

    ``rule="centroid"``: the mask pixel under the object's centroid decides
    (the centroid rounded to the nearest pixel, halves up, so with a mask of
    columns 0..127 an object is inside exactly when its centroid x < 127.5).
    ``rule="overlap"``: inside when the fraction of the object's pixels in
    the mask is >= ``min_overlap``. Columns: ``label``, ``class`` and
    ``mask_overlap`` (that fraction, reported for both rules).
    """
    labels = np.asarray(labels)
    mask = np.asarray(mask)
    if mask.shape != labels.shape:
        raise ValueError(f"mask shape {mask.shape} does not match the labels {labels.shape}")
    if rule not in ("centroid", "overlap"):
        raise ValueError(f"rule {rule!r} is unknown; use 'centroid' or 'overlap'")
    if not 0 <= min_overlap <= 1:
        raise ValueError(f"min_overlap must be within [0, 1]; got {min_overlap}")
    if len(names) != 2:
        raise ValueError(f"names must be two class names (inside, outside); got {names!r}")
    mask = mask.astype(bool)
    fg = labels > 0
    lab = labels[fg].astype(np.int64)
    n = int(lab.max(initial=0)) + 1
    count = np.bincount(lab, minlength=n)
    ids = np.flatnonzero(count)
    ids = ids[ids > 0]
    overlap = np.bincount(lab, weights=mask[fg], minlength=n)[ids] / count[ids]
    if rule == "overlap":
        inside = overlap >= min_overlap
    else:
        coords = np.nonzero(fg)
        centre = [np.bincount(lab, weights=c, minlength=n)[ids] / count[ids] for c in coords]
        pixel = tuple(np.floor(c + 0.5).astype(np.int64) for c in centre)
        inside = mask[pixel] if ids.size else np.zeros(0, bool)
    return pd.DataFrame({"label": ids.astype(np.int64),
                         "class": np.where(inside, names[0], names[1]).astype(object),
                         "mask_overlap": overlap.astype(float)})


def _normalised_rgb(image: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """8-bit RGB of ``image`` stretched between its 0.5th and 99.5th percentiles (robust to hot pixels)."""
    img = np.asarray(image, dtype=np.float64)
    if img.shape == shape:
        img = img[..., None]
    elif not (img.ndim == 3 and img.shape[:2] == shape and img.shape[2] in (1, 3, 4)):
        raise ValueError(f"image shape {img.shape} does not match the labels {shape} "
                         "(expected (Y, X) or (Y, X, 1|3|4))")
    img = img[..., :3]
    finite = img[np.isfinite(img)]
    lo, hi = (np.percentile(finite, (0.5, 99.5)) if finite.size else (0.0, 0.0))
    if hi <= lo:
        hi = lo + 1.0
    out = np.round(np.clip((np.nan_to_num(img, nan=lo) - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8)
    return np.repeat(out, 3, axis=-1) if out.shape[-1] == 1 else out


def class_overlay(
    image: np.ndarray,
    labels: np.ndarray,
    classes: Mapping[int, str],
    colors: Mapping[str, tuple[int, int, int]] | None = None,
) -> np.ndarray:
    """(Y, X, 3) uint8: the normalised image with each object's outline in its class colour.

    Default colours: ``inside`` magenta and ``outside`` green
    (``DEFAULT_CLASS_COLORS``); other class names take the next
    ``CLASS_COLORS`` in sorted-name order -- pass ``colors`` (class name ->
    RGB, covering every class) to keep custom classes' colours fixed across
    images. Objects missing from ``classes`` get no outline.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"class_overlay draws 2D labels (Y, X); got shape {labels.shape}")
    rgb = _normalised_rgb(image, labels.shape)
    order = sorted(set(classes.values()), key=str)
    if colors is None:
        others = [c for c in order if c not in DEFAULT_CLASS_COLORS]
        spare = CLASS_COLORS[len(DEFAULT_CLASS_COLORS):]
        colors = {**DEFAULT_CLASS_COLORS, **{c: spare[i % len(spare)] for i, c in enumerate(others)}}
    missing = [c for c in order if c not in colors]
    if missing:
        raise ValueError(f"colors has no entry for class(es) {missing}; give one RGB per class")
    n = int(max(labels.max(initial=0), max(classes, default=0))) + 1
    lut = np.full((n, 3), -1, dtype=np.int16)
    for label, name in classes.items():
        if 0 < int(label) < n:
            lut[int(label)] = colors[name]
    edges = find_boundaries(labels, mode="inner") & (labels > 0)
    colour = lut[labels[edges]]
    drawn = colour[:, 0] >= 0
    ys, xs = np.nonzero(edges)
    rgb[ys[drawn], xs[drawn]] = colour[drawn].astype(np.uint8)
    return rgb
