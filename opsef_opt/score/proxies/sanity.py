"""Sanity gate: rules out segmentations that no cell image can produce.

Why a gate and not one more proxy: some failures make every other proxy
meaningless, and averaging would let them through. A single object covering
a third of the field of view has no ring of background to be contrasted
with, agrees with a consensus of equally broken candidates and is perfectly
stable; a salt-and-pepper of single pixels is trivially convex. The gate
multiplies the combined score, so such results score (nearly) 0 whatever the
other proxies say.

Rule (the value is the product of three factors in [0, 1]; 0 for no objects):

* **largest object**: 1 while the largest object covers at most half of
  ``max_object_share`` (default 1/3) of the image, falling linearly to 0 at
  ``max_object_share``. Fields are imaged to see many cells; one object over
  a third of the field is a merge of objects with the background between
  them (or the whole background taken as an object).
* **foreground**: 1 while the foreground covers at most ``max_fg_fraction``
  (default 0.95) of the image, falling linearly to 0 when it covers all of
  it: a foreground without background means the threshold fell below the
  background. Raise it for confluent cultures and tissue, where touching
  cells may tile nearly everything.
* **specks**: 1 while at most half of the objects are smaller than
  ``min_area`` (default 16 px = 4x4, see :mod:`.shape`), falling linearly to
  0 when all of them are: most objects below any cell's size is noise.

The thresholds are general priors about images of cells and nuclei (what a
field of view, a background and a cell are), not values fitted to
particular images; they are options so that a study with unusual images can
relax them.

Details: ``sanity.fg_fraction``, ``sanity.border_share`` (share of objects
touching the image border), ``sanity.count``, ``sanity.max_object_share``,
``sanity.median_area``. Works for 2D and 3D labels.
"""
from __future__ import annotations

import numpy as np

from opsef_opt.params import Param
from opsef_opt.score.proxies._match import object_areas, relabel
from opsef_opt.score.proxies.shape import MIN_AREA
from opsef_opt.score.registry import ImageResult, register_proxy

__all__ = ["sanity_stats", "sanity_gate", "sanity_score"]


def _ramp(x: float, full: float, zero: float) -> float:
    """1 for x <= full, 0 for x >= zero, linear in between."""
    if zero <= full:
        return float(x <= full)
    return float(np.clip((zero - x) / (zero - full), 0.0, 1.0))


def sanity_stats(labels: np.ndarray) -> dict[str, float]:
    """Foreground fraction, border share, count, largest object's share, median area."""
    labels, n = relabel(labels)
    if n == 0:
        return dict(fg_fraction=0.0, border_share=0.0, count=0.0, max_object_share=0.0, median_area=0.0)
    areas = object_areas(labels)[1:]
    border = np.zeros(n + 1, bool)
    for ax in range(labels.ndim):
        for idx in (0, -1):
            border[np.take(labels, idx, axis=ax).ravel()] = True
    return dict(
        fg_fraction=float(areas.sum() / labels.size),
        border_share=float(border[1:].mean()),
        count=float(n),
        max_object_share=float(areas.max() / labels.size),
        median_area=float(np.median(areas)),
    )


def sanity_gate(labels: np.ndarray, max_object_share: float = 1 / 3, max_fg_fraction: float = 0.95,
                min_area: int = MIN_AREA) -> float:
    """The gate value in [0, 1] (see the module docstring for the rule)."""
    labels, n = relabel(labels)
    if n == 0:
        return 0.0
    areas = object_areas(labels)[1:]
    largest = _ramp(areas.max() / labels.size, max_object_share / 2, max_object_share)
    fg = _ramp(areas.sum() / labels.size, max_fg_fraction, 1.0)
    specks = _ramp(float(np.mean(areas < min_area)), 0.5, 1.0)
    return largest * fg * specks


@register_proxy(
    "sanity", weight=0.0,  # a gate (multiplies the combined score), not averaged in
    params=[
        Param("max_object_share", "float", 1 / 3, low=0.01, high=1.0,
              help="one object covering this share of the image scores 0 (half of it: no penalty)"),
        Param("max_fg_fraction", "float", 0.95, low=0.1, high=1.0,
              help="foreground above this share of the image is penalised (0 at 100%)"),
        Param("min_area", "int", MIN_AREA, low=1, high=1_000_000,
              help="objects smaller than this (px) are specks; mostly specks scores 0"),
    ],
)
def sanity_score(result: ImageResult, max_object_share: float = 1 / 3, max_fg_fraction: float = 0.95,
                 min_area: int = MIN_AREA) -> dict[str, float]:
    """Gate in [0, 1]: 0 for no objects, one giant object, all-foreground, or mostly specks."""
    stats = sanity_stats(result.labels)
    value = sanity_gate(result.labels, max_object_share, max_fg_fraction, min_area)
    return {"sanity": value, **{f"sanity.{k}": v for k, v in stats.items()}}
