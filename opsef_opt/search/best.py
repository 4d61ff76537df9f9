"""The best pipeline of a stage as a standalone YAML file, and reading it back.

``studies/<study>/best.yaml`` (and ``best_<stage>.yaml``) hold everything
needed to run the chosen pipeline again without the study: reshaping,
preprocessing steps with their parameters, the model family, how to load it
and its call parameters, plus where it came from (study, stage, trial, score,
MLflow run), its ground-truth metrics when the images have labels
(``source.gt``) and the trials that scored within
:data:`~opsef_opt.search.leaderboard.NEAR_TIE` of it (``source.near_ties``,
with a comment line: the pick is then no better than those). The apply mode
reads it; users can edit it.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import optuna
import yaml

from opsef_opt.config import ReshapeSpec, SearchSpec
from opsef_opt.search.leaderboard import NEAR_TIE, gt_columns, leaderboard
from opsef_opt.search.space import Pipeline, pipeline_from_params
from opsef_opt.track.names import trial_name
from opsef_opt.search import attrs as A

__all__ = ["best_trial", "pipeline_config", "write_best", "load_pipeline"]


def best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    """The evaluated trial with the best final score (``score.final`` when the stage has one)."""
    from opsef_opt.search.derive import ranked_trials

    return next((t for t in ranked_trials(study) if t.user_attrs.get(A.VALUE_SOURCE) != "tag"), None)


def pipeline_config(pipeline: Pipeline, reshape: ReshapeSpec, provenance: dict[str, Any]) -> dict[str, Any]:
    """A plain mapping (YAML-ready) describing one pipeline and where it came from."""
    return dataclasses.replace(pipeline, reshape=reshape).to_dict(provenance)  # numpy values made plain there


def write_best(study: optuna.Study, space: SearchSpec, reshape: ReshapeSpec, folder: Path,
               stage: str) -> Path | None:
    """Write ``best_<stage>.yaml`` and ``best.yaml`` (the latest stage's choice); None if nothing completed."""
    t = best_trial(study)
    if t is None:
        return None
    pipeline = pipeline_from_params(space, t.params)
    final = study.user_attrs.get(A.FINAL_SCORES, {}).get(str(t.number))
    name = trial_name(stage, t.number)
    summary = t.user_attrs.get(A.SUMMARY, {})
    gt = {k[3:]: summary[k] for k in gt_columns(summary) if not k.startswith("gt.pooled.")}
    ties = _near_ties(study, name)
    provenance = {"study": study.study_name, "stage": stage, "trial": name, "number": t.number, "score": t.value,
                  "score_final": final, **({"gt": gt} if gt else {}), **({"near_ties": ties} if ties else {}),
                  "mlflow_run_id": t.user_attrs.get(A.MLFLOW_RUN_ID, "")}
    note = ""
    if ties:
        note = (f"# Near-tie: {', '.join(ties)} scored within {NEAR_TIE} of {name} (noise); compare them on\n"
                f"# contact_sheets/{stage}.png before trusting this pick (see source.near_ties).\n")
    text = ("# The best pipeline of " + study.study_name + f" ({name}), written by opsef-opt.\n"
            "# Reload with opsef_opt.search.best.load_pipeline(path); edit freely.\n" + note
            + yaml.safe_dump(pipeline_config(pipeline, reshape, provenance), sort_keys=False))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"best_{stage}.yaml"
    path.write_text(text)
    (folder / "best.yaml").write_text(text)
    return path


def _near_ties(study: optuna.Study, name: str) -> list[str]:
    """Names of the trials in ``name``'s near-tie group (see :mod:`opsef_opt.search.leaderboard`), itself excluded."""
    board = leaderboard(study)
    if board.empty:
        return []
    leader = board.loc[board["trial"] == name, "near_tie"]
    if leader.empty or not leader.iloc[0]:
        return []
    return [n for n in board.loc[board["near_tie"] == leader.iloc[0], "trial"] if n != name]


def load_pipeline(path: Path) -> tuple[Pipeline, ReshapeSpec]:
    """Read a file written by :func:`write_best` back: the pipeline and its reshaping (also ``pipeline.reshape``)."""
    pipeline = Pipeline.from_yaml(path)
    return pipeline, pipeline.reshape
