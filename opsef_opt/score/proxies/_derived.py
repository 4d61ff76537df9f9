"""Values derived from one reference image that every candidate pipeline shares, computed once.

The proxies measure each candidate against the same raw image
(:attr:`~opsef_opt.score.registry.ImageResult.raw`), so quantities of that
image alone (its gradient, its intensity range) are the same for all
candidates of a study; on a 1024 x 1024 image recomputing them cost ~40 ms
per candidate. They are kept per image *object* (the search hands every
trial the same array), least recently used first out beyond
:data:`BUDGET_BYTES`; an array that was freed or replaced is computed again,
so a cached value never outlives its image.
"""
from __future__ import annotations

import weakref
from collections import OrderedDict
from typing import Callable

import numpy as np

__all__ = ["derived", "BUDGET_BYTES"]

#: memory kept for derived arrays (an image's gradient is the image's size in float32)
BUDGET_BYTES = 256 * 2**20

_CACHE: OrderedDict[tuple[int, str], tuple[weakref.ref, object, int]] = OrderedDict()


def _nbytes(value: object) -> int:
    return int(value.nbytes) if isinstance(value, np.ndarray) else 64


def derived(image: np.ndarray, what: str, compute: Callable[[np.ndarray], object]) -> object:
    """``compute(image)``, computed once per live ``image`` array and ``what``."""
    key = (id(image), what)
    hit = _CACHE.get(key)
    if hit is not None and hit[0]() is image:
        _CACHE.move_to_end(key)
        return hit[1]
    value = compute(image)
    try:
        ref = weakref.ref(image)
    except TypeError:  # not weak-referenceable: nothing to key it on
        return value
    _CACHE[key] = (ref, value, _nbytes(value))
    for k in [k for k, (r, _, _) in _CACHE.items() if r() is None]:
        del _CACHE[k]
    total = sum(n for _, _, n in _CACHE.values())
    while total > BUDGET_BYTES and len(_CACHE) > 1:
        _, (_, _, n) = _CACHE.popitem(last=False)
        total -= n
    return value
