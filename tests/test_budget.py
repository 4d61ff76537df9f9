"""The budget count in SQL equals the rule on trials in memory (every kind of trial that does or does not count)."""
from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState

from opsef_opt.search import attrs as A
from opsef_opt.search.budget import budget_counts, count_trials, over_budget


def _study(tmp_path) -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'optuna.db'}")
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize")

    def add(state, value=None, **attrs):
        study.add_trial(optuna.trial.create_trial(state=state, value=value, user_attrs=attrs, params={},
                                                  distributions={}))

    add(TrialState.COMPLETE, 0.5)
    add(TrialState.COMPLETE, 0.7, **{A.VALUE_SOURCE: "tag"})        # seeded from a tag: not counted
    add(TrialState.COMPLETE, 0.4, **{A.VALUE_SOURCE: "proxy"})      # counted
    add(TrialState.PRUNED)
    add(TrialState.FAIL, **{A.ERROR: "ValueError: x"})               # a broken pipeline: counted
    add(TrialState.FAIL, **{A.INTERRUPTED: True})                    # interrupted: retried, not counted
    add(TrialState.FAIL, **{A.OVER_BUDGET: True, A.ERROR: "budget"})  # handed back: not counted
    add(TrialState.FAIL, **{A.OVER_BUDGET: False, A.ERROR: "e"})     # counted
    study.ask().set_user_attr(A.WORKER, "h:1")                        # running
    study.ask().set_user_attr(A.OVER_BUDGET, True)                    # running but handed back
    study.enqueue_trial({})                                           # waiting: not counted
    return study


def test_sql_count_equals_the_rule_on_trials(tmp_path):
    study = _study(tmp_path)
    trials = study.get_trials(deepcopy=False)
    assert budget_counts(study) == count_trials(trials) == (5, 1)
    for n in range(len(trials) + 1):
        expected = count_trials([t for t in trials if t.number < n])
        assert budget_counts(study, before=n) == expected, n


@pytest.mark.parametrize("budget, expected", [(5, True), (6, True), (7, False)])
def test_a_trial_is_over_budget_when_those_before_it_fill_the_budget(tmp_path, budget, expected):
    study = _study(tmp_path)
    trial = study.ask()  # takes the queued one; before it: 5 counted, 1 running, 1 handed back
    assert over_budget(trial, budget) is expected
