"""Rank combination: the end-of-stage combined score from each proxy's percentile in the common pool.

What ``score.final`` ranks by (see :mod:`opsef_opt.search.rescore`). Per
image, each proxy's value becomes the candidate's *percentile* among the
pool's plausible candidates on that image (mid-rank, in [0, 1]; the
reference set is every candidate that passes the veto and the gate there,
identical label images counted once); the score is a fixed linear
combination of the centred percentiles::

    base = 0.5 + sum_f w_f x_f,   x_f = percentile_f - 0.5   (NaN percentile: x_f = 0)
                                  x_no_confidence = +0.5 when the model gives no confidence, else -0.5

with ``sum |w_f| = 1``, so ``base`` is in [0, 1]; the gate multiplies it and
the veto moves an implausible result below 0 exactly as in
:func:`~opsef_opt.score.proxies.combine.combine`. A trial's value is the mean
over its images.

Why percentiles: the raw proxies live on different, dataset-dependent scales
(shape 0.85-0.97 where separation spans 0.5-0.8), so a fixed weighted mean of
raw values lets whichever proxy spreads most on a dataset decide; the
percentile says only "better than this share of the plausible alternatives".

How :data:`RANK_WEIGHTS` were obtained (``bench/proxy_validity.py``): a
pairwise learning-to-rank model. On each GT dataset, every pair of candidates
that pass the veto and the gate on every image is one example: the
difference of their features (means over images) predicts which has the
higher GT F1, weighted by the GT F1 gap (each dataset's pairs weigh 1 in
total); an L2-regularised logistic regression without intercept
(:func:`fit_rank_weights`). The method, the regularisation ``C`` (grid
:data:`C_GRID`) and whether the no-confidence indicator is a feature were
chosen by leave-one-dataset-out on the bench's six GT sets; the constants
are that choice refitted on all six, normalised to ``sum |w| = 1``. Held-out
numbers (each set's with everything chosen and fitted on the other five):
README, Benchmarks.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np

from opsef_opt.score.proxies.combine import VETO, gate_and_veto

__all__ = ["RANK_FEATURES", "RANK_WEIGHTS", "NO_CONFIDENCE", "C_GRID", "percentiles", "pool_percentiles",
           "reference_columns", "percentiles_of",
           "rank_features", "rank_base", "rank_combine", "fit_rank_weights", "plausible_row"]

#: the proxies whose percentiles the rank combination uses
RANK_FEATURES = ("shape", "consensus", "separation", "contrast", "confidence", "stability")
#: the indicator feature "this model gives no confidence" (``confidence`` NaN)
NO_CONFIDENCE = "no_confidence"
#: regularisation grid of :func:`fit_rank_weights` searched by leave-one-dataset-out
C_GRID = (0.01, 0.1, 1.0, 10.0)
#: coefficients of the centred percentiles (and of the no-confidence indicator); sum |w| = 1. Obtained by
#: ``bench/proxy_validity.py`` (2026-11-27, families at 0.9): pairwise logistic regression on the six GT
#: sets, its C and the indicator chosen by leave-one-dataset-out on all six (C = 0.01, with the indicator;
#: held-out folds chose "without" in five of six), refitted on all six and normalised. Printed by the bench
#: as "proposed RANK_WEIGHTS"; a refit that differs by more than rounding means the corpus or a proxy changed.
RANK_WEIGHTS: dict[str, float] = {
    "shape": 0.176,
    "consensus": 0.218,
    "separation": 0.247,
    "contrast": 0.228,
    "confidence": 0.020,
    "stability": 0.080,
    NO_CONFIDENCE: -0.031,
}


def _finite(v) -> bool:
    return v is not None and isinstance(v, (int, float, np.floating, np.integer)) and math.isfinite(float(v))


def plausible_row(values: Mapping[str, float], gate: str | None = "sanity", veto: str | None = VETO) -> bool:
    """Does a candidate count in the percentiles' reference set on this image (passes the veto and the gate)?

    Missing or NaN veto / gate values do not exclude (as in ``combine``).
    """
    if veto is not None and _finite(values.get(veto)) and float(values[veto]) < 1.0:
        return False
    if gate is not None and _finite(values.get(gate)) and float(values[gate]) <= 0.0:
        return False
    return True


def percentiles(values: Sequence[float], reference: Sequence[float]) -> np.ndarray:
    """Mid-rank percentile in [0, 1] of each value among the finite ``reference`` values.

    ``(#reference < v + #reference <= v) / (2 #reference)``; NaN for a NaN
    value or an empty reference.
    """
    v = np.asarray(values, float)
    ref = np.sort(np.asarray(reference, float))
    ref = ref[np.isfinite(ref)]
    out = np.full(v.shape, np.nan)
    ok = np.isfinite(v)
    if ref.size == 0 or not ok.any():
        return out
    lo = np.searchsorted(ref, v[ok], "left")
    hi = np.searchsorted(ref, v[ok], "right")
    out[ok] = (lo + hi) / (2.0 * ref.size)
    return out


def reference_columns(rows: Sequence[Mapping[str, float]], gate: str | None = "sanity", veto: str | None = VETO,
                      features: Sequence[str] = RANK_FEATURES) -> dict[str, np.ndarray]:
    """Per feature, the sorted finite values of the rows that pass the veto and the gate (the reference set)."""
    ok = [r for r in rows if plausible_row(r, gate, veto)]
    out = {}
    for f in features:
        col = np.array([float(r[f]) for r in ok if _finite(r.get(f))], float)
        out[f] = np.sort(col)
    return out


def percentiles_of(values: Mapping[str, float], columns: Mapping[str, np.ndarray]) -> dict[str, float]:
    """One candidate's percentile of each feature against :func:`reference_columns` (NaN: no value or reference)."""
    out = {}
    for f, ref in columns.items():
        v = values.get(f)
        out[f] = float(percentiles([v], ref)[0]) if _finite(v) else math.nan
    return out


def pool_percentiles(rows: Sequence[Mapping[str, float]], gate: str | None = "sanity", veto: str | None = VETO,
                     features: Sequence[str] = RANK_FEATURES,
                     queries: Sequence[Mapping[str, float]] | None = None) -> list[dict[str, float]]:
    """Each feature's percentile among the plausible candidates of one image's pool.

    ``rows``: every candidate of the pool on this image (identical label
    images once), each ``{proxy: value}`` with the veto's and the gate's
    values; the reference set is those passing both (:func:`plausible_row`).
    Returns one ``{feature: percentile or NaN}`` per query (default: per row).
    """
    columns = reference_columns(rows, gate, veto, features)
    return [percentiles_of(q, columns) for q in (rows if queries is None else queries)]


def rank_features(pct: Mapping[str, float], indicator: bool = True,
                  features: Sequence[str] = RANK_FEATURES) -> np.ndarray:
    """The centred feature vector of one candidate on one image (order: ``features``, then the indicator)."""
    x = [float(pct[f]) - 0.5 if _finite(pct.get(f)) else 0.0 for f in features]
    if indicator:
        x.append(0.5 if not _finite(pct.get("confidence")) else -0.5)
    return np.asarray(x, float)


def _vector(weights: Mapping[str, float], features: Sequence[str] = RANK_FEATURES) -> tuple[np.ndarray, bool]:
    w = [float(weights.get(f, 0.0)) for f in features]
    indicator = NO_CONFIDENCE in weights
    if indicator:
        w.append(float(weights[NO_CONFIDENCE]))
    return np.asarray(w, float), indicator


def rank_base(pct: Mapping[str, float], weights: Mapping[str, float] | None = None) -> float:
    """``0.5 + w . x`` clipped to [0, 1] (see the module docstring); ``weights`` default :data:`RANK_WEIGHTS`."""
    w, indicator = _vector(RANK_WEIGHTS if weights is None else weights)
    total = float(np.abs(w).sum())
    if total <= 0:
        return 0.5
    x = rank_features(pct, indicator)
    return float(min(max(0.5 + float(w @ x) / total, 0.0), 1.0))


def rank_combine(values: Mapping[str, float], pct: Mapping[str, float], weights: Mapping[str, float] | None = None,
                 gate: str | None = "sanity", veto: str | None = VETO) -> float:
    """One image's rank score: :func:`rank_base` of its percentiles, times the gate, below the veto.

    ``values``: the candidate's proxy values on the image (for the gate and
    the veto); ``pct``: its percentiles (:func:`pool_percentiles`).
    """
    return gate_and_veto(rank_base(pct, weights), values, gate, veto)


def fit_rank_weights(datasets: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]], C: float,
                     names: Sequence[str] = RANK_FEATURES + (NO_CONFIDENCE,)) -> dict[str, float]:
    """Pairwise logistic regression on GT datasets: coefficients (sum |w| = 1) by feature name.

    ``datasets``: per dataset ``(X, f1, ok)``: ``X`` (candidates x features,
    each candidate's mean over images of :func:`rank_features`), its GT F1,
    and which candidates count (pass the veto and the gate on every image).
    Every pair of counted candidates with different F1 is an example (the
    feature difference, label: the first is better), weighted by the F1 gap,
    each dataset's weights summing to 1; both orders are given, no intercept.
    """
    from sklearn.linear_model import LogisticRegression

    xs, ys, ws = [], [], []
    for X, f1, ok in datasets:
        X, f1 = np.asarray(X, float), np.asarray(f1, float)
        idx = np.flatnonzero(np.asarray(ok, bool) & np.isfinite(f1))
        a, b = np.meshgrid(idx, idx, indexing="ij")
        upper = a < b
        a, b = a[upper], b[upper]
        gap = f1[a] - f1[b]
        keep = gap != 0
        a, b, gap = a[keep], b[keep], gap[keep]
        if not gap.size:
            continue
        d = X[a] - X[b]
        y = (gap > 0).astype(int)
        w = np.abs(gap) / np.abs(gap).sum()
        xs += [d, -d]
        ys += [y, 1 - y]
        ws += [w, w]
    if not xs:
        raise ValueError("fit_rank_weights: no pair of candidates with different GT F1")
    model = LogisticRegression(C=C, fit_intercept=False, max_iter=5000)
    n_sets = len(datasets)
    model.fit(np.concatenate(xs), np.concatenate(ys), sample_weight=np.concatenate(ws) * n_sets)
    coef = model.coef_[0]
    total = float(np.abs(coef).sum()) or 1.0
    return {n: float(c) / total for n, c in zip(names, coef)}
