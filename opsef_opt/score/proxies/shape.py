"""Shape plausibility proxy: do the objects look like cells or nuclei?

Why it tracks quality: nuclei and most cells are compact, convex-ish blobs
of similar size. The typical failures leave shape traces: merging touching
objects creates non-convex shapes (two discs joined by a waist, or one label
spread over several blobs), over-splitting and noise create fragments far
below any cell's size, and a mix of merged and split objects widens the size
distribution.

Parts (each in [0, 1]; the value is the mean of the applicable ones):

``shape.solidity``
    area-weighted mean solidity (object area / pixel count of its convex
    hull) of the objects of at least ``min_area`` pixels. Area-weighted so
    that it measures the share of the segmented area that sits in convex
    objects: the damaging failure, a merge, produces a few large objects that
    carry most of the area, while tiny fragments are trivially convex (one
    pixel has solidity 1) and would dominate a plain mean. 2D only (NaN for
    3D labels).
``shape.size_regularity``
    ``1 / (1 + cv**2)`` with cv the coefficient of variation of the areas of
    the objects of at least ``min_area`` pixels (NaN for fewer than 3). The
    square keeps the penalty small within the natural variation of a cell
    population (cv 0.1-0.5: G1 and G2 nuclei differ two-fold in volume;
    0.86 at cv = 0.4) and large for the spread of merged pairs and fragments
    mixed with whole objects (0.5 at cv = 1).
``shape.min_area_share``
    share of objects with at least ``min_area`` pixels. The default, 16 px
    (4x4), is a general prior, not tuned to any image: an object smaller
    than that cannot be a delineated cell or nucleus at any sampling at
    which segmenting cells makes sense.
``shape.in_range``
    share of objects whose area is inside the study's expected
    ``area = (min, max)`` (only when given).

``shape.eccentricity`` (area-weighted, 2D) is a detail only: elongated cells
are legitimate, so it is not penalised by default. No objects: every part is 0.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from opsef_opt.measure import eccentricity, hull_pixel_count
from opsef_opt.params import Param
from opsef_opt.score.proxies._match import object_areas as _areas
from opsef_opt.score.proxies._match import relabel
from opsef_opt.score.registry import ImageResult, register_proxy

__all__ = ["object_areas", "solidity", "eccentricity", "shape_score", "MIN_AREA"]

#: smallest plausible cell/nucleus area in pixels (4x4), shared with the sanity gate
MIN_AREA = 16


def object_areas(labels: np.ndarray) -> np.ndarray:
    """Pixel count of each object 1..n of sequential ``labels`` (index 0 = object 1)."""
    return _areas(np.asarray(labels))[1:]


def solidity(labels: np.ndarray, ids: np.ndarray | None = None) -> np.ndarray:
    """Solidity of 2D objects: pixel count / number of pixel centres in the convex hull of its pixel centres.

    Digitally convex objects (a rasterised disc, a rectangle, a single pixel)
    have solidity 1. The hull counts come from
    :func:`opsef_opt.measure.hull_pixel_count`, for all objects at once.

    Parameters
    ----------
    labels : (Y, X) sequential labels 1..n
    ids : object ids to measure (default all)

    Returns
    -------
    float array, one value per id.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError("solidity is implemented for 2D labels")
    n = int(labels.max(initial=0))
    ids = np.arange(1, n + 1) if ids is None else np.asarray(ids, dtype=np.intp)
    if ids.size == 0:
        return np.ones(0)
    areas = np.bincount(labels.ravel(), minlength=n + 1)[ids]
    hull = hull_pixel_count(labels, ids)
    return np.minimum(areas / np.maximum(hull, 1), 1.0)


def _area_range(area: str | Sequence[float] | None) -> tuple[float, float] | None:
    if area is None:
        return None
    if isinstance(area, str):
        area = [float(v) for v in area.replace("[", "").replace("]", "").split(",")]
    lo, hi = (float(v) for v in area)
    if not 0 <= lo <= hi:
        raise ValueError(f"area range must be 0 <= min <= max, got {area}")
    return lo, hi


@register_proxy(
    "shape", weight=2.0,  # see "Default weights" in __init__
    params=[
        Param("min_area", "int", MIN_AREA, low=1, high=1_000_000,
              help="smallest plausible object area in pixels (default 4x4)"),
        Param("area", "list", None, nullable=True,
              help="expected object area range in pixels, [min, max]"),
    ],
)
def shape_score(result: ImageResult, min_area: int = MIN_AREA,
                area: str | Sequence[float] | None = None) -> dict[str, float]:
    """Shape plausibility: mean of solidity, size regularity, plausible-size share (and in-range share).

    See the module docstring for the parts; ``area`` is ``(min, max)`` or
    ``"min,max"``. 3D labels: solidity and eccentricity are NaN (not
    computed), the size parts use voxel counts.
    """
    rng = _area_range(area)
    labels, n = relabel(result.labels)
    nan = float("nan")
    parts = ["solidity", "size_regularity", "min_area_share"] + (["in_range"] if rng else [])
    if n == 0:
        return {"shape": 0.0, **{f"shape.{p}": 0.0 for p in parts}, "shape.eccentricity": nan}
    areas = object_areas(labels)
    big = areas >= min_area
    vals: dict[str, float] = {"min_area_share": float(big.mean())}
    if rng is not None:
        vals["in_range"] = float(((areas >= rng[0]) & (areas <= rng[1])).mean())
    if big.sum() >= 3:
        a = areas[big].astype(float)
        vals["size_regularity"] = float(1.0 / (1.0 + (a.std() / a.mean()) ** 2))
    else:
        vals["size_regularity"] = nan
    ids = np.flatnonzero(big) + 1
    if labels.ndim == 2 and ids.size:
        w = areas[big]
        vals["solidity"] = float(np.average(solidity(labels, ids), weights=w))
        ecc = float(np.average(eccentricity(labels)[big], weights=w))
    else:
        vals["solidity"] = nan
        ecc = nan
    applicable = [v for v in vals.values() if np.isfinite(v)]
    value = float(np.mean(applicable)) if applicable else 0.0
    return {"shape": value, **{f"shape.{k}": v for k, v in vals.items()}, "shape.eccentricity": ecc}
