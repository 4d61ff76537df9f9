"""What counts against a stage's trial budget, shared by every worker process."""
from __future__ import annotations

import optuna
from optuna.trial import TrialState

from opsef_opt.search import attrs as A

__all__ = ["count_trials", "over_budget"]


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


def over_budget(trial: optuna.Trial, budget: int) -> bool:
    """True when the trials created before this one already fill the budget.

    Several workers check the budget and then create a trial; two of them
    can pass the check at once. The trial that comes second in the storage's
    order sees this and gives its slot back instead of being evaluated.
    """
    before = [t for t in trial.study.get_trials(deepcopy=False) if t.number < trial.number]
    done, running = count_trials(before)
    return done + running >= budget
