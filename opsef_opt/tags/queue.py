"""Which runs to show the analyst next: the tag queue, ordered by expected information.

Tagging the best-scored runs only confirms what the proxy already says.  The
queue instead mixes, for every run not yet judged (all in rank percentiles,
1 = best, so the parts are on one scale):

- **top**: ``exp(-(1 - max(proxy pct, model pct)) / TOP_WIDTH)``: the
  decision that matters is the top pick, so runs that either ranking puts
  near the top come first;
- **disagreement** ``|proxy pct - model pct|``: where the tag model and the
  proxy disagree, one of them is wrong and a tag says which;
- **uncertainty and diversity**: the posterior SD (0..1) of the value
  model's correction at the run (:meth:`~opsef_opt.score.tag_model.RankModel.variance`:
  a Gaussian process on the standardised features), given the runs already
  judged *and the runs already queued in this batch*: it is 1 far from every
  judged run and near 0 next to one, so a near-copy of a judged or queued
  run is not asked;
- **new family**: a bonus for a preprocessing or model family nobody has
  judged yet (from a ``pipeline`` column ``pre | model(...)``, when the
  features have one).

``score = top + W_DISAGREE * disagreement + W_UNCERTAIN * SD + W_FAMILY *
new family``; runs are taken greedily (the SD is updated after each), ties
broken by a seeded jitter.  Until a few judgements are in
(:data:`QUEUE_MIN_TAGGED` tags of 2 kinds or :data:`QUEUE_MIN_PAIRS`
comparisons) there is no model: the proxy's best comes first, then the
top runs unlike it.

Comparisons (:func:`choose_pairs`) are "king of the hill": the current
leader, i.e. the run that would be chosen now by the same rule as the final
choice (the tag model's first when it beats the proxy in cross-validation,
else the proxy's, not ruled out by a judgement), against the strongest
challengers it has not met. (Before, the leader was the best by the mean of
both percentiles, which can be a run neither ranking would pick: comparisons
then defended a run that was never going to be chosen. Same clicks in the
bench's simulation, regret after 20 clicks 0.030 -> 0.013 on its six sets.)

**The winner takes the loser's place** (:func:`~opsef_opt.score.tag_model.judged_pick`): the leader and
the final choice rank runs by the proxy (or the tag model) made consistent with the judgements, so a run
that beat the leader inherits the leader's score (transitively; "equally good" shares it) and becomes the
leader itself. Before, a beaten leader was only ruled out and the choice fell to the proxy's next run,
one nobody had compared: on BBBC007 with the rank combination the winner (F1 0.955, 28th by the proxy)
lost the choice to the never-compared 11th (F1 0.730, regret 0.227 after 20 clicks, with the proxy in
charge: the tag model had not beaten it in cross-validation, 0.59 against 0.88 of 17 judged pairs, in the
simulated analyst traced).
With that rule, the challengers are simply the strongest runs by either ranking, not weighted towards
the uncertain (:data:`W_PAIR_UNCERTAIN` = 0, chosen by leave-one-dataset-out among 0, 0.25, 0.5 and 1
on the six sets of ``bench/proxy_validity.py``, the loss the mean regret after 5 / 10 / 20 clicks with
both combinations, ``mean`` and ``rank``: 0 in every fold). The takeover rule (the tag model's
prediction as soon as it orders the judged pairs strictly better than the proxy in cross-validation)
was compared with a margin of one standard error (sqrt(pairs) pairs) and with never taking over: identical
regrets on all six sets and both combinations, so it is unchanged. Held-out regret after 5 / 10 / 20 clicks, mean of six
sets: ``mean`` 0.027 / 0.017 / 0.003 -> 0.027 / 0.007 / 0.003, ``rank`` 0.018 / 0.023 / 0.039 ->
0.018 / 0.008 / 0.002 (``bench/proxy_validity.py --tags-from``, 5 simulated analysts; the one miss of 0.02
after 10 clicks is BBBC007, 0.024 / 0.029, whose runs within 0.02 of the best are
6th-18th by the mean combination, 23rd-34th by the rank one).

**No diversity bonus for challengers** (measured 2026-11-28, not kept as code): asking the best
not-yet-judged run of a model family nobody has compared (``stardist``, ``local`` ... when the leader is
top-hat + ``unet``) before the leader's near-copies was compared by leave-one-dataset-out on the same six
sets, the loss the mean regret after 5 / 10 / 20 clicks with both combinations: a bonus of 0, 0.1, 0.25, 0.5
or 1 (rank percentiles) added to a challenger's strength for an unjudged model family, the same split half
model family + half preprocessing, and the model-family bonus given only once the leader has been in 2
comparisons (0.25 / 0.5 / 1) or 4 (0.5 / 1). 0 won in five folds and on all six; the sixth fold (Kromp
low-S/N held out) chose 0.5 and its held-out ``rank`` regret after 10 clicks rose 0.010 -> 0.052. The bonus
fixes BBBC007 (model family, 0.5: ``rank`` 0.029 -> 0.006 after 10 clicks) only by spending clicks elsewhere
on runs of other families that lose: where the best run is of the leader's family (Kromp low-S/N, DSB 256)
the regret after 10 clicks rises, so held out BBBC007 still gets 0 and stays at 0.029 (5 simulated analysts).

Spending the simulated analyst's clicks on comparisons only (:data:`TAGS_PER_ROUND` = 0) was chosen
by leave-one-dataset-out on the six sets of ``bench/proxy_validity.py``, among eleven settings
(0-3 tags then 1-3 comparisons per round; challengers ranked with uncertainty weight 0, 0.25 or 0.5): for
each set, the setting with the lowest mean regret after 5 / 10 / 20 clicks on the other five. No tags and
2 comparisons per round (weight 0.5) won in five folds, no tags and weight 0 in the sixth. Held-out regret
after 5 / 10 / 20 clicks, mean of the six sets: 0.035 / 0.035 / 0.034 with rounds of 3 tags + 2
comparisons, 0.027 / 0.017 / 0.003 now. Why: the four quality tags are coarse (on Kromp dense 42 of 48
runs would be ``correct``), so a tag rarely separates the runs near the top, while each comparison there
either confirms the leader or replaces it by a better run. Tags still steer the queue and the model when
an analyst gives them (``mode=tag``).

:func:`simulate_tagging` plays an analyst from ground truth (tags by the
rule of ``bench/proxy_validity.simulated_tag``, comparisons by which of two
runs has the higher GT F1, within :data:`TIE` equal) and returns the run
finally chosen: the tag model's first when it beats the proxy in
cross-validation (:func:`opsef_opt.score.tag_model.proxy_agreement`), else
the proxy's, with the winner of a comparison in the loser's place and
skipping runs the analyst's own judgements rule out
(:func:`opsef_opt.score.tag_model.judged_pick`).
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy.stats import rankdata

from opsef_opt.score.tag_model import (
    DEFAULT_VALUES, NotEnoughTags, PROXY_COLUMNS, _feature_columns, _fit_rank, fit_tag_model,
    judged_pick, normalize_comparisons, ruled_out, single_thread,
)

__all__ = ["choose_runs", "choose_pairs", "simulate_tagging", "analyst_tag", "TIE"]

TOP_WIDTH = 0.1
W_DISAGREE = 0.5
W_UNCERTAIN = 0.5
W_FAMILY = 0.25
#: weight of the uncertainty in the ranking of challengers for comparisons (:func:`choose_pairs`): none, the
#: challengers are the strongest by either ranking. Chosen by leave-one-dataset-out among 0, 0.25, 0.5, 1 (0 in
#: every fold, both combinations; see the module docstring)
W_PAIR_UNCERTAIN = 0.0
#: clicks per round of :func:`simulate_tagging`'s ``information`` strategy: this many tags (from
#: :func:`choose_runs`), then :data:`COMPARISONS_PER_ROUND` comparisons (from :func:`choose_pairs`). No tags:
#: chosen by leave-one-dataset-out (see the module docstring)
TAGS_PER_ROUND = 0
COMPARISONS_PER_ROUND = 2
#: judgements before the queue uses the model (the stage's model needs ``min_tagged``)
QUEUE_MIN_TAGGED = 4
QUEUE_MIN_PAIRS = 3
#: GT F1 difference under which a simulated analyst calls two runs equally good
TIE = 0.01


def _pct(values: np.ndarray) -> np.ndarray:
    """Rank percentile in (0, 1], 1 = highest; NaN ranks lowest."""
    v = np.where(np.isfinite(values), values, -np.inf)
    return rankdata(v, method="average") / len(v)


def _prepare(features: pd.DataFrame, proxy_score) -> pd.DataFrame:
    X = features.reset_index(drop=True)
    return X.assign(**{PROXY_COLUMNS[0]: np.asarray(proxy_score, float)})


def _estimate(X: pd.DataFrame, proxy: np.ndarray, tags: list, pairs: list, values):
    """(proxy pct, model pct or None, the value model).

    Until there are :data:`QUEUE_MIN_TAGGED` tags (2 different) or :data:`QUEUE_MIN_PAIRS`
    comparisons there is no model percentile and the variance is the prior's (only the runs queued
    in the batch lower it): the queue stays at the top of the proxy's ranking, spread over unlike
    runs. In the simulation this beat letting the first few judgements steer (see the report).
    """
    cols = _feature_columns(X)
    n_tagged = sum(t is not None for t in tags)
    distinct = len({t for t in tags if t is not None})
    if (n_tagged >= QUEUE_MIN_TAGGED and distinct >= 2) or len(pairs) >= QUEUE_MIN_PAIRS:
        rank = _fit_rank(X, cols, tags, pairs, values)
        return _pct(proxy), _pct(rank.value(X)), rank
    return _pct(proxy), None, _fit_rank(X, cols, [None] * len(X), [], values)


def _families(features: pd.DataFrame) -> tuple[list[str], list[str]] | None:
    if "pipeline" not in features.columns:
        return None
    pre, fam = [], []
    for p in features["pipeline"].astype(str):
        head, _, model = p.rpartition(" | ")
        pre.append(head.strip() or "none")
        fam.append(model.split("(", 1)[0].strip())
    return pre, fam


def _judged(tagged: Mapping[int, str], pairs: list) -> set[int]:
    return {int(i) for i, t in tagged.items() if t} | {i for a, b, _ in pairs for i in (a, b)}


@single_thread
def choose_runs(features: pd.DataFrame, proxy_score: np.ndarray, tagged: Mapping[int, str],
                comparisons: Sequence[tuple[int, int]], k: int, seed: int = 0,
                values: Mapping[str, float] = DEFAULT_VALUES) -> list[int]:
    """Row positions of ``features`` to tag next, most informative first (see the module docstring).

    Parameters
    ----------
    features : pandas.DataFrame
        One row per run (tag-model features; an optional text column ``pipeline``).
    proxy_score : array
        The combined proxy of each row (the ranking without tags).
    tagged : mapping of row -> tag
        Runs already tagged; never returned.
    comparisons : sequence
        ``(better, worse)`` or ``(a, b, outcome)`` row pairs already judged.
    k : int
        How many runs to return (fewer when fewer are untagged).
    seed : int
        Seeds the committee and the tie-breaking jitter: the same inputs and seed give the same list.
    """
    n = len(features)
    proxy = np.asarray(proxy_score, float)
    if len(proxy) != n:
        raise ValueError(f"{len(proxy)} proxy scores for {n} runs")
    tagged = {int(i): t for i, t in tagged.items() if t}
    pairs = normalize_comparisons(comparisons, n)
    candidates = [i for i in range(n) if i not in tagged]
    if k <= 0 or not candidates:
        return []
    X = _prepare(features, proxy)
    tags = [tagged.get(i) for i in range(n)]
    pp, pm, rank = _estimate(X, proxy, tags, pairs, values)
    top = np.exp(-(1 - np.maximum(pp, pm if pm is not None else pp)) / TOP_WIDTH)
    base = top + (W_DISAGREE * np.abs(pp - pm) if pm is not None else 0.0)
    Z = rank.z(X)
    fams = _families(features)
    seen_pre, seen_fam = set(), set()
    if fams:
        reference = _judged(tagged, pairs)
        seen_pre = {fams[0][i] for i in reference}
        seen_fam = {fams[1][i] for i in reference}
    jitter = np.random.default_rng(seed).random(n) * 1e-9
    chosen: list[int] = []
    left = set(candidates)
    for _ in range(min(k, len(candidates))):
        idx = np.array(sorted(left))
        sd = np.sqrt(rank.variance(Z[idx], Z[chosen] if chosen else None))
        score = base[idx] + W_UNCERTAIN * sd + jitter[idx]
        if fams and (seen_pre or seen_fam):
            score = score + W_FAMILY * 0.5 * (np.array([fams[0][i] not in seen_pre for i in idx], float)
                                              + np.array([fams[1][i] not in seen_fam for i in idx], float))
        best = int(idx[int(np.argmax(score))])
        chosen.append(best)
        left.discard(best)
        if fams:
            seen_pre.add(fams[0][best])
            seen_fam.add(fams[1][best])
    return chosen


@single_thread
def choose_pairs(features: pd.DataFrame, proxy_score: np.ndarray, tagged: Mapping[int, str],
                 comparisons: Sequence[tuple[int, int]], k: int, seed: int = 0,
                 values: Mapping[str, float] = DEFAULT_VALUES) -> list[tuple[int, int]]:
    """Pairs of rows to compare next: the current leader against the strongest challengers it has not met.

    The leader is the run that would be chosen now (the rule of the final choice: the tag model's
    first when it beats the proxy in cross-validation, else the proxy's, skipping runs the judgements
    rule out, the winner of a comparison in the loser's place: :func:`~opsef_opt.score.tag_model.judged_pick`);
    challengers are ranked by
    ``max(proxy pct, model pct) + W_PAIR_UNCERTAIN * uncertainty`` and exclude runs already ruled out.
    Pairs already compared (either order) are not asked again.
    """
    n = len(features)
    proxy = np.asarray(proxy_score, float)
    tagged = {int(i): t for i, t in tagged.items() if t}
    pairs = normalize_comparisons(comparisons, n)
    if k <= 0 or n < 2:
        return []
    X = _prepare(features, proxy)
    tags = [tagged.get(i) for i in range(n)]
    pp, pm, rank = _estimate(X, proxy, tags, pairs, values)
    spread = np.sqrt(rank.variance(rank.z(X)))
    jitter = np.random.default_rng(seed).random(n) * 1e-9
    # the leader is the run that would be chosen now (the same rule as the final choice): the
    # comparisons defend or overturn the current decision, not a run no ranking would pick
    n_tagged = len(tagged)
    leader, _ = _final_pick(X, proxy + jitter, tags, pairs, values, max(2, min(10, n_tagged)), seed)
    met = {frozenset((a, b)) for a, b, _ in pairs}
    out_ruled = ruled_out(n, tagged, pairs, values)
    strength = np.maximum(pp, pm if pm is not None else pp) + W_PAIR_UNCERTAIN * spread + jitter
    order = [int(i) for i in np.argsort(-strength, kind="stable")]
    out = []
    for j in order:
        if len(out) >= k:
            break
        if j == leader or j in out_ruled or frozenset((leader, j)) in met:
            continue
        out.append((leader, j))
    return out


def analyst_tag(f1: float, n_pred: float | None = None, n_true: float | None = None) -> str:
    """The tag a simulated analyst gives, read off GT (the rule of ``bench/proxy_validity.simulated_tag``).

    Without object counts, a mid-quality run is called ``under``.
    """
    if f1 < 0.3:
        return "failed"
    if f1 >= 0.75:
        return "correct"
    if n_pred is None or n_true is None:
        return "under"
    return "over" if n_pred > n_true else "under"


def _analyst_pair(f1: np.ndarray, a: int, b: int) -> tuple[int, int, float]:
    d = f1[a] - f1[b]
    return (a, b, 0.5 if abs(d) <= TIE else (1.0 if d > 0 else 0.0))


def _final_pick(X: pd.DataFrame, proxy: np.ndarray, tags: list, pairs: list, values, min_tagged: int,
                seed: int) -> tuple[int, bool]:
    tagged = {i: t for i, t in enumerate(tags) if t is not None}
    try:
        model = fit_tag_model(X, tags, values, min_tagged=min_tagged, seed=seed, comparisons=pairs,
                              check_proxy=True)
        score, used_model = model.predict_value(X), not model.use_proxy
    except NotEnoughTags:
        score, used_model = proxy, False
    return judged_pick(score, tagged, pairs, values), used_model


@single_thread
def simulate_tagging(features: pd.DataFrame, proxy_score: np.ndarray, gt_f1: np.ndarray, n_tags: int,
                     strategy: str = "information", seed: int = 0,
                     comparisons_per_round: int = COMPARISONS_PER_ROUND, tags_per_round: int = TAGS_PER_ROUND,
                     n_pred: Sequence[float] | None = None,
                     n_true: Sequence[float] | None = None, values: Mapping[str, float] = DEFAULT_VALUES,
                     min_tagged: int | None = None) -> tuple[int, int]:
    """Play an analyst who gives ``n_tags`` clicks (one tag or one comparison each); return
    ``(chosen row, clicks used)``.

    Strategies
    ----------
    ``information``
        Rounds of ``tags_per_round`` tags from :func:`choose_runs` (default :data:`TAGS_PER_ROUND`:
        none) then ``comparisons_per_round`` comparisons from :func:`choose_pairs`, until the clicks
        are spent.
    ``random``
        ``n_tags`` runs drawn at random and tagged (no comparisons): the baseline.
    ``top``
        The proxy's best-scored untagged runs, tagged (what ``mode=tag`` showed before).

    Tags follow :func:`analyst_tag` (``n_pred``/``n_true``: predicted and true object counts per
    row, to tell over from under), comparisons which run has the higher ``gt_f1`` (within
    :data:`TIE`: equally good).  The chosen row is the final tag model's first when it beats the
    proxy in cross-validation, else the proxy's, skipping runs the judgements rule out.
    ``min_tagged`` (default ``min(10, tags given)``) is the fewest tags the final model's
    classifier needs.
    """
    n = len(features)
    proxy = np.asarray(proxy_score, float)
    f1 = np.asarray(gt_f1, float)
    if len(proxy) != n or len(f1) != n:
        raise ValueError("features, proxy_score and gt_f1 differ in length")
    X = _prepare(features, proxy)
    npred = None if n_pred is None else np.asarray(n_pred, float)
    ntrue = None if n_true is None else np.asarray(n_true, float)

    def tag_of(i: int) -> str:
        return analyst_tag(f1[i], None if npred is None else npred[i], None if ntrue is None else ntrue[i])

    tags: list[str | None] = [None] * n
    pairs: list[tuple[int, int, float]] = []
    clicks = 0
    budget = max(0, int(n_tags))
    if strategy == "random":
        for i in np.random.default_rng(seed).permutation(n)[: budget]:
            tags[int(i)] = tag_of(int(i))
            clicks += 1
    elif strategy == "top":
        for i in np.argsort(-np.where(np.isfinite(proxy), proxy, -np.inf), kind="stable")[: budget]:
            tags[int(i)] = tag_of(int(i))
            clicks += 1
    elif strategy == "information":
        round_no = 0
        while clicks < budget:
            tagged = {i: t for i, t in enumerate(tags) if t is not None}
            want = min(tags_per_round, budget - clicks)
            picked = choose_runs(features, proxy, tagged, pairs, want, seed + round_no, values) if want else []
            for i in picked:
                tags[i] = tag_of(i)
                clicks += 1
            tagged = {i: t for i, t in enumerate(tags) if t is not None}
            want = min(comparisons_per_round, budget - clicks)
            asked = choose_pairs(features, proxy, tagged, pairs, want, seed + round_no, values) if want else []
            for a, b in asked:
                pairs.append(_analyst_pair(f1, a, b))
                clicks += 1
            round_no += 1
            if not picked and not asked:
                break
    else:
        raise ValueError(f"unknown strategy {strategy!r}; use information, random or top")
    n_tagged = sum(t is not None for t in tags)
    need = min_tagged if min_tagged is not None else max(2, min(10, n_tagged))
    chosen, _ = _final_pick(X, proxy, tags, pairs, values, need, seed)
    return chosen, clicks
