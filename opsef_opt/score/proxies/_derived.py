"""Values derived from one reference image that every candidate pipeline shares, computed once.

The proxies measure each candidate against the same raw image
(:attr:`~opsef_opt.score.registry.ImageResult.raw`), so quantities of that
image alone (its gradient, its intensity range) are the same for all
candidates of a study; on a 1024 x 1024 image recomputing them cost ~40 ms
per candidate. They are kept per image *object* (the search hands every
trial the same array), least recently used first out beyond
:data:`BUDGET_BYTES`; an array that was freed or replaced is computed again,
so a cached value never outlives its image.

A candidate's label image is likewise read by several proxies (each wants
it numbered 1..n, and its object areas): ``keep="labels"`` keeps those for
the last :data:`RECENT_LABELS` label images only.
"""
from __future__ import annotations

import weakref
from collections import OrderedDict
from typing import Callable

import numpy as np

__all__ = ["derived", "BUDGET_BYTES", "RECENT_LABELS"]

#: memory kept for values derived from reference images (an image's gradient is its size in float32)
BUDGET_BYTES = 256 * 2**20
#: label images whose derived values are kept (those of the candidate being scored)
RECENT_LABELS = 8

_CACHES: dict[str, OrderedDict[tuple[int, str], tuple[weakref.ref, object, int]]] = {
    "image": OrderedDict(), "labels": OrderedDict()}


def _nbytes(value: object) -> int:
    if isinstance(value, np.ndarray):
        return int(value.nbytes)
    if isinstance(value, tuple):
        return sum(_nbytes(v) for v in value)
    return 64


def derived(image: np.ndarray, what: str, compute: Callable[[np.ndarray], object], keep: str = "image") -> object:
    """``compute(image)``, computed once per live ``image`` array and ``what``.

    ``keep``: ``"image"`` (a reference image: kept within :data:`BUDGET_BYTES`)
    or ``"labels"`` (a candidate's labels: the last :data:`RECENT_LABELS` arrays).
    """
    cache = _CACHES[keep]
    key = (id(image), what)
    hit = cache.get(key)
    if hit is not None and hit[0]() is image:
        cache.move_to_end(key)
        return hit[1]
    value = compute(image)
    try:
        ref = weakref.ref(image)
    except TypeError:  # not weak-referenceable: nothing to key it on
        return value
    cache[key] = (ref, value, _nbytes(value))
    for k in [k for k, (r, _, _) in cache.items() if r() is None]:
        del cache[k]
    if keep == "labels":
        while len({k[0] for k in cache}) > RECENT_LABELS:
            cache.popitem(last=False)
        return value
    total = sum(n for _, _, n in cache.values())
    while total > BUDGET_BYTES and len(cache) > 1:
        _, (_, _, n) = cache.popitem(last=False)
        total -= n
    return value
