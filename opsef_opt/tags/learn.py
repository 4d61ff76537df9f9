"""Learn the analyst's taste: a model of the quality tags and comparisons, fitted on the judged runs' proxy metrics."""
from __future__ import annotations

from collections import Counter

import pandas as pd

from opsef_opt.config import ScoreSpec, Settings
from opsef_opt.tags.runs import TrialRun, comparisons_of

__all__ = ["NeedTags", "fit_from_runs", "features_of", "judgements_of"]


class NeedTags(RuntimeError):
    """Too few tagged runs for a stage that learns from tags; the message says how to add them."""


def features_of(runs: list[TrialRun]) -> pd.DataFrame:
    """One row of tag-model features per run (proxy metrics, object counts and sizes)."""
    from opsef_opt.score.tag_model import tag_features

    return pd.DataFrame([tag_features(r.metrics) for r in runs])


def judgements_of(runs: list[TrialRun]) -> tuple[list[str | None], list[tuple[int, int, float]]]:
    """(tag of each run or None, comparisons as ``(row a, row b, outcome)`` rows of ``runs``)."""
    pos = {r.run_id: i for i, r in enumerate(runs)}
    return [r.tag for r in runs], [(pos[a], pos[b], y) for a, b, y in comparisons_of(runs)]


def how_to_tag(settings: Settings) -> str:
    return (f"Tag runs with `python -m opsef_opt study={settings.study.name} mode=tag`, in the MLflow UI "
            f"(run tag `quality` = correct / over / under / failed; see README), or from a CSV "
            f"(`mode=tag tags_csv=FILE`); then run the same command again.")


def fit_from_runs(runs: list[TrialRun], spec: ScoreSpec, settings: Settings, stage: str):
    """Fit the tag model on the study's tagged and compared runs, or raise :class:`NeedTags` saying what
    is missing.

    The model is checked against the proxy by cross-validation on the judged runs
    (``check_proxy=True``): when it does not order the analyst's judgements better than the proxy,
    its ``predict_value`` (what the ``tags`` / ``tag_model`` objectives maximise) is the proxy, and
    ``describe()`` says so.
    """
    from opsef_opt.score.tag_model import MIN_PAIRS, NotEnoughTags, fit_tag_model

    tags, pairs = judgements_of(runs)
    counts = Counter(t for t in tags if t)
    n_tagged = sum(counts.values())
    try:
        return fit_tag_model(features_of(runs), tags, spec.tag_values, min_tagged=spec.min_tagged,
                             seed=settings.seed, comparisons=pairs, check_proxy=True)
    except NotEnoughTags as e:
        have = ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none"
        raise NeedTags(
            f"stage {stage} learns from quality tags: {n_tagged} tagged run(s) found ({have}) and "
            f"{len(pairs)} comparison(s); at least {spec.min_tagged}, with at least 2 different tags, or at least "
            f"{MIN_PAIRS} comparisons are needed ({e}). {how_to_tag(settings)}"
        ) from None
