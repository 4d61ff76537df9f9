"""Classical segmentation: global/local threshold + distance-transform watershed.

No weights, fast, and a strong baseline for well-separated bright nuclei; the
reference point every deep model has to beat in a study.
"""
from __future__ import annotations

import numpy as np
from skimage import filters, morphology

from opsef_opt.params import Param
from opsef_opt.segment.base import Segmentation, Segmenter
from opsef_opt.segment.instances import split_foreground
from opsef_opt.segment.registry import register_segmenter

__all__ = ["ClassicalSegmenter", "threshold_watershed"]

_THRESHOLDS = {
    "otsu": filters.threshold_otsu,
    "li": filters.threshold_li,
    "triangle": filters.threshold_triangle,
    "yen": filters.threshold_yen,
}


def threshold_watershed(
    image: np.ndarray,
    threshold: str = "otsu",
    local_block: int = 51,
    smooth_sigma: float = 1.0,
    min_distance: int = 5,
    min_size: int = 20,
    split: bool = True,
    fixed_threshold: float | None = None,
) -> np.ndarray:
    """Segment bright objects on a dark background into an int32 label image.

    Parameters
    ----------
    image : (Y, X) float array
        Objects brighter than background (use the ``invert`` step otherwise).
    threshold : {"otsu", "li", "triangle", "yen", "local"}
        Foreground threshold; ``local`` uses a Gaussian-weighted local mean
        over ``local_block`` pixels (for uneven illumination).
    smooth_sigma : float
        Gaussian smoothing before thresholding (0 = none); suppresses noise
        that would otherwise create spurious seeds.
    min_distance : int
        Minimum distance between watershed seeds (maxima of the distance
        transform), roughly the smallest object radius in pixels. Larger
        values merge touching objects, smaller values split them.
    min_size : int
        Objects (and holes) smaller than this many pixels are removed.
    split : bool
        Split touching objects by watershed; ``False`` returns connected
        components of the foreground.
    fixed_threshold : float, optional
        Use this value instead of computing ``threshold`` on ``image`` (the
        whole image's threshold, when ``image`` is one tile of it).

    Examples
    --------
    >>> from skimage import data
    >>> labels = threshold_watershed(data.coins() / 255.0, smooth_sigma=2, min_distance=10)
    >>> int(labels.max()) > 10
    True
    """
    img = np.asarray(image, dtype=np.float32)
    if img.ndim != 2:
        raise ValueError(f"threshold_watershed expects a 2D image, got shape {img.shape}")
    if smooth_sigma > 0:
        img = filters.gaussian(img, sigma=smooth_sigma, preserve_range=True)
    if float(img.max()) == float(img.min()):
        return np.zeros(img.shape, np.int32)
    if fixed_threshold is not None:
        fg = img > fixed_threshold
    elif threshold == "local":
        fg = img > filters.threshold_local(img, block_size=local_block, method="gaussian")
        # a local threshold also marks background texture: keep only above-global-minimum signal
        fg &= img > filters.threshold_triangle(img)
    else:
        fg = img > _THRESHOLDS[threshold](img)
    if min_size > 0:
        fg = morphology.remove_small_objects(fg, max_size=min_size - 1) if min_size > 1 else fg
        fg = morphology.remove_small_holes(fg, max_size=min_size - 1) if min_size > 1 else fg
    return split_foreground(fg, min_distance=min_distance if split else 0, min_size=min_size)


@register_segmenter
class ClassicalSegmenter(Segmenter):
    """Threshold + distance-transform watershed (scikit-image); needs no weights."""

    family = "classical"
    params = (
        Param("threshold", "categorical", "otsu", choices=("otsu", "li", "triangle", "yen", "local"),
              help="foreground threshold method"),
        Param("local_block", "int", 51, low=3, high=1001, odd=True, help="block size of the local threshold"),
        Param("smooth_sigma", "float", 1.0, low=0.0, high=20.0, help="Gaussian smoothing before thresholding"),
        Param("min_distance", "int", 5, low=1, high=200, help="min distance between watershed seeds (px)"),
        Param("min_size", "int", 20, low=0, high=1_000_000, help="remove objects/holes smaller than this (px)"),
        Param("split", "bool", True, help="split touching objects by watershed"),
    )

    # No network: every parameter is post-processing (``inference_params`` is empty) and the "raw
    # output" is the preprocessed image itself, which the preprocessing cache already keeps; the
    # search therefore caches no raw output for this family and counts no forward passes.
    has_network = False
    inference_params = ()

    def infer(self, image: np.ndarray, stats: dict | None = None, **_: object) -> dict[str, np.ndarray]:
        return {}

    def postprocess(self, raw: dict, image: np.ndarray, stats: dict | None = None, **params) -> Segmentation:
        fixed = (stats or {}).get("threshold")
        return Segmentation(threshold_watershed(image, fixed_threshold=fixed, **params))

    def stats_input(self, image: np.ndarray, smooth_sigma: float = 1.0, **params) -> np.ndarray:
        img = np.asarray(image, np.float32)
        return filters.gaussian(img, sigma=smooth_sigma, preserve_range=True) if smooth_sigma > 0 else img

    def image_stats(self, sample: np.ndarray, threshold: str = "otsu", **params) -> dict[str, float]:
        if threshold == "local" or sample.size == 0 or float(sample.max()) == float(sample.min()):
            return {}  # a local threshold is local by design
        return {"threshold": float(_THRESHOLDS[threshold](sample))}
