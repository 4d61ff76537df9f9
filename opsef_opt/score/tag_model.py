"""Learn the analyst's quality tags from unsupervised proxy metrics.

An analyst tags 10-20 MLflow runs as ``correct``, ``over`` (over-segmented),
``under`` (under-segmented) or ``failed``.  Every run also carries proxy
metrics (``proxy``, ``proxy.<name>``, ``proxy.<name>.<detail>``) and object
statistics.  A small multinomial logistic regression maps those to the tags,
so a handful of judgements ranks hundreds of untagged runs by their expected
tag value (:meth:`TagModel.predict_value`).

The model is deliberately small and strongly regularised (a dozen examples,
tens of features): median imputation of missing metrics, standardisation,
L2-penalised multinomial logistic regression with balanced class weights.
Its cross-validated accuracy is reported next to the accuracy of always
predicting the most frequent tag, so a user sees whether the tags taught it
anything.
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

__all__ = ["TAGS", "DEFAULT_VALUES", "NotEnoughTags", "TagModel", "tag_features", "fit_tag_model"]

TAGS = ("correct", "over", "under", "failed")
#: value of a run with this tag when ranking runs (over/under are usable but need fixing)
DEFAULT_VALUES = {"correct": 1.0, "over": 0.4, "under": 0.4, "failed": 0.0}
#: inverse regularisation strength: moderate, as suits ~10-20 examples
C = 0.5


class NotEnoughTags(ValueError):
    """Too few tagged runs (or a single tag) to fit a :class:`TagModel`.

    ``counts`` holds the number of tagged runs per tag.
    """

    def __init__(self, counts: Mapping[str, int], min_tagged: int):
        self.counts = dict(counts)
        self.min_tagged = min_tagged
        n = sum(self.counts.values())
        runs = "1 tagged run" if n == 1 else f"{n} tagged runs"
        super().__init__(f"{runs}{_counts_text(self.counts)}; at least {min_tagged} with at least "
                         f"2 different tags are needed")


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


@dataclass
class TagModel:
    """Predicts quality tags (and their expected value) from run metrics.

    Attributes
    ----------
    classes : list of str
        Tags seen in training, in the order of :data:`TAGS`; the columns of
        :meth:`predict_proba`.
    features : list of str
        Feature columns used; others are ignored, missing ones are NaN.
    values : dict of str to float
        Value of each tag (:meth:`predict_value`).
    n_train : int
        Tagged runs it was fitted on.
    cv_accuracy : float
        Cross-validated accuracy (stratified k-fold, k = min(5, smallest tag
        count), or leave-one-out when a tag was used once).
    baseline_accuracy : float
        Accuracy of always predicting the most frequent tag.
    counts : dict of str to int
        Tagged runs per tag.
    pipeline : sklearn.pipeline.Pipeline
        The fitted imputer, scaler and logistic regression.
    """

    classes: list[str]
    features: list[str]
    values: dict[str, float]
    n_train: int
    cv_accuracy: float
    baseline_accuracy: float
    counts: dict[str, int] = field(default_factory=dict)
    pipeline: Pipeline | None = field(default=None, repr=False)

    def _matrix(self, X: pd.DataFrame) -> np.ndarray:
        return _numeric(X, self.features).to_numpy()

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        """Probability of each tag in :attr:`classes` order, one row per run (row of ``X``)."""
        if self.pipeline is None:
            raise RuntimeError("this TagModel was not fitted: use fit_tag_model()")
        if len(X) == 0:
            return np.zeros((0, len(self.classes)))
        proba = self.pipeline.predict_proba(self._matrix(X))
        # the pipeline's classes are sorted alphabetically; reorder to self.classes
        order = [list(self.pipeline.classes_).index(c) for c in self.classes]
        return proba[:, order]

    def predict_tag(self, X: pd.DataFrame) -> list[str]:
        """Most probable tag of each run."""
        proba = self.predict_proba(X)
        return [self.classes[i] for i in np.argmax(proba, axis=1)]

    def predict_value(self, X: pd.DataFrame) -> np.ndarray:
        """Expected tag value of each run: ``sum_k p_k * values[k]``."""
        weights = np.array([self.values[c] for c in self.classes], dtype=float)
        return self.predict_proba(X) @ weights

    @property
    def baseline_tag(self) -> str:
        """The most frequent tag (ties: first in :data:`TAGS` order)."""
        return max(self.classes, key=lambda c: self.counts.get(c, 0))

    def describe(self) -> str:
        """One line, e.g. ``tag model: 14 tagged runs (correct 6, over 4, failed 4); cross-validated
        accuracy 0.79 (always 'correct': 0.43)``."""
        return (f"tag model: {self.n_train} tagged runs{_counts_text(self.counts)}; cross-validated accuracy "
                f"{self.cv_accuracy:.2f} (always '{self.baseline_tag}': {self.baseline_accuracy:.2f})")


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


def fit_tag_model(X: pd.DataFrame, tags: Sequence[str | None], values: Mapping[str, float] = DEFAULT_VALUES,
                  min_tagged: int = 10, seed: int = 0) -> TagModel:
    """Fit a :class:`TagModel` on tagged runs.

    Parameters
    ----------
    X : pandas.DataFrame
        One row per run, features as columns (e.g. rows of
        :func:`tag_features`).  Text columns are ignored.
    tags : sequence of str or None
        Tag of each row of ``X``; ``None``, NaN or ``""`` marks an untagged
        run, which is left out.
    values : mapping of str to float
        Value of each tag; its keys are the allowed tags.
    min_tagged : int
        Fewest tagged runs to fit on.
    seed : int
        Seed of the cross-validation folds (the fit itself is deterministic).

    Returns
    -------
    TagModel

    Raises
    ------
    NotEnoughTags
        Fewer than ``min_tagged`` tagged runs, or a single distinct tag.
    ValueError
        ``tags`` and ``X`` differ in length, or a tag is not in ``values``.
    """
    if len(tags) != len(X):
        raise ValueError(f"{len(tags)} tags for {len(X)} runs")
    tags = [None if t is None or (isinstance(t, float) and math.isnan(t)) or t == "" else str(t) for t in tags]
    unknown = sorted({t for t in tags if t is not None and t not in values})
    if unknown:
        raise ValueError(f"unknown tag(s) {unknown}; expected one of {list(values)}")
    tagged = np.array([t is not None for t in tags])
    y = np.array([t for t in tags if t is not None], dtype=object)
    counts = Counter(y.tolist())
    if len(y) < min_tagged or len(counts) < 2:
        raise NotEnoughTags(counts, min_tagged)

    features = _feature_columns(X)
    matrix = _numeric(X.loc[tagged], features).to_numpy()
    classes = [t for t in TAGS if t in counts] + sorted(t for t in counts if t not in TAGS)
    ordered_counts = {t: counts[t] for t in classes}
    pipeline = _pipeline(seed).fit(matrix, y)
    return TagModel(
        classes=classes,
        features=features,
        values={t: float(values[t]) for t in classes},
        n_train=len(y),
        cv_accuracy=_cross_validated_accuracy(matrix, y, seed),
        baseline_accuracy=max(counts.values()) / len(y),
        counts=ordered_counts,
        pipeline=pipeline,
    )
