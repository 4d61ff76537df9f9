"""Pruning through the real CLI: bad pipelines stop part-way, and are recorded as pruned."""
from __future__ import annotations

import optuna
import pandas as pd
import pytest
from mlflow import MlflowClient

from conftest import TEST_CONF, run_cli

pytestmark = pytest.mark.slow


def test_median_pruner_stops_bad_pipelines_and_records_them_honestly(tmp_path):
    r = run_cli("study=tiny", f"hydra.searchpath=[file://{TEST_CONF}]", "+study.reshape.tile={size: [96, 96]}",
                "+study.stages={search: {pruner: median}}",
                "study.search.models.classical.params.min_distance=[1,2,3,5,8,12]", "n_trials=12", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    study = optuna.load_study(study_name="tiny/search", storage=f"sqlite:///{tmp_path}/studies/tiny/optuna.db")
    trials = study.get_trials()
    pruned = [t for t in trials if t.state == optuna.trial.TrialState.PRUNED]
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(trials) == 12 and pruned and len(complete) >= 5  # the budget counts pruned trials
    n_items = 21  # 96x96 tiles of the two demo images
    for t in pruned:
        steps = sorted(t.intermediate_values)
        assert steps and max(steps) >= n_items // 4 and max(steps) < n_items - 1
    # watershed seeds 1 px apart shatter nuclei: those pipelines should be among the pruned
    assert any(t.params["classical.min_distance"] == 1 for t in pruned)
    client = MlflowClient(f"sqlite:///{tmp_path}/studies/mlflow.db")
    for t in pruned:
        run = client.get_run(t.user_attrs["mlflow_run_id"])
        assert run.data.tags["opsef.status"] == "pruned" and "pruned after" in run.data.tags["opsef.pruned"]
        assert run.data.metrics["pruned_after_images"] == len(t.intermediate_values)
    stored = {int(p.stem.split("-")[1]) for p in (tmp_path / "studies/tiny/labels/search").glob("trial-*.npz")}
    assert stored == {t.number for t in complete}
    board = pd.read_csv(tmp_path / "studies" / "tiny" / "leaderboard.csv")
    assert (board["state"] == "PRUNED").sum() == len(pruned)
    assert "pruned" in r.stdout + r.stderr
