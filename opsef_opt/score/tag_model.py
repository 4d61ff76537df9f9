"""Learn the analyst's quality tags from unsupervised proxy metrics.

An analyst tags 10-20 MLflow runs as ``correct``, ``over`` (over-segmented),
``under`` (under-segmented) or ``failed``.  Every run also carries proxy
metrics (``proxy``, ``proxy.<name>``, ``proxy.<name>.<detail>``) and object
statistics.  A small multinomial logistic regression maps those to the tags
(:meth:`TagModel.predict_tag`), and a value model (below) ranks hundreds of
untagged runs from a handful of judgements (:meth:`TagModel.predict_value`).

The classifier is deliberately small and strongly regularised (a dozen examples,
tens of features): median imputation of missing metrics, standardisation,
L2-penalised multinomial logistic regression with balanced class weights.
Its cross-validated accuracy is reported next to the accuracy of always
predicting the most frequent tag, so a user sees whether the tags taught it
anything.

**Value model.**  What ranks runs (:meth:`TagModel.predict_value`) is a
:class:`RankModel`, fitted on the tags *and* on comparisons ("A is better
than B", "A and B are equally good"):

    value(x) = c + beta * proxy(x) + sum_j alpha_j k(x, x_j)

the calibrated combined proxy (``proxy.final``, else ``proxy``,
standardised; ``c`` and ``beta`` have priors :data:`PRIOR_VALUE`,
:data:`PRIOR_SLOPE`) plus local corrections around the judged runs ``x_j``
(a Gaussian process with a Gaussian kernel on the standardised features,
prior SD :data:`RESIDUAL_SD`).  A tag pulls its run's value towards the
tag's value (SD :data:`TAG_SD`); a comparison is a Bradley-Terry term
``P(A better) = sigmoid(KAPPA * (value(A) - value(B)))`` (a tie: 1/2).  Far
from every judged run the value falls back to the calibrated proxy, so a
few tags near the top cannot send an unlike, never-judged run to the top
(a linear classifier extrapolated from 10 tags did: on the shared GT sets
tagging the proxy's top 10 picked an F1 0.05 pipeline).  The classifier
still gives :meth:`TagModel.predict_tag` / :meth:`TagModel.predict_proba`
and the cross-validated accuracy.  Enough tags (``min_tagged``, 2 kinds) or
:data:`MIN_PAIRS` comparisons, either alone, fit a model.

**Model or proxy.**  :func:`proxy_agreement` cross-validates, on the judged
runs (leave-one-out up to :data:`CV_FOLDS` runs), how often the model
orders a pair of judged runs the way the analyst did (two runs with
different tag values, and every comparison that is not a tie) against how
often the proxy does; :func:`beats_proxy` is True only when the model is
strictly better.  :func:`fit_tag_model` with ``check_proxy=True`` records
the outcome in :attr:`TagModel.use_proxy`; :meth:`TagModel.predict_value`
then returns the proxy instead, and :meth:`TagModel.describe` says which in
its one line.  :func:`top_pick` chooses a run from either ranking without
ones the analyst's judgements rule out.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import LeaveOneOut, StratifiedKFold
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

__all__ = ["TAGS", "DEFAULT_VALUES", "MIN_PAIRS", "NotEnoughTags", "TagModel", "RankModel", "ProxyCheck",
           "tag_features", "fit_tag_model", "normalize_comparisons", "proxy_of", "proxy_agreement", "beats_proxy",
           "top_pick", "ruled_out"]

TAGS = ("correct", "over", "under", "failed")
#: value of a run with this tag when ranking runs (over/under are usable but need fixing)
DEFAULT_VALUES = {"correct": 1.0, "over": 0.4, "under": 0.4, "failed": 0.0}
#: inverse regularisation strength: moderate, as suits ~10-20 examples
C = 0.5
#: fewest comparisons that fit a model without absolute tags
MIN_PAIRS = 5
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
#: folds of the model-or-proxy check (capped at the number of judged runs: leave-one-out below)
CV_FOLDS = 20
#: columns holding the combined proxy of a run, first finite one wins (``proxy.final`` once a stage ended)
PROXY_COLUMNS = ("proxy.final", "proxy")


class NotEnoughTags(ValueError):
    """Too few tagged runs (or a single tag), and too few comparisons, to fit a :class:`TagModel`.

    ``counts`` holds the number of tagged runs per tag, ``n_pairs`` the
    number of comparisons given (None when none were passed).
    """

    def __init__(self, counts: Mapping[str, int], min_tagged: int, n_pairs: int | None = None,
                 min_pairs: int = MIN_PAIRS):
        self.counts = dict(counts)
        self.min_tagged = min_tagged
        self.n_pairs = n_pairs
        n = sum(self.counts.values())
        runs = "1 tagged run" if n == 1 else f"{n} tagged runs"
        text = f"{runs}{_counts_text(self.counts)}; at least {min_tagged} with at least 2 different tags are needed"
        if n_pairs is not None:
            text += f", or at least {min_pairs} comparisons ({n_pairs} given)"
        super().__init__(text)


def _counts_text(counts: Mapping[str, int]) -> str:
    """`` (correct 2, failed 1)`` in the order of :data:`TAGS`, then other tags; empty without tags."""
    order = [t for t in TAGS if counts.get(t)] + sorted(t for t in counts if t not in TAGS and counts[t])
    return f" ({', '.join(f'{t} {counts[t]}' for t in order)})" if order else ""


def _float(value) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return math.nan
    return out if math.isfinite(out) else math.nan


def tag_features(metrics: Mapping[str, float]) -> dict[str, float]:
    """Features of one run for the tag model, from its trial-level metrics.

    Parameters
    ----------
    metrics : mapping of str to float
        The run's metrics (e.g. ``mlflow.get_run(id).data.metrics``).

    Returns
    -------
    dict of str to float
        Every metric whose name starts with ``proxy`` (as is), plus
        ``log1p.n_objects_mean`` and ``log1p.mean_object_area`` (counts and
        areas span orders of magnitude, their logarithms are closer to how
        they relate to the tags).  Missing, non-numeric or infinite values
        are NaN.
    """
    out = {key: _float(value) for key, value in metrics.items() if key.startswith("proxy")}
    for key in ("n_objects_mean", "mean_object_area"):
        value = _float(metrics.get(key))
        out[f"log1p.{key}"] = math.log1p(value) if value > -1 else math.nan
    return out


def _numeric(X: pd.DataFrame, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """``X`` as floats (NaN for missing, non-numeric or infinite), restricted to ``columns`` if given."""
    if columns is not None:
        X = X.reindex(columns=list(columns))
    out = X.apply(pd.to_numeric, errors="coerce").astype(float)
    return out.replace([np.inf, -np.inf], np.nan)


def _feature_columns(X: pd.DataFrame) -> list[str]:
    """Numeric columns of ``X``; a text column (run names, ids) is left out, an all-NaN one kept."""
    keep = []
    for col in X.columns:
        values = X[col]
        if pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
            keep.append(col)
        elif not pd.to_numeric(values, errors="coerce").isna().all() or values.isna().all():
            keep.append(col)
    return [str(c) for c in keep]


def _pipeline(seed: int) -> Pipeline:
    return make_pipeline(
        SimpleImputer(strategy="median", keep_empty_features=True),
        StandardScaler(),
        # lbfgs fits the multinomial (softmax) model for 3+ classes (for 2 it is the equivalent
        # binomial one); l1_ratio=0 is the L2 penalty (scikit-learn >= 1.8 deprecates `penalty`)
        LogisticRegression(C=C, l1_ratio=0.0, class_weight="balanced", max_iter=2000, random_state=seed),
    )


Comparison = tuple  # (better, worse), or (a, b, outcome): 1.0 a better, 0.0 b better, 0.5 equally good


def normalize_comparisons(comparisons: Sequence | None, n: int | None = None) -> list[tuple[int, int, float]]:
    """Comparisons as ``(a, b, outcome)`` triples of row positions (outcome 1.0: a is better, 0.0: b is
    better, 0.5: equally good).

    Accepts ``(better, worse)`` pairs and ``(a, b, outcome)`` triples, where outcome is a number in
    [0, 1] or one of ``">"``, ``"<"``, ``"="``.  Raises ``ValueError`` for a row outside ``range(n)``,
    a run compared with itself or an unknown outcome.
    """
    out = []
    symbols = {">": 1.0, "<": 0.0, "=": 0.5}
    for item in comparisons or ():
        if len(item) == 2:
            a, b, y = item[0], item[1], 1.0
        elif len(item) == 3:
            a, b, y = item
            y = symbols[y] if isinstance(y, str) and y in symbols else _float(y)
            if not 0.0 <= y <= 1.0:
                raise ValueError(f"comparison {item!r}: outcome must be in [0, 1] or one of > < =")
        else:
            raise ValueError(f"comparison {item!r}: expected (better, worse) or (a, b, outcome)")
        a, b = int(a), int(b)
        if a == b:
            raise ValueError(f"comparison {item!r}: a run compared with itself")
        if n is not None and not (0 <= a < n and 0 <= b < n):
            raise ValueError(f"comparison {item!r}: row outside 0..{n - 1}")
        out.append((a, b, float(y)))
    return out


def proxy_of(X: pd.DataFrame) -> np.ndarray:
    """The combined proxy of each row: its first finite value among :data:`PROXY_COLUMNS`, else NaN."""
    out = np.full(len(X), np.nan)
    for col in reversed(PROXY_COLUMNS):
        if col in X.columns:
            v = pd.to_numeric(X[col], errors="coerce").to_numpy(float)
            out = np.where(np.isfinite(v), v, out)
    return out


def single_thread(func):
    """Run ``func`` with BLAS/OpenMP limited to one thread: these fits are tiny, and on a busy machine
    thread start-up and oversubscription make them 10x slower."""
    import functools

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=1):
            return func(*args, **kwargs)

    return wrapper


def _clean_tags(tags: Sequence) -> list[str | None]:
    return [None if t is None or (isinstance(t, float) and math.isnan(t)) or t == "" else str(t) for t in tags]


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


def _standardiser(X: pd.DataFrame, columns: list[str]):
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


@dataclass
class ProxyCheck:
    """Cross-validated pairwise agreement with the analyst: the tag model's against the proxy's.

    ``model`` and ``proxy`` are the fractions of judged pairs (runs with different tag values, and
    comparisons) each orders as the analyst did (ties count half), over ``n_pairs`` pairs.
    """

    model: float
    proxy: float
    n_pairs: int

    @property
    def model_wins(self) -> bool:
        return self.n_pairs > 0 and self.model > self.proxy + 1e-9

    def text(self) -> str:
        if not self.n_pairs:
            return "no judged pairs to compare it with the proxy: ranks by the proxy"
        which = "the tag model" if self.model_wins else "the proxy"
        return (f"orders {self.model:.2f} of {self.n_pairs} judged pairs right in cross-validation, the proxy "
                f"{self.proxy:.2f}: ranks by {which}")


@dataclass
class TagModel:
    """Predicts quality tags (and their expected value) from run metrics.

    Attributes
    ----------
    classes : list of str
        Tags seen in training, in the order of :data:`TAGS`; the columns of
        :meth:`predict_proba`.  Empty for a model fitted on comparisons only.
    features : list of str
        Feature columns used; others are ignored, missing ones are NaN.
    values : dict of str to float
        Value of each tag (:meth:`predict_value`).
    n_train : int
        Tagged runs it was fitted on.
    cv_accuracy : float
        Cross-validated accuracy (stratified k-fold, k = min(5, smallest tag
        count), or leave-one-out when a tag was used once); NaN without a
        tag classifier.
    baseline_accuracy : float
        Accuracy of always predicting the most frequent tag.
    counts : dict of str to int
        Tagged runs per tag.
    pipeline : sklearn.pipeline.Pipeline
        The fitted imputer, scaler and logistic regression (None without
        absolute tags enough to fit it).
    n_pairs : int
        Comparisons it was fitted on.
    rank : RankModel or None
        The value model (calibrated proxy plus corrections learnt from the
        tags and comparisons) behind :meth:`model_value`.
    proxy_check : ProxyCheck or None
        Cross-validated agreement of the model and of the proxy with the
        analyst (``fit_tag_model(check_proxy=True)``).
    use_proxy : bool
        True when the model did not beat the proxy: :meth:`predict_value`
        returns the proxy (:meth:`model_value` is still the model's).
    """

    classes: list[str]
    features: list[str]
    values: dict[str, float]
    n_train: int
    cv_accuracy: float
    baseline_accuracy: float
    counts: dict[str, int] = field(default_factory=dict)
    pipeline: Pipeline | None = field(default=None, repr=False)
    n_pairs: int = 0
    rank: RankModel | None = field(default=None, repr=False)
    proxy_check: ProxyCheck | None = None
    use_proxy: bool = False

    def _matrix(self, X: pd.DataFrame) -> np.ndarray:
        return _numeric(X, self.features).to_numpy()

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        """Probability of each tag in :attr:`classes` order, one row per run (row of ``X``)."""
        if self.pipeline is None:
            if self.rank is not None:
                return np.zeros((len(X), 0))
            raise RuntimeError("this TagModel was not fitted: use fit_tag_model()")
        if len(X) == 0:
            return np.zeros((0, len(self.classes)))
        proba = self.pipeline.predict_proba(self._matrix(X))
        # the pipeline's classes are sorted alphabetically; reorder to self.classes
        order = [list(self.pipeline.classes_).index(c) for c in self.classes]
        return proba[:, order]

    def predict_tag(self, X: pd.DataFrame) -> list[str | None]:
        """Most probable tag of each run (None for a model fitted on comparisons only)."""
        proba = self.predict_proba(X)
        if proba.shape[1] == 0:
            return [None] * len(X)
        return [self.classes[i] for i in np.argmax(proba, axis=1)]

    def tag_value(self, X: pd.DataFrame) -> np.ndarray:
        """Expected tag value of the classifier, ``sum_k p_k * values[k]`` (NaN without a classifier)."""
        if self.pipeline is None:
            return np.full(len(X), np.nan)
        weights = np.array([self.values[c] for c in self.classes], dtype=float)
        return self.predict_proba(X) @ weights

    def model_value(self, X: pd.DataFrame) -> np.ndarray:
        """The model's value of each run (tag-value units), whether or not it beat the proxy:
        the calibrated proxy corrected near the judged runs (:class:`RankModel`)."""
        if self.rank is None:
            if self.pipeline is None:
                raise RuntimeError("this TagModel was not fitted: use fit_tag_model()")
            return self.tag_value(X)
        return self.rank.value(X)

    def predict_value(self, X: pd.DataFrame) -> np.ndarray:
        """What the optimiser maximises: :meth:`model_value`, or the proxy when :attr:`use_proxy`."""
        if self.use_proxy:
            return proxy_of(X)
        return self.model_value(X)

    @property
    def baseline_tag(self) -> str | None:
        """The most frequent tag (ties: first in :data:`TAGS` order); None without tags."""
        if not self.classes:
            return None
        return max(self.classes, key=lambda c: self.counts.get(c, 0))

    def describe(self) -> str:
        """One line, e.g. ``tag model: 14 tagged runs (correct 6, over 4, failed 4); cross-validated
        accuracy 0.79 (always 'correct': 0.43)``, plus the comparisons and which ranking is used."""
        text = f"tag model: {self.n_train} tagged runs{_counts_text(self.counts)}"
        if self.n_pairs:
            text += f" and {self.n_pairs} comparison{'s' if self.n_pairs != 1 else ''}"
        if self.pipeline is not None:
            text += (f"; cross-validated accuracy {self.cv_accuracy:.2f} (always '{self.baseline_tag}': "
                     f"{self.baseline_accuracy:.2f})")
        else:
            text += "; no tag classifier (too few tags)"
        if self.proxy_check is not None:
            text += "; " + self.proxy_check.text()
        return text


def _splits(y: np.ndarray, seed: int):
    smallest = min(Counter(y.tolist()).values())
    if smallest >= 2:
        return StratifiedKFold(n_splits=min(5, smallest), shuffle=True, random_state=seed).split(y, y)
    return LeaveOneOut().split(y)


def _cross_validated_accuracy(features: np.ndarray, y: np.ndarray, seed: int) -> float:
    hits = 0
    total = 0
    for train, test in _splits(y, seed):
        if len(set(y[train].tolist())) < 2:  # leave-one-out can leave a single tag to learn from
            pred = np.full(len(test), y[train][0], dtype=object)
        else:
            pred = _pipeline(seed).fit(features[train], y[train]).predict(features[test])
        hits += int(np.sum(pred == y[test]))
        total += len(test)
    return hits / total


def _tag_pairs(tags: list[str | None], values: Mapping[str, float]) -> list[tuple[int, int, float]]:
    """Pairs implied by the tags: every two tagged runs whose tag values differ (better first)."""
    idx = [i for i, t in enumerate(tags) if t is not None]
    out = []
    for n, i in enumerate(idx):
        for j in idx[n + 1:]:
            vi, vj = values[tags[i]], values[tags[j]]
            if vi != vj:
                out.append((i, j, 1.0) if vi > vj else (j, i, 1.0))
    return out


def _fit(X: pd.DataFrame, tags: list[str | None], pairs: list[tuple[int, int, float]],
         values: Mapping[str, float], min_tagged: int, min_pairs: int, seed: int, cv: bool,
         pairs_given: bool) -> TagModel:
    tagged = np.array([t is not None for t in tags], bool)
    y = np.array([t for t in tags if t is not None], dtype=object)
    counts = Counter(y.tolist())
    features = _feature_columns(X)
    classes = [t for t in TAGS if t in counts] + sorted(t for t in counts if t not in TAGS)
    classify = len(y) >= min_tagged and len(counts) >= 2
    if not classify and len(pairs) < min_pairs:
        raise NotEnoughTags(counts, min_tagged, len(pairs) if pairs_given else None, min_pairs)
    pipeline, cv_accuracy = None, math.nan
    if classify:
        matrix = _numeric(X.loc[tagged], features).to_numpy()
        pipeline = _pipeline(seed).fit(matrix, y)
        cv_accuracy = _cross_validated_accuracy(matrix, y, seed) if cv else math.nan
    model = TagModel(
        classes=classes if classify else [],
        features=features,
        values={t: float(values[t]) for t in classes},
        n_train=len(y),
        cv_accuracy=cv_accuracy,
        baseline_accuracy=max(counts.values()) / len(y) if len(y) else math.nan,
        counts={t: counts[t] for t in classes},
        pipeline=pipeline,
    )
    model.rank = _fit_rank(X, features, tags, pairs, values)
    model.n_pairs = len(pairs)
    return model


@single_thread
def fit_tag_model(X: pd.DataFrame, tags: Sequence[str | None], values: Mapping[str, float] = DEFAULT_VALUES,
                  min_tagged: int = 10, seed: int = 0, *, comparisons: Sequence | None = None,
                  min_pairs: int = MIN_PAIRS, check_proxy: bool = False) -> TagModel:
    """Fit a :class:`TagModel` on tagged runs and/or comparisons.

    Parameters
    ----------
    X : pandas.DataFrame
        One row per run, features as columns (e.g. rows of
        :func:`tag_features`).  Text columns are ignored.  With comparisons,
        pass every run (tagged or not) so the comparisons can refer to rows.
    tags : sequence of str or None
        Tag of each row of ``X``; ``None``, NaN or ``""`` marks an untagged
        run, which is left out of the tag classifier.
    values : mapping of str to float
        Value of each tag; its keys are the allowed tags.
    min_tagged : int
        Fewest tagged runs to fit the tag classifier on.
    seed : int
        Seed of the cross-validation folds (the fit itself is deterministic).
    comparisons : sequence of pairs or triples, optional
        ``(better, worse)`` row positions of ``X``, or ``(a, b, outcome)``
        (see :func:`normalize_comparisons`).  They enter the value model next
        to the tags; without enough tags, at least ``min_pairs`` of them fit
        a model on their own (starting from the proxy's order).
    min_pairs : int
        Fewest comparisons that fit a model without enough tags.
    check_proxy : bool
        Also cross-validate the model against the proxy
        (:func:`proxy_agreement`); when it does not beat the proxy,
        :meth:`TagModel.predict_value` returns the proxy.

    Returns
    -------
    TagModel

    Raises
    ------
    NotEnoughTags
        Fewer than ``min_tagged`` tagged runs (or a single distinct tag) and
        fewer than ``min_pairs`` comparisons.
    ValueError
        ``tags`` and ``X`` differ in length, a tag is not in ``values``, or
        a comparison is malformed.
    """
    if len(tags) != len(X):
        raise ValueError(f"{len(tags)} tags for {len(X)} runs")
    X = X.reset_index(drop=True)
    tags = _clean_tags(tags)
    unknown = sorted({t for t in tags if t is not None and t not in values})
    if unknown:
        raise ValueError(f"unknown tag(s) {unknown}; expected one of {list(values)}")
    pairs = normalize_comparisons(comparisons, len(X))
    model = _fit(X, tags, pairs, values, min_tagged, min_pairs, seed, cv=True, pairs_given=comparisons is not None)
    if check_proxy:
        model.proxy_check = proxy_agreement(X, tags, comparisons=pairs, values=values, seed=seed)
        model.use_proxy = not model.proxy_check.model_wins
    return model


def _agreement(score: np.ndarray, pairs: list[tuple[int, int, float]]) -> float:
    hits = 0.0
    for a, b, y in pairs:
        d = score[a] - score[b]
        if not np.isfinite(d) or d == 0:
            hits += 0.5
        else:
            hits += float((d > 0) == (y > 0.5))
    return hits / len(pairs)


@single_thread
def proxy_agreement(X: pd.DataFrame, tags: Sequence[str | None], proxy_score: Sequence[float] | None = None,
                    comparisons: Sequence | None = None, values: Mapping[str, float] = DEFAULT_VALUES,
                    seed: int = 0, folds: int | None = None) -> ProxyCheck:
    """How often the tag model, cross-validated, and the proxy order the judged pairs as the analyst did.

    The judged pairs are every two tagged runs with different tag values and every comparison that
    is not a tie.  The judged runs are split into ``folds`` folds; each fold's runs are valued by a
    value model (:class:`RankModel`) fitted without their tags and without any comparison that
    involves them, however few judgements are left; a fold with nothing left to fit on values its
    runs as ties.  ``proxy_score`` defaults to
    :func:`proxy_of` ``(X)``; when given it is also the proxy the model starts from.
    """
    X = X.reset_index(drop=True)
    if proxy_score is not None:
        proxy_score = np.asarray(proxy_score, float)
        X = X.assign(**{PROXY_COLUMNS[0]: proxy_score})
    else:
        proxy_score = proxy_of(X)
    tags = _clean_tags(tags)
    pairs = normalize_comparisons(comparisons, len(X))
    judged_pairs = _tag_pairs(tags, values) + [(a, b, y) for a, b, y in pairs if y != 0.5]
    if not judged_pairs:
        return ProxyCheck(math.nan, math.nan, 0)
    judged = sorted({i for i, t in enumerate(tags) if t is not None} | {i for a, b, _ in pairs for i in (a, b)})
    k = max(2, min(CV_FOLDS if folds is None else folds, len(judged)))
    order = np.random.default_rng(seed).permutation(len(judged))
    fold_of = {judged[i]: n % k for n, i in enumerate(order)}
    oof = np.full(len(X), np.nan)
    features = _feature_columns(X)
    for f in range(k):
        held = [i for i in judged if fold_of[i] == f]
        if not held:
            continue
        held_set = set(held)
        train_tags = [None if i in held_set else t for i, t in enumerate(tags)]
        train_pairs = [q for q in pairs if q[0] not in held_set and q[1] not in held_set]
        if not train_pairs and all(t is None for t in train_tags):
            continue  # nothing to learn from: the fold's runs count as ties
        oof[held] = _fit_rank(X, features, train_tags, train_pairs, values).value(X.iloc[held])
    return ProxyCheck(_agreement(oof, judged_pairs), _agreement(proxy_score, judged_pairs), len(judged_pairs))


def beats_proxy(X: pd.DataFrame, tags: Sequence[str | None], proxy_score: Sequence[float] | None = None,
                comparisons: Sequence | None = None, values: Mapping[str, float] = DEFAULT_VALUES,
                seed: int = 0) -> bool:
    """True when the cross-validated tag model orders the judged pairs strictly better than the proxy
    (:func:`proxy_agreement`)."""
    return proxy_agreement(X, tags, proxy_score, comparisons, values, seed).model_wins


def ruled_out(n: int, tags: Mapping[int, str] | Sequence[str | None] = (), comparisons: Sequence | None = None,
              values: Mapping[str, float] = DEFAULT_VALUES) -> set[int]:
    """Rows (of ``n``) the analyst's judgements rule out as the best: judged worse than another run in a
    comparison (or judged equal to such a run), or tagged with a value below the best tag given."""
    if isinstance(tags, Mapping):
        tag_of = {int(i): t for i, t in tags.items() if t}
    else:
        tag_of = {i: t for i, t in enumerate(_clean_tags(tags)) if t is not None}
    best_tag = max((values[t] for t in tag_of.values()), default=None)
    out = {i for i, t in tag_of.items() if values[t] < best_tag}
    same: dict[int, set[int]] = {}
    for a, b, y in normalize_comparisons(comparisons, n):
        if y == 0.5:
            same.setdefault(a, {a}).add(b)
            same.setdefault(b, {b}).add(a)
        else:
            out.add(b if y > 0.5 else a)
    todo = list(out)
    while todo:  # equal to a run that lost: lost too
        for j in same.get(todo.pop(), ()):
            if j not in out:
                out.add(j)
                todo.append(j)
    return out


def top_pick(scores: Sequence[float], tags: Mapping[int, str] | Sequence[str | None] = (),
             comparisons: Sequence | None = None, values: Mapping[str, float] = DEFAULT_VALUES) -> int:
    """Row of the best run by ``scores`` that the analyst's own judgements do not rule out
    (:func:`ruled_out`); when every run is ruled out, the best by ``scores``."""
    scores = np.asarray(scores, float)
    out = ruled_out(len(scores), tags, comparisons, values)
    order = np.argsort(-np.where(np.isfinite(scores), scores, -np.inf), kind="stable")
    for i in order:
        if int(i) not in out:
            return int(i)
    return int(order[0])
