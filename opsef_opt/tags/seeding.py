"""Hand the analyst's tags to the optimiser.

Optuna cannot change the value of a finished trial, so tags do not edit the
trials they were given on. Instead, a stage whose objective is ``tags`` is
seeded with every tagged pipeline as a *new completed trial* whose value is
the tag's value (``optuna.trial.create_trial`` + ``study.add_trial``), with
``value_source = "tag"``. The sampler then learns from the analyst's
judgement like from any other evaluation. Each (run, tag) pair is added once;
re-tagging a run adds its new value on the next run of the stage. Seeded
trials do not count against the stage's trial budget.
"""
from __future__ import annotations

import logging
from typing import Mapping

import optuna

from opsef_opt.tags.runs import TrialRun
from opsef_opt.search import attrs as A

__all__ = ["seed_tagged"]

log = logging.getLogger("opsef_opt")


def seed_tagged(study: optuna.Study, runs: list[TrialRun], values: Mapping[str, float]) -> int:
    """Add each tagged run not yet added as a completed trial; return how many were added."""
    done = {tuple(x) for x in study.user_attrs.get(A.SEEDED, [])}
    sources: dict[str, optuna.Study] = {}
    added = 0
    for run in runs:
        if run.tag is None or (run.run_id, run.tag) in done:
            continue
        if run.study not in sources:
            try:
                sources[run.study] = optuna.load_study(study_name=run.study, storage=study._storage)
            except KeyError:
                log.warning("tagged run %s: its study %s is not in this storage; not used", run.run_id, run.study)
                continue
        try:
            src = _trial(sources[run.study], run.trial)
            study.add_trial(optuna.trial.create_trial(
                params=src.params, distributions=src.distributions, value=float(values[run.tag]),
                user_attrs={A.VALUE_SOURCE: "tag", A.TAG: run.tag, A.MLFLOW_RUN_ID: run.run_id,
                            A.SEEDED_FROM: f"{run.study}#{run.trial}", A.SUMMARY: src.user_attrs.get(A.SUMMARY, {})},
            ))
        except (ValueError, KeyError, IndexError) as e:
            log.warning("tagged run %s (%s trial %d) does not fit this stage's search space: %s",
                        run.run_id, run.study, run.trial, e)
            continue
        done.add((run.run_id, run.tag))
        added += 1
    study.set_user_attr(A.SEEDED, sorted(done))
    return added


def _trial(study: optuna.Study, number: int) -> optuna.trial.FrozenTrial:
    for t in study.get_trials(deepcopy=False):
        if t.number == number:
            return t
    raise KeyError(f"trial {number} not found in {study.study_name}")
