"""Several worker processes on one machine share a stage through its storage."""
from __future__ import annotations

import collections
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient

from conftest import TEST_CONF, run_cli

pytestmark = pytest.mark.slow


def test_two_workers_evaluate_every_grid_point_once(tmp_path):
    r = run_cli("study=tiny", f"hydra.searchpath=[file://{TEST_CONF}]", "+study.reshape.tile={size: [96, 96]}",
                "study.search.models.classical.params.min_distance=[1,2,3,5,8,12]", "n_trials=12", "n_workers=2",
                cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    study = optuna.load_study(study_name="tiny/search", storage=f"sqlite:///{tmp_path}/studies/tiny/optuna.db")
    trials = study.get_trials()
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 12
    points = collections.Counter(tuple(sorted(t.params.items())) for t in complete)
    assert len(points) == 12 and max(points.values()) == 1  # every grid point once: none lost, none twice
    # anything else is a trial that found the budget spent and gave its slot back
    assert all(t.user_attrs.get("over_budget") for t in trials if t.state != optuna.trial.TrialState.COMPLETE)
    workers = {t.user_attrs["worker"] for t in complete}
    assert len(workers) == 2, workers
    client = MlflowClient(f"sqlite:///{tmp_path}/studies/mlflow.db")
    exp = client.get_experiment_by_name("tiny")
    runs = client.search_runs([exp.experiment_id], "tags.`opsef.status` = 'complete'", max_results=100)
    assert sorted(int(x.data.tags["optuna.trial"]) for x in runs if "optuna.trial" in x.data.tags) == \
        sorted(t.number for t in complete)
    assert "[worker 1]" in r.stdout


def _claim_all(url: str, out: str) -> None:
    from opsef_opt.search.storage import _claim

    study = optuna.load_study(study_name="race", storage=url)
    won = [t._trial_id for t in study.get_trials(deepcopy=False) if _claim(study._storage, t._trial_id)]
    Path(out).write_text(",".join(map(str, won)))


def test_two_processes_never_claim_the_same_queued_trial(tmp_path):
    """Each queued trial goes to exactly one process (Optuna's read-then-write claim could give it to two)."""
    import multiprocessing

    url = f"sqlite:///{tmp_path}/race.db"
    study = optuna.create_study(study_name="race", storage=url)
    for i in range(60):
        study.enqueue_trial({"x": float(i)})
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_claim_all, args=(url, str(tmp_path / f"won{i}.txt"))) for i in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    won = [[int(x) for x in (tmp_path / f"won{i}.txt").read_text().split(",") if x] for i in range(2)]
    assert sorted(won[0] + won[1]) == sorted(t._trial_id for t in study.get_trials(deepcopy=False))
    assert {t.state for t in study.get_trials(deepcopy=False)} == {optuna.trial.TrialState.RUNNING}
