"""Boundary contrast proxy: do the objects stand out from their immediate surroundings?

Why it tracks quality: a correctly delineated nucleus differs in intensity
from the thin band of background just outside it, since its boundary is where
the intensity changes. An object that swallowed background (a merge across
the gap between two nuclei, a blob that is too large) has a diluted inside
and its ring no longer sits at the edge; an object that is too small or a
noise speck has a ring that lies on the same nucleus or the same background;
both reduce the difference.

Measured on ``result.raw``: the same reference intensities for every
candidate pipeline, so a preprocessing that boosts contrast does not score
itself (``result.image`` is the fallback, channels averaged). The absolute
difference is used because objects are bright in fluorescence and dark in
H&E or brightfield. Per object, the difference is divided by the image's
1-99 percentile range and clipped to [0, 1]; the value is the plain mean
over objects (objects with no background around them count as 0). Plain,
not area-weighted, so that each object counts once, as it does in the F1
the proxy stands in for: a hundred faint false detections weigh a hundred
times one real nucleus.

Details:

``contrast.edge``
    share of image pixels whose gradient magnitude is below the mean
    gradient on the object boundaries (0.5 = boundaries lie on average
    gradient, close to 1 = boundaries follow the strongest edges).
The share of the intensity variance the mask explains (:func:`separation`,
which sees *missed* objects) is its own proxy, ``separation``, computed once
per image there.

Works for 2D and 3D labels. No objects: 0.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
from scipy import ndimage as ndi

from opsef_opt.params import Param
from opsef_opt.score.proxies._derived import derived
from opsef_opt.score.proxies._match import relabel
from opsef_opt.score.registry import ImageResult, register_proxy

__all__ = ["reference_image", "object_contrast", "edge_alignment", "separation", "contrast_score"]


def reference_image(result: ImageResult) -> np.ndarray:
    """``result.raw``, or ``result.image`` with a trailing channel axis averaged away."""
    if result.raw is not None:
        return np.asarray(result.raw, np.float32)
    image = np.asarray(result.image, np.float32)
    labels_ndim = np.ndim(result.labels)
    if image.ndim == labels_ndim + 1:
        image = image.mean(axis=-1)
    if image.shape != np.shape(result.labels):
        raise ValueError(f"image shape {image.shape} does not match labels shape {np.shape(result.labels)}")
    return image


def _window_extreme(labels: np.ndarray, radius: int, pick: Callable) -> np.ndarray:
    """``pick`` (``np.maximum`` / ``np.minimum``) over the (2 radius + 1)-wide box around each pixel.

    Image edges repeat the border pixel, so this equals
    ``ndimage.maximum_filter(labels, size, mode="nearest")`` (and, for radius
    1, ``ndimage.grey_erosion(labels, size)``, whose "reflect" edges repeat
    the border too); separable shifted slices are ~3x faster than ndimage's
    filters on label images.
    """
    out = np.asarray(labels)
    for axis in range(out.ndim):
        pad = [(0, 0)] * out.ndim
        pad[axis] = (radius, radius)
        padded = np.pad(out, pad, mode="edge")
        n = out.shape[axis]

        def shifted(k: int) -> np.ndarray:
            return padded[(slice(None),) * axis + (slice(k, k + n),)]

        acc = shifted(0).copy()
        for k in range(1, 2 * radius + 1):
            pick(acc, shifted(k), out=acc)
        out = acc
    return out


def _gradient(image: np.ndarray) -> np.ndarray:
    """Sobel gradient magnitude, float32."""
    return np.sqrt(sum(ndi.sobel(image, axis=a) ** 2 for a in range(image.ndim))).astype(np.float32)


def _spread(image: np.ndarray) -> float:
    flat = image.ravel()
    step = max(flat.size // 1_000_000, 1)
    lo, hi = np.percentile(flat[::step], (1, 99))
    return max(float(hi - lo), 1e-6)


def object_contrast(labels: np.ndarray, image: np.ndarray, ring: int = 2) -> np.ndarray:
    """Per-object boundary contrast in [0, 1] for sequential ``labels`` 1..n.

    ``|mean inside - mean of the ring of width ring px just outside|``
    (ring pixels are the background pixels within ``ring`` px, chessboard
    distance, of an object; one between two objects goes to the larger id)
    divided by the 1-99 percentile range of ``image``; NaN for an
    object without ring pixels. Vectorised with ``bincount``: O(pixels).
    """
    labels = np.asarray(labels)
    image = np.asarray(image, np.float32)
    n = int(labels.max(initial=0))
    if n == 0:
        return np.zeros(0)
    grown = _window_extreme(labels, int(ring), np.maximum)
    band = np.where(labels == 0, grown, 0).ravel()
    lab = labels.ravel()
    flat = image.ravel().astype(np.float64)
    inside_n = np.bincount(lab, minlength=n + 1)[1:]
    inside = np.bincount(lab, flat, minlength=n + 1)[1:] / np.maximum(inside_n, 1)
    ring_n = np.bincount(band, minlength=n + 1)[1:]
    ring_mean = np.bincount(band, flat, minlength=n + 1)[1:] / np.maximum(ring_n, 1)
    value = np.clip(np.abs(inside - ring_mean) / derived(image, "spread", _spread), 0.0, 1.0)
    return np.where(ring_n > 0, value, np.nan)


def edge_alignment(labels: np.ndarray, image: np.ndarray) -> float:
    """Share of pixels with a gradient magnitude below the mean gradient on the object boundaries."""
    labels = np.asarray(labels)
    image = np.asarray(image, np.float32)
    grad = derived(image, "gradient", _gradient)
    boundary = labels != _window_extreme(labels, 1, np.minimum)
    boundary &= labels > 0
    if not boundary.any():
        return 0.0
    return float(np.mean(grad < grad[boundary].mean()))


def separation(labels: np.ndarray, image: np.ndarray) -> float:
    """Share of the intensity variance explained by the object/background partition (0 if degenerate)."""
    fg = np.asarray(labels) > 0
    image = np.asarray(image, np.float64)
    w = float(fg.mean())
    total = float(image.var())
    if w in (0.0, 1.0) or total <= 0:
        return 0.0
    diff = float(image[fg].mean() - image[~fg].mean())
    return float(np.clip(w * (1 - w) * diff * diff / total, 0.0, 1.0))


@register_proxy(
    "contrast", weight=0.0,  # logged, not weighted: see "Default weights" in __init__
    params=[Param("ring", "int", 2, low=1, high=20, help="width in pixels of the band just outside each object")],
)
def contrast_score(result: ImageResult, ring: int = 2) -> dict[str, float]:
    """Mean per-object |inside - surrounding ring| intensity difference, relative to the image's range."""
    labels, n = relabel(result.labels)
    if n == 0:
        return {"contrast": 0.0, "contrast.edge": 0.0}
    image = reference_image(result)
    per_object = object_contrast(labels, image, ring=ring)
    value = float(np.nan_to_num(per_object, nan=0.0).mean())
    return {"contrast": value, "contrast.edge": edge_alignment(labels, image)}
