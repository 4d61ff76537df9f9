"""The value model that ranks runs: the calibrated proxy, corrected near the runs the analyst judged.

A linear classifier extrapolated from ten tags sent unlike, never-judged runs
to the top (on the shared GT sets, tagging the proxy's top 10 picked an F1
0.05 pipeline).  This model instead falls back to the proxy far from every
judged run, and learns from tags and comparisons alike, so a handful of
judgements can reorder the runs near them without wrecking the rest:

    value(x) = c + beta * proxy(x) + sum_j alpha_j k(x, x_j)

the calibrated combined proxy (``proxy.final``, else ``proxy``,
standardised; ``c`` and ``beta`` have priors :data:`PRIOR_VALUE`,
:data:`PRIOR_SLOPE`) plus local corrections around the judged runs ``x_j``
(a Gaussian process with a Gaussian kernel on the standardised features,
prior SD :data:`RESIDUAL_SD`).  A tag pulls its run's value towards the
tag's value (SD :data:`TAG_SD`); a comparison is a Bradley-Terry term
``P(A better) = sigmoid(KAPPA * (value(A) - value(B)))`` (a tie: 1/2).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np
import pandas as pd

from opsef_opt.score.tag_data import _numeric, proxy_of

__all__ = ["RankModel", "KAPPA", "PRIOR_VALUE", "PRIOR_SLOPE", "TAG_SD", "RESIDUAL_SD"]

#: logit of "A better than B" per unit of value between them (0.1 apart: P = 0.73)
KAPPA = 10.0
#: the value model's prior: value = PRIOR_VALUE + PRIOR_SLOPE * standardised proxy (and their SDs)
PRIOR_VALUE, PRIOR_VALUE_SD = 0.5, 0.5
PRIOR_SLOPE, PRIOR_SLOPE_SD = 0.15, 0.15
#: SD of a tagged run's value around its tag value; prior SD of the local corrections
TAG_SD = 0.15
RESIDUAL_SD = 0.3
#: kernel length = LENGTH_FACTOR x median distance between runs (standardised features)
LENGTH_FACTOR = 0.5
#: observation noise (kernel units) of a tagged run and of a run only compared, for the variance
TAG_NOISE = (TAG_SD / RESIDUAL_SD) ** 2
PAIR_NOISE = 1.0


@dataclass
class RankModel:
    """The value model: calibrated proxy plus local corrections learnt from the judgements.

    ``value(x) = c + beta * proxy(x) + sum_j alpha_j * k(x, x_j)`` over the judged runs ``x_j``,
    ``k`` a Gaussian kernel on standardised features (length :attr:`length`), ``proxy`` the
    standardised combined proxy.  Far from every judged run the value is the calibrated proxy.
    """

    columns: list[str]
    median: np.ndarray
    mean: np.ndarray
    scale: np.ndarray
    proxy_mean: float
    proxy_scale: float
    proxy_fill: float
    length: float
    anchors: np.ndarray  # standardised features of the judged runs
    noise: np.ndarray  # observation noise of each judged run (relative to the kernel's variance)
    alpha: np.ndarray
    c: float
    beta: float

    def z(self, X: pd.DataFrame) -> np.ndarray:
        M = _numeric(X, self.columns).to_numpy()
        M = np.where(np.isnan(M), self.median, M)
        return (M - self.mean) / self.scale

    def proxy(self, X: pd.DataFrame) -> np.ndarray:
        p = proxy_of(X)
        p = np.where(np.isfinite(p), p, self.proxy_fill)
        return (p - self.proxy_mean) / self.proxy_scale

    def kernel(self, A: np.ndarray, B: np.ndarray) -> np.ndarray:
        d2 = np.maximum((A * A).sum(1)[:, None] + (B * B).sum(1)[None, :] - 2 * A @ B.T, 0.0)
        return np.exp(-d2 / (2 * self.length ** 2))

    def value(self, X: pd.DataFrame) -> np.ndarray:
        if len(X) == 0:
            return np.zeros(0)
        out = self.c + self.beta * self.proxy(X)
        if len(self.anchors):
            out = out + self.kernel(self.z(X), self.anchors) @ self.alpha
        return out

    def variance(self, Z: np.ndarray, extra: np.ndarray | None = None, extra_noise: float | None = None) -> np.ndarray:
        """Posterior variance (kernel units, 0..1) of the correction at rows ``Z`` (standardised), given
        the judged runs and, optionally, ``extra`` runs about to be judged."""
        A, noise = self.anchors, self.noise
        if extra is not None and len(extra):
            A = np.vstack([A, extra]) if len(A) else extra
            noise = np.r_[noise, np.full(len(extra), TAG_NOISE if extra_noise is None else extra_noise)]
        if not len(A):
            return np.ones(len(Z))
        Kaa = self.kernel(A, A) + np.diag(noise)
        Kza = self.kernel(Z, A)
        sol = np.linalg.solve(Kaa, Kza.T)
        return np.clip(1.0 - np.sum(Kza * sol.T, axis=1), 0.0, 1.0)


def _standardiser(X: pd.DataFrame, columns: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    import warnings

    M = _numeric(X, columns).to_numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        median = np.nanmedian(M, axis=0) if len(M) else np.zeros(len(columns))
    median = np.where(np.isfinite(median), median, 0.0)
    M = np.where(np.isnan(M), median, M)
    mean, scale = M.mean(axis=0), M.std(axis=0)
    scale = np.where(scale > 1e-12, scale, 1.0)
    return median, mean, scale


def _fit_rank(X: pd.DataFrame, columns: list[str], tags: list[str | None], pairs: list[tuple[int, int, float]],
              values: Mapping[str, float]) -> RankModel:
    """Fit :class:`RankModel` on the tags (regression to their values) and comparisons (logistic in
    :data:`KAPPA` times the value difference), penalised as a Gaussian process around the proxy."""
    from scipy.optimize import minimize

    median, mean, scale = _standardiser(X, columns)
    p = proxy_of(X)
    finite = np.isfinite(p)
    fill = float(np.min(p[finite])) if finite.any() else 0.0
    p = np.where(finite, p, fill)
    p_scale = float(p.std()) if p.std() > 1e-12 else 1.0
    model = RankModel(columns, median, mean, scale, float(p.mean()), p_scale, fill, 1.0,
                      np.zeros((0, len(columns))), np.zeros(0), np.zeros(0), PRIOR_VALUE, PRIOR_SLOPE)
    Z, P = model.z(X), model.proxy(X)
    # kernel length: LENGTH_FACTOR x the median distance between runs (on at most 400 of them)
    sub = Z[np.linspace(0, len(Z) - 1, min(len(Z), 400)).astype(int)]
    d = np.sqrt(np.maximum((sub * sub).sum(1)[:, None] + (sub * sub).sum(1)[None, :] - 2 * sub @ sub.T, 0))
    off = d[np.triu_indices(len(sub), 1)]
    model.length = LENGTH_FACTOR * float(np.median(off[off > 0])) if (off > 0).any() else 1.0
    tagged = [i for i, t in enumerate(tags) if t is not None]
    judged = sorted(set(tagged) | {i for a, b, _ in pairs for i in (a, b)})
    if not judged:
        return model
    pos = {j: n for n, j in enumerate(judged)}
    K = model.kernel(Z[judged], Z[judged])
    PJ = P[judged]
    ti = np.array([pos[i] for i in tagged], int)
    tv = np.array([values[tags[i]] for i in tagged], float)
    pa = np.array([pos[a] for a, _, _ in pairs], int)
    pb = np.array([pos[b] for _, b, _ in pairs], int)
    py = np.array([y for _, _, y in pairs], float)
    m = len(judged)
    lam = 1.0 / RESIDUAL_SD ** 2

    def loss(theta):
        c, beta, alpha = theta[0], theta[1], theta[2:]
        Ka = K @ alpha
        v = c + beta * PJ + Ka
        g = np.zeros(m)
        r = v[ti] - tv
        total = 0.5 * np.sum(r ** 2) / TAG_SD ** 2
        np.add.at(g, ti, r / TAG_SD ** 2)
        if len(pa):
            dd = KAPPA * (v[pa] - v[pb])
            total += np.sum(np.logaddexp(0, dd) - py * dd)
            q = KAPPA * (0.5 * (1 + np.tanh(0.5 * dd)) - py)
            np.add.at(g, pa, q)
            np.add.at(g, pb, -q)
        total += 0.5 * lam * alpha @ Ka + 0.5 * ((c - PRIOR_VALUE) / PRIOR_VALUE_SD) ** 2 \
            + 0.5 * ((beta - PRIOR_SLOPE) / PRIOR_SLOPE_SD) ** 2
        grad = np.r_[g.sum() + (c - PRIOR_VALUE) / PRIOR_VALUE_SD ** 2,
                     g @ PJ + (beta - PRIOR_SLOPE) / PRIOR_SLOPE_SD ** 2,
                     K @ g + lam * Ka]
        return total, grad

    theta = minimize(loss, np.r_[PRIOR_VALUE, PRIOR_SLOPE, np.zeros(m)], jac=True, method="L-BFGS-B",
                     options={"maxiter": 2000}).x
    model.c, model.beta, model.alpha = float(theta[0]), float(theta[1]), theta[2:]
    model.anchors = Z[judged]
    tagged_set = set(tagged)
    model.noise = np.array([TAG_NOISE if j in tagged_set else PAIR_NOISE for j in judged])
    return model
