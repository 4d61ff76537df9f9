"""Scores known only when a stage is done: consensus against one common pool of every candidate.

During the search, a trial's consensus compares it with the candidates of
its stage evaluated before it (the pool grows as the stage runs). When a
stage is done, every candidate of *every* stage of the study is compared with
one common pool: the union of all stages' stored candidates (identical label
images are one candidate, so a pipeline evaluated in two stages is counted
once and gets the same score in both), grouped into families of
near-duplicates that share one vote per family (see :mod:`opsef_opt.search.pool`). The
combined proxy is recomputed with that consensus and with the pool-level size
check ANDed into ``plausible``; these ``.final`` values are logged to each run
and rank the leaderboard when the objective is a proxy. Optuna's own trial
values stay what the sampler saw.

The combined proxy (``proxy.final``) is by default the *rank combination*
(:mod:`opsef_opt.score.proxies.rank`): per image, each proxy's percentile among
the pool's plausible candidates (every stored candidate of every stage,
identical label images once), combined with fixed coefficients fitted by
pairwise learning-to-rank on the GT sets of ``bench/proxy_validity.py``, which
validates it held out. A study that sets proxy weights of its own
(``study.score.proxies.<name>.weight``), or ``study.score.combination: mean``,
gets the weighted mean of the raw values instead
(:func:`~opsef_opt.score.proxies.combine`). ``details=True`` returns both.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np

from opsef_opt.config import ScoreSpec
from opsef_opt.score import PROXIES, ImageResult
from opsef_opt.score.proxies import combine
from opsef_opt.score.proxies.combine import _finite
from opsef_opt.score.proxies.rank import RANK_FEATURES, percentiles_of, rank_combine, reference_columns
from opsef_opt.search.pool import ConsensusPool, LabelStore

__all__ = ["final_scores", "common_final_scores", "uses_rank"]

def uses_rank(spec: ScoreSpec) -> bool:
    """Does ``proxy.final`` use the rank combination (the default; ``study.score.combination``)?

    Chosen by leave-one-dataset-out between the two combinations on the six GT
    sets of ``bench/proxy_validity.py`` (2026-11-28): for each held-out set the
    one with the higher mean held-out rho - regret on the other five; rank in
    all six folds (held out, re-run from an empty cache: mean regret 0.044
    against 0.080, rho 0.82 against 0.79; lower rho on BBBC007, 0.77 against
    0.95): see README, Benchmarks.
    """
    return spec.combination == "rank"


def final_scores(store: LabelStore, spec: ScoreSpec, objective: str, trials: list[int],
                 family_agreement: float | None = None, details: bool = False) -> dict[int, dict[str, float]]:
    """``{trial: {"proxy.consensus.final", "proxy.final", "proxy.plausible.final", "score.final"?}}`` of one store."""
    return common_final_scores({"": store}, spec, {"": objective}, {"": trials},
                               family_agreement=family_agreement, details=details).get("", {})


def common_final_scores(stores: Mapping[str, LabelStore], spec: ScoreSpec, objectives: Mapping[str, str],
                        trials: Mapping[str, Sequence[int]],
                        pool: ConsensusPool | None = None,
                        family_agreement: float | None = None,
                        details: bool = False) -> dict[str, dict[int, dict[str, float]]]:
    """Final scores of the given trials of every stage, all against one pool of every store's candidates.

    Parameters
    ----------
    stores : stage name -> its label store (every stage of the study).
    objectives : stage name -> its resolved objective (``score.final`` is
        written for ``proxy`` and ``proxy.consensus``).
    trials : stage name -> trial numbers to score (stored ones only).
    pool : an already refreshed pool over ``stores`` (in that order), if the
        caller has one.
    family_agreement : near-duplicate level of a pool built here (default: the
        library's :data:`~opsef_opt.score.proxies.consensus.FAMILY_AGREEMENT`).
    details : also return ``proxy.<p>.pct.final`` (mean over images of each
        rank feature's pool percentile), ``proxy.rank.final`` (the rank
        combination) and ``proxy.weighted.final`` (the weighted mean of the
        raw values): for ``bench/proxy_validity.py``.

    Returns
    -------
    ``{stage: {trial: row}}``; row: ``proxy.consensus.final``,
    ``proxy.final``, ``proxy.plausible.final`` (share of the images passing
    the plausibility checks) and, for proxy objectives, ``score.final``.
    """
    if "consensus" not in PROXIES or not any(trials.values()):
        return {}
    order = list(stores)
    if pool is None:
        pool = ConsensusPool([stores[s] for s in order], spec, family_agreement)
        pool.refresh()
    index = {s: i for i, s in enumerate(order)}
    func = PROXIES.get("consensus").func
    options = spec.options("consensus")

    wanted: dict[tuple[str, int], dict[str, dict[str, float]]] = {}  # (stage, trial) -> per-image metrics
    for stage, numbers in trials.items():
        store = stores[stage]
        stored = set(store.trials())
        for number in numbers:
            if number in stored:
                try:
                    wanted[(stage, number)] = store.load_metrics(number)
                except (OSError, ValueError, KeyError):
                    continue

    # every candidate of the pool (identical label images once) on every image: its consensus proxy (one label
    # image and one consensus in memory at a time) and its final per-image values (the percentiles' reference)
    metrics_of: dict[tuple[int, int], dict] = {}

    def stored_metrics(where: tuple[int, int]) -> dict:
        if where not in metrics_of:
            try:
                metrics_of[where] = pool.stores[where[0]].load_metrics(where[1])
            except (OSError, ValueError, KeyError):
                metrics_of[where] = {}
        return metrics_of[where]

    rank = uses_rank(spec)
    pooled = rank or details  # the percentiles are needed
    nan = math.nan
    needed: dict[str, set[str]] = {}  # image -> candidates whose consensus is needed
    for (stage, number), per_image in wanted.items():
        for name in per_image:
            img = pool.images.get(name)
            if img is None:
                continue
            if pooled:  # every candidate of the pool: the percentiles' reference set
                needed.setdefault(name, set()).update(img.cands)
            key = pool.key_of(name, number, index[stage])
            if key is not None:
                needed.setdefault(name, set()).add(key)
    agreement: dict[tuple[str, str], dict[str, float]] = {}  # (image, key) -> its consensus proxy
    reference: dict[str, dict[str, np.ndarray]] = {}  # image -> sorted values of the pool's plausible candidates
    for name, keys in needed.items():
        img = pool.images[name]
        rows = []
        for key in sorted(keys):  # each candidate once, however many stages evaluated it
            labels = pool.labels(name, key)
            agreed = pool.candidate_consensus(name, key, labels)
            got = func(ImageResult(labels, np.zeros(0, np.float32), consensus=agreed), **options)
            agreement[(name, key)] = {f"proxy.{k}": float(v) for k, v in got.items()}
            if pooled:
                m = {**stored_metrics(img.cands[key].where).get(name, {}), **agreement[(name, key)]}
                rows.append(_final_values(m, spec, pool.size_ok(name, key)))
        if pooled:
            reference[name] = reference_columns(rows, spec.gate)

    out: dict[str, dict[int, dict[str, float]]] = {}
    for (stage, number), per_image in wanted.items():
        consensus, ranked, weighted, plausible = [], [], [], []
        pcts: dict[str, list[float]] = {f: [] for f in RANK_FEATURES}
        for name, m in per_image.items():
            key = pool.key_of(name, number, index[stage])
            m = {**m, **agreement.get((name, key), {"proxy.consensus": nan})}
            values = _final_values(m, spec, key is None or pool.size_ok(name, key))
            passes = values.get("plausible", nan)
            plausible.append(float(passes) if _finite(passes) else 1.0)
            consensus.append(m["proxy.consensus"])
            weighted.append(combine(values, spec.weights, spec.gate))
            if pooled:
                p = percentiles_of(values, reference.get(name, {f: np.zeros(0) for f in RANK_FEATURES}))
                ranked.append(rank_combine(values, p, gate=spec.gate))
                for f in RANK_FEATURES:
                    pcts[f].append(p.get(f, nan))
        row = {"proxy.consensus.final": _nanmean(consensus),
               "proxy.final": _nanmean(ranked if rank else weighted),
               "proxy.plausible.final": _nanmean(plausible)}
        if details:
            row["proxy.weighted.final"] = _nanmean(weighted)
            row["proxy.rank.final"] = _nanmean(ranked)
            row.update({f"proxy.{f}.pct.final": _nanmean(v) for f, v in pcts.items() if v})
        objective = objectives.get(stage, "")
        if objective == "proxy":
            row["score.final"] = row["proxy.final"]
        elif objective == "proxy.consensus":
            row["score.final"] = row["proxy.consensus.final"]
        out.setdefault(stage, {})[number] = row
    return out


def _final_values(m: Mapping[str, float], spec: ScoreSpec, size_ok: bool) -> dict[str, float]:
    """One image's proxy values by name, with the pool's size check ANDed into ``plausible``."""
    values = {p.name: m.get(f"proxy.{p.name}", math.nan) for p in spec.proxies}
    ok = _finite(m.get("proxy.plausible"))
    if not size_ok:
        values["plausible"] = 0.0  # median object size absurd next to the study's other candidates
    elif ok:
        values["plausible"] = float(m["proxy.plausible"])
    else:
        values.pop("plausible", None)
    if spec.gate and spec.gate not in values:
        values[spec.gate] = m.get(f"proxy.{spec.gate}", math.nan)
    return values


def _nanmean(values: list[float]) -> float:
    arr = np.asarray(values, float)
    return float(np.nanmean(arr)) if np.isfinite(arr).any() else math.nan
