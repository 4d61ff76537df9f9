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
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np

from opsef_opt.config import ScoreSpec
from opsef_opt.score import PROXIES, ImageResult
from opsef_opt.score.proxies import combine
from opsef_opt.search.pool import ConsensusPool, LabelStore

__all__ = ["final_scores", "common_final_scores"]


def final_scores(store: LabelStore, spec: ScoreSpec, objective: str, trials: list[int],
                 family_agreement: float | None = None) -> dict[int, dict[str, float]]:
    """``{trial: {"proxy.consensus.final", "proxy.final", "proxy.plausible.final", "score.final"?}}`` of one store."""
    return common_final_scores({"": store}, spec, {"": objective}, {"": trials},
                               family_agreement=family_agreement).get("", {})


def common_final_scores(stores: Mapping[str, LabelStore], spec: ScoreSpec, objectives: Mapping[str, str],
                        trials: Mapping[str, Sequence[int]],
                        pool: ConsensusPool | None = None,
                        family_agreement: float | None = None) -> dict[str, dict[int, dict[str, float]]]:
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

    # each candidate's consensus proxy (one label image and one consensus in memory at a time)
    needed: dict[str, set[str]] = {}
    for (stage, number), per_image in wanted.items():
        for name in per_image:
            key = pool.key_of(name, number, index[stage])
            if key is not None:
                needed.setdefault(name, set()).add(key)
    agreement: dict[tuple[str, str], dict[str, float]] = {}
    for name, keys in needed.items():
        for key in sorted(keys):  # each candidate once, however many stages evaluated it
            labels = pool.labels(name, key)
            agreed = pool.candidate_consensus(name, key, labels)
            got = func(ImageResult(labels, np.zeros(0, np.float32), consensus=agreed), **options)
            agreement[(name, key)] = {f"proxy.{k}": float(v) for k, v in got.items()}

    nan = math.nan
    out: dict[str, dict[int, dict[str, float]]] = {}
    for (stage, number), per_image in wanted.items():
        consensus, combined, plausible = [], [], []
        for name, m in per_image.items():
            m = dict(m)
            key = pool.key_of(name, number, index[stage])
            m.update(agreement.get((name, key), {"proxy.consensus": nan}))
            values = {p.name: m.get(f"proxy.{p.name}", nan) for p in spec.proxies}
            ok = _finite(m.get("proxy.plausible"))
            passes = float(m["proxy.plausible"]) if ok else 1.0
            if key is not None and not pool.size_ok(name, key):
                passes = 0.0  # median object size absurd next to the study's other candidates
                values["plausible"] = 0.0
            elif ok:
                values["plausible"] = passes
            plausible.append(passes)
            consensus.append(m["proxy.consensus"])
            combined.append(combine(values, spec.weights, spec.gate))
        row = {"proxy.consensus.final": _nanmean(consensus), "proxy.final": _nanmean(combined),
               "proxy.plausible.final": _nanmean(plausible)}
        objective = objectives.get(stage, "")
        if objective == "proxy":
            row["score.final"] = row["proxy.final"]
        elif objective == "proxy.consensus":
            row["score.final"] = row["proxy.consensus.final"]
        out.setdefault(stage, {})[number] = row
    return out


def _finite(v) -> bool:
    return v is not None and isinstance(v, (int, float)) and math.isfinite(float(v))


def _nanmean(values: list[float]) -> float:
    arr = np.asarray(values, float)
    return float(np.nanmean(arr)) if np.isfinite(arr).any() else math.nan
