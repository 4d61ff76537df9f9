"""The analyst's judgements and the run features they are judged on, as plain tables.

The tag classifier, the value model and the model-or-proxy check all read the
same inputs: quality tags (``correct``, ``over``, ``under``, ``failed``),
comparisons ("A is better than B", "A and B are equally good") and one row of
numeric features per run, with the run's combined proxy among them.  Keeping
their vocabulary, cleaning and validation in one place means every model
agrees on what a tag, a comparison or a missing metric is.
"""
from __future__ import annotations

import math
from typing import Callable, Mapping, Sequence, TypeVar

import numpy as np
import pandas as pd

__all__ = ["TAGS", "DEFAULT_VALUES", "MIN_PAIRS", "PROXY_COLUMNS", "NotEnoughTags", "tag_features",
           "normalize_comparisons", "proxy_of", "single_thread"]

TAGS = ("correct", "over", "under", "failed")
#: value of a run with this tag when ranking runs (over/under are usable but need fixing)
DEFAULT_VALUES = {"correct": 1.0, "over": 0.4, "under": 0.4, "failed": 0.0}
#: fewest comparisons that fit a model without absolute tags
MIN_PAIRS = 5
#: columns holding the combined proxy of a run, first finite one wins (``proxy.final`` once a stage ended)
PROXY_COLUMNS = ("proxy.final", "proxy")

_F = TypeVar("_F", bound=Callable)


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


def single_thread(func: _F) -> _F:
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
