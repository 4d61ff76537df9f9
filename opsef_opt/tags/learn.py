"""Learn the analyst's taste: a model of the quality tags, fitted on the tagged runs' proxy metrics."""
from __future__ import annotations

from collections import Counter

import pandas as pd

from opsef_opt.config import ScoreSpec, Settings
from opsef_opt.tags.runs import TrialRun

__all__ = ["NeedTags", "fit_from_runs", "features_of"]


class NeedTags(RuntimeError):
    """Too few tagged runs for a stage that learns from tags; the message says how to add them."""


def features_of(runs: list[TrialRun]) -> pd.DataFrame:
    """One row of tag-model features per run (proxy metrics, object counts and sizes)."""
    from opsef_opt.score.tag_model import tag_features

    return pd.DataFrame([tag_features(r.metrics) for r in runs])


def how_to_tag(settings: Settings) -> str:
    return (f"Tag runs with `python -m opsef_opt study={settings.study.name} mode=tag`, in the MLflow UI "
            f"(run tag `quality` = correct / over / under / failed; see README), or from a CSV "
            f"(`mode=tag tags_csv=FILE`); then run the same command again.")


def fit_from_runs(runs: list[TrialRun], spec: ScoreSpec, settings: Settings, stage: str):
    """Fit the tag model on the study's tagged runs, or raise :class:`NeedTags` saying what is missing."""
    from opsef_opt.score.tag_model import NotEnoughTags, fit_tag_model

    tagged = [r for r in runs if r.tag]
    counts = Counter(r.tag for r in tagged)
    try:
        return fit_tag_model(features_of(tagged), [r.tag for r in tagged], spec.tag_values,
                             min_tagged=spec.min_tagged, seed=settings.seed)
    except NotEnoughTags as e:
        have = ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none"
        raise NeedTags(
            f"stage {stage} learns from quality tags: {len(tagged)} tagged run(s) found ({have}); at least "
            f"{spec.min_tagged}, with at least 2 different tags, are needed ({e}). {how_to_tag(settings)}"
        ) from None
