"""Combine proxy values into one score: weighted mean of the available proxies, times a gate.

Proxies that do not apply to a result (NaN: no consensus yet, a model
without confidence, no ``segment`` function) are left out and the weights
renormalised over the others, so the combined score stays in [0, 1] and
comparable between trials that have different proxies available. The gate
(default ``sanity``) multiplies the mean: it vetoes results no cell image can
produce, whatever the other proxies say.
"""
from __future__ import annotations

import math
from typing import Mapping

from opsef_opt.score.registry import PROXIES

__all__ = ["combine", "default_weights"]


def default_weights() -> dict[str, float]:
    """Each registered proxy's default weight, by name."""
    return {name: proxy.weight for name, proxy in PROXIES.items()}


def _finite(v) -> bool:
    return v is not None and isinstance(v, (int, float)) and math.isfinite(float(v))


def combine(values: Mapping[str, float], weights: Mapping[str, float], gate: str | None = "sanity") -> float:
    """Weighted mean of the proxies with weight > 0 and a finite value, times the gate's value.

    Parameters
    ----------
    values : proxy values by name (detail keys such as ``"shape.solidity"``
        are ignored unless they have a weight).
    weights : weight by proxy name; names without a weight count 0.
    gate : name of the proxy whose value multiplies the mean (None: no
        gate). A gate that is missing or NaN does not gate.

    Returns
    -------
    float in [0, 1]; 0.0 when no weighted proxy is available.
    """
    total = wsum = 0.0
    for name, w in weights.items():
        if name == gate or not w or w <= 0:
            continue
        v = values.get(name)
        if _finite(v):
            total += float(w) * float(v)
            wsum += float(w)
    if wsum == 0:
        return 0.0
    score = total / wsum
    if gate is not None and _finite(values.get(gate)):
        score *= float(values[gate])
    return float(score)
