"""Scores known only when a stage is done: consensus against every other candidate.

During the search, a trial's consensus proxy compares it with the candidates
evaluated before it (the pool grows as the stage runs). Once the stage is
done, every candidate is compared with all the others, and the combined proxy
is recomputed; these ``.final`` values are logged to each run and used to
rank the leaderboard when the objective is a proxy. Optuna's own trial
values stay what the sampler saw.
"""
from __future__ import annotations

import math

import numpy as np

from opsef_opt.config import ScoreSpec
from opsef_opt.score import PROXIES, ImageResult
from opsef_opt.score.proxies import combine
from opsef_opt.search.pool import ConsensusPool, LabelStore

__all__ = ["final_scores"]


def final_scores(store: LabelStore, spec: ScoreSpec, objective: str, trials: list[int]) -> dict[int, dict[str, float]]:
    """``{trial: {"proxy.consensus.final", "proxy.final", "score.final"?}}`` for the stored trials."""
    if "consensus" not in PROXIES or not trials:
        return {}
    pool = ConsensusPool(store, spec)
    pool.refresh()
    options = spec.options("consensus")
    stored = set(store.trials())
    out: dict[int, dict[str, float]] = {}
    for number in trials:
        if number not in stored:
            continue
        labels, metrics = store.load(number), store.load_metrics(number)
        consensus, combined = [], []
        for name, lab in labels.items():
            m = dict(metrics.get(name, {}))
            agreed = pool.consensus(name, trial=number)
            got = PROXIES.get("consensus").func(ImageResult(lab, np.zeros(0, np.float32), consensus=agreed), **options)
            m.update({f"proxy.{k}": v for k, v in got.items()})
            values = {p.name: m.get(f"proxy.{p.name}", math.nan) for p in spec.proxies}
            consensus.append(m["proxy.consensus"])
            combined.append(combine(values, spec.weights, spec.gate))
        row = {"proxy.consensus.final": _nanmean(consensus), "proxy.final": _nanmean(combined)}
        if objective == "proxy":
            row["score.final"] = row["proxy.final"]
        elif objective == "proxy.consensus":
            row["score.final"] = row["proxy.consensus.final"]
        out[number] = row
    return out


def _nanmean(values: list[float]) -> float:
    arr = np.asarray(values, float)
    return float(np.nanmean(arr)) if np.isfinite(arr).any() else math.nan
