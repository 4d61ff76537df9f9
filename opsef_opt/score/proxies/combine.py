"""Combine proxy values into one score: weighted mean of the available proxies, times a gate, below a veto.

Proxies that do not apply to a result (NaN: no consensus yet, a model
without confidence, no ``segment`` function) are left out and the weights
renormalised over the others, so the mean stays in [0, 1] and comparable
between trials that have different proxies available. The gate (default
``sanity``) multiplies the mean: it vetoes results no cell image can
produce, whatever the other proxies say.

The veto (default ``plausible``, see :mod:`.plausible`) moves a broken
result below every plausible one. With ``base`` = mean x gate in [0, 1] and
``p`` the veto's value in [0, 1]::

    combined = base - (1 - p) * (1 + base / 2)

so a plausible result (``p = 1``) keeps ``base`` (in [0, 1], every number
as without the veto), and an implausible one (``p = 0``) gets
``base / 2 - 1``, in [-1, -0.5]: below 0, hence below every plausible
result whatever its other proxies, while implausible results keep their
order among themselves. In between (``p`` = the share of plausible images,
when ``values`` are a trial's means) it is linear. A veto that is missing
or NaN does not veto; the veto's and the gate's weights are ignored (they
are never averaged in).
"""
from __future__ import annotations

import math
from typing import Mapping

from opsef_opt.score.registry import PROXIES

__all__ = ["combine", "default_weights", "gate_and_veto", "VETO"]

#: The proxy whose value 0 moves a result below every plausible one (see the module docstring).
VETO = "plausible"


def default_weights() -> dict[str, float]:
    """Each registered proxy's default weight, by name."""
    return {name: proxy.weight for name, proxy in PROXIES.items()}


def _finite(v) -> bool:
    return v is not None and isinstance(v, (int, float)) and math.isfinite(float(v))


def combine(values: Mapping[str, float], weights: Mapping[str, float], gate: str | None = "sanity",
            veto: str | None = VETO) -> float:
    """Weighted mean of the proxies with weight > 0 and a finite value, times the gate, below the veto.

    Parameters
    ----------
    values : proxy values by name (detail keys such as ``"shape.solidity"``
        are ignored unless they have a weight). Include the veto's value
        (``values["plausible"]``) for it to act.
    weights : weight by proxy name; names without a weight count 0.
    gate : name of the proxy whose value multiplies the mean (None: no
        gate). A gate that is missing or NaN does not gate.
    veto : name of the proxy whose value ``p`` in [0, 1] (1 = plausible)
        maps the score to ``base - (1 - p) (1 + base / 2)`` (None: no veto).
        A veto that is missing or NaN does not veto.

    Returns
    -------
    float: in [0, 1] for a plausible result (0.0 when no weighted proxy is
    available), in [-1, -0.5] for an implausible one.
    """
    total = wsum = 0.0
    for name, w in weights.items():
        if name == gate or name == veto or not w or w <= 0:
            continue
        v = values.get(name)
        if _finite(v):
            total += float(w) * float(v)
            wsum += float(w)
    score = total / wsum if wsum else 0.0
    return gate_and_veto(score, values, gate, veto)


def gate_and_veto(score: float, values: Mapping[str, float], gate: str | None = "sanity",
                  veto: str | None = VETO) -> float:
    """A base score in [0, 1] times the gate's value, then below the veto (see the module docstring)."""
    score = float(score)
    if gate is not None and _finite(values.get(gate)):
        score *= float(values[gate])
    if veto is not None and _finite(values.get(veto)):
        p = min(max(float(values[veto]), 0.0), 1.0)
        score -= (1.0 - p) * (1.0 + score / 2.0)
    return float(score)
