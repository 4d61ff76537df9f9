"""Whether the analyst's judgements taught the model anything the proxy did not know, and which run to pick.

A model fitted on a dozen judgements can be worse than the unsupervised proxy
it starts from; ranking by it then costs the analyst the runs the proxy would
have found.  :func:`proxy_agreement` cross-validates, on the judged runs
(leave-one-out up to :data:`CV_FOLDS` runs), how often the model orders a
pair of judged runs the way the analyst did (two runs with different tag
values, and every comparison that is not a tie) against how often the proxy
does; :func:`beats_proxy` is True only when the model is strictly better.
Whichever ranking wins, :func:`top_pick` never proposes a run the analyst's
own judgements already rule out (:func:`ruled_out`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from opsef_opt.score.rank_model import _fit_rank
from opsef_opt.score.tag_data import (
    DEFAULT_VALUES, PROXY_COLUMNS, _clean_tags, _feature_columns, _tag_pairs, normalize_comparisons, proxy_of,
    single_thread,
)

__all__ = ["CV_FOLDS", "ProxyCheck", "proxy_agreement", "beats_proxy", "ruled_out", "top_pick", "judged_scores",
           "judged_pick"]

#: folds of the model-or-proxy check (capped at the number of judged runs: leave-one-out below)
CV_FOLDS = 20


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
        """True when the model orders strictly more judged pairs right than the proxy."""
        return self.n_pairs > 0 and self.model > self.proxy + 1e-9

    def text(self) -> str:
        """The outcome in words, for :meth:`TagModel.describe`."""
        if not self.n_pairs:
            return "no judged pairs to compare it with the proxy: ranks by the proxy"
        which = "the tag model" if self.model_wins else "the proxy"
        return (f"orders {self.model:.2f} of {self.n_pairs} judged pairs right in cross-validation, the proxy "
                f"{self.proxy:.2f}: ranks by {which}")


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


def _tags_by_row(tags: Mapping[int, str] | Sequence[str | None]) -> dict[int, str]:
    """The tagged rows and their tags, from a mapping (row -> tag) or a per-row sequence (None: untagged)."""
    if isinstance(tags, Mapping):
        return {int(i): t for i, t in tags.items() if t}
    return {i: t for i, t in enumerate(_clean_tags(tags)) if t is not None}


def ruled_out(n: int, tags: Mapping[int, str] | Sequence[str | None] = (), comparisons: Sequence | None = None,
              values: Mapping[str, float] = DEFAULT_VALUES) -> set[int]:
    """Rows (of ``n``) the analyst's judgements rule out as the best: judged worse than another run in a
    comparison (or judged equal to such a run), or tagged with a value below the best tag given."""
    tag_of = _tags_by_row(tags)
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


def judged_scores(scores: Sequence[float], tags: Mapping[int, str] | Sequence[str | None] = (),
                  comparisons: Sequence | None = None, values: Mapping[str, float] = DEFAULT_VALUES) -> np.ndarray:
    """``scores`` made consistent with the analyst's judgements: a run judged at least as good as another
    (it won their comparison, they were called equal, or it carries a higher-valued tag; transitively)
    scores at least as high as that run.

    Without this, a run that beat the leader inherited nothing from it: once the leader was ruled out
    the choice fell to the next run by the proxy, one the analyst never saw and that may be worse than
    the winner (on BBBC007 with the rank combination: the winner, F1 0.955, 28th by the proxy, lost to
    the never-compared 11th, F1 0.730). The winner of a comparison takes the loser's place.
    """
    scores = np.asarray(scores, float)
    s = np.where(np.isfinite(scores), scores, -np.inf)
    n = len(s)
    tag_of = _tags_by_row(tags)
    tag_list = [tag_of.get(i) for i in range(n)]
    below: dict[int, set[int]] = {}  # run -> runs judged no better than it (directly)
    for a, b, y in _tag_pairs(tag_list, values) + normalize_comparisons(comparisons, n):
        if y >= 0.5:
            below.setdefault(a, set()).add(b)
        if y <= 0.5:
            below.setdefault(b, set()).add(a)
    out = s.copy()
    for i in below:
        seen, todo = {i}, [i]
        while todo:
            for j in below.get(todo.pop(), ()):
                if j not in seen:
                    seen.add(j)
                    todo.append(j)
        out[i] = max(s[j] for j in seen)
    return out


def judged_pick(scores: Sequence[float], tags: Mapping[int, str] | Sequence[str | None] = (),
                comparisons: Sequence | None = None, values: Mapping[str, float] = DEFAULT_VALUES) -> int:
    """Row of the best run by :func:`judged_scores` (ties: by ``scores``) that the judgements do not rule
    out (:func:`ruled_out`); when every run is ruled out, the best by ``scores``.  :func:`top_pick` with the
    winner of a comparison in the loser's place."""
    scores = np.asarray(scores, float)
    own = np.where(np.isfinite(scores), scores, -np.inf)
    lifted = judged_scores(scores, tags, comparisons, values)
    out = ruled_out(len(scores), tags, comparisons, values)
    order = np.lexsort((-own, -lifted))
    for i in order:
        if int(i) not in out:
            return int(i)
    return int(np.argsort(-own, kind="stable")[0])

