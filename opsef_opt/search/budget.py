"""What counts against a stage's trial budget, shared by every worker process.

The budget is checked before and after every trial, by every worker, so
the count must be cheap: on RDB storage it is one SQL ``COUNT`` over the
trials table (:func:`budget_counts`). Reading the trials through Optuna
would re-read every unfinished trial with its parameters and attributes,
and a grid stage keeps all its queued points unfinished until their turn
(tens of milliseconds per read on SQLite). :func:`count_trials` is the same
rule on trials already in memory, and the fallback for other storages.
"""
from __future__ import annotations

import json

import optuna
from optuna.trial import TrialState

from opsef_opt.search import attrs as A

__all__ = ["count_trials", "budget_counts", "over_budget"]


def count_trials(trials: list[optuna.trial.FrozenTrial]) -> tuple[int, int]:
    """(trials that count against the budget, trials running now)."""
    done = running = 0
    for t in trials:
        if t.user_attrs.get(A.VALUE_SOURCE) == "tag" or t.user_attrs.get(A.OVER_BUDGET):
            continue  # seeded from the analyst's tags / started by a worker after the budget was spent
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED) or (
            t.state == TrialState.FAIL and A.ERROR in t.user_attrs
        ):
            done += 1
        elif t.state == TrialState.RUNNING:
            running += 1
    return done, running


def budget_counts(study: optuna.Study, before: int | None = None) -> tuple[int, int]:
    """:func:`count_trials` of the study's trials (numbered below ``before``, if given), counted in the database."""
    engine = getattr(getattr(study._storage, "_backend", study._storage), "engine", None)
    if engine is None:
        trials = study.get_trials(deepcopy=False)
        return count_trials([t for t in trials if before is None or t.number < before])
    import sqlalchemy as sa
    from optuna.storages._rdb.models import TrialModel, TrialUserAttributeModel as Attr

    skipped = sa.select(Attr.trial_id).where(sa.or_(
        sa.and_(Attr.key == A.VALUE_SOURCE, Attr.value_json == json.dumps("tag")),
        sa.and_(Attr.key == A.OVER_BUDGET, Attr.value_json == json.dumps(True))))
    errored = sa.select(Attr.trial_id).where(Attr.key == A.ERROR)
    query = (sa.select(TrialModel.state, sa.func.count())
             .where(TrialModel.study_id == study._study_id, TrialModel.trial_id.not_in(skipped),
                    sa.or_(TrialModel.state.in_([TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING]),
                           sa.and_(TrialModel.state == TrialState.FAIL, TrialModel.trial_id.in_(errored))))
             .group_by(TrialModel.state))
    if before is not None:
        query = query.where(TrialModel.number < before)
    with engine.connect() as con:
        counts = dict(con.execute(query).all())
    running = counts.pop(TrialState.RUNNING, 0)
    return sum(counts.values()), running


def over_budget(trial: optuna.Trial, budget: int) -> bool:
    """True when the trials created before this one already fill the budget.

    Several workers check the budget and then create a trial; two of them
    can pass the check at once. The trial that comes second in the storage's
    order sees this and gives its slot back instead of being evaluated.
    """
    done, running = budget_counts(trial.study, before=trial.number)
    return done + running >= budget
