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
:class:`~opsef_opt.score.rank_model.RankModel`, fitted on the tags *and* on
comparisons ("A is better than B", "A and B are equally good"): the
calibrated proxy plus local corrections around the judged runs.  The
classifier still gives :meth:`TagModel.predict_tag` /
:meth:`TagModel.predict_proba` and the cross-validated accuracy.  Enough tags
(``min_tagged``, 2 kinds) or :data:`MIN_PAIRS` comparisons, either alone, fit
a model.

**Model or proxy.**  :func:`fit_tag_model` with ``check_proxy=True`` checks
by cross-validation whether the model orders the judged runs better than the
proxy (:mod:`opsef_opt.score.proxy_check`) and records the outcome in
:attr:`TagModel.use_proxy`; :meth:`TagModel.predict_value` then returns the
proxy instead, and :meth:`TagModel.describe` says which in its one line.

The inputs (tags, comparisons, features) live in :mod:`opsef_opt.score.tag_data`,
the value model in :mod:`opsef_opt.score.rank_model` and the model-or-proxy
check in :mod:`opsef_opt.score.proxy_check`; their public names are
re-exported here.
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

from opsef_opt.score.proxy_check import (  # noqa: F401  (re-exported)
    CV_FOLDS, ProxyCheck, _agreement, beats_proxy, judged_pick, judged_scores, proxy_agreement, ruled_out,
    top_pick,
)
from opsef_opt.score.rank_model import (  # noqa: F401  (re-exported)
    KAPPA, LENGTH_FACTOR, PAIR_NOISE, PRIOR_SLOPE, PRIOR_SLOPE_SD, PRIOR_VALUE, PRIOR_VALUE_SD, RESIDUAL_SD,
    TAG_NOISE, TAG_SD, RankModel, _fit_rank,
)
from opsef_opt.score.tag_data import (  # noqa: F401  (re-exported)
    DEFAULT_VALUES, MIN_PAIRS, PROXY_COLUMNS, TAGS, Comparison, NotEnoughTags, _clean_tags, _counts_text,
    _feature_columns, _numeric, _tag_pairs, normalize_comparisons, proxy_of, single_thread, tag_features,
)

__all__ = ["TAGS", "DEFAULT_VALUES", "MIN_PAIRS", "NotEnoughTags", "TagModel", "RankModel", "ProxyCheck",
           "tag_features", "fit_tag_model", "normalize_comparisons", "proxy_of", "proxy_agreement", "beats_proxy",
           "top_pick", "ruled_out", "judged_scores", "judged_pick"]

#: inverse regularisation strength: moderate, as suits ~10-20 examples
C = 0.5


def _pipeline(seed: int) -> Pipeline:
    return make_pipeline(
        SimpleImputer(strategy="median", keep_empty_features=True),
        StandardScaler(),
        # lbfgs fits the multinomial (softmax) model for 3+ classes (for 2 it is the equivalent
        # binomial one); l1_ratio=0 is the L2 penalty (scikit-learn >= 1.8 deprecates `penalty`)
        LogisticRegression(C=C, l1_ratio=0.0, class_weight="balanced", max_iter=2000, random_state=seed),
    )


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
