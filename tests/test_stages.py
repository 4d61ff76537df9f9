"""Staged search through the real CLI: coarse grid -> TPE around its top-k -> top-k on all images."""
from __future__ import annotations

import os
import signal
import sqlite3
import time

import optuna
import pandas as pd
import pytest

from opsef_opt.search.derive import ranked_trials

from conftest import TEST_CONF, popen_cli, run_cli

pytestmark = pytest.mark.slow

STAGED = ["study=staged", f"hydra.searchpath=[file://{TEST_CONF}]"]


def _stage(tmp, name):
    return optuna.load_study(study_name=f"staged/{name}", storage=f"sqlite:///{tmp}/studies/staged/optuna.db")


def test_top_k_of_coarse_define_and_seed_fine_and_confirm_runs_them_on_all_images(tmp_path):
    r = run_cli(*STAGED, "stage=fine", cwd=tmp_path)
    assert r.returncode == 2 and "run it first (stage=coarse)" in r.stderr, r.stdout + r.stderr
    r = run_cli(*STAGED, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    coarse, fine, confirm = (_stage(tmp_path, s) for s in ("coarse", "fine", "confirm"))
    assert len(coarse.get_trials()) == 12 and len(fine.get_trials()) == 5 and len(confirm.get_trials()) == 2

    top3 = [t.number for t in ranked_trials(coarse)[:3]]
    assert fine.user_attrs["derived_from"] == top3
    by_number = {t.number: t for t in coarse.get_trials()}
    fine_trials = sorted(fine.get_trials(), key=lambda t: t.number)
    # the top 3 coarse pipelines are evaluated first, and score the same (same image, same pipeline)
    for source, t in zip(top3, fine_trials[:3]):
        src = by_number[source]
        assert t.user_attrs["summary"]["pipeline"] == src.user_attrs["summary"]["pipeline"]
        assert t.value == pytest.approx(src.value)
        assert t.user_attrs["summary"]["segment_reused"] == 1  # its labels come from coarse: no model run
    # the refined space: only models/thresholds of the top 3, min_distance a range around their values
    dists = fine_trials[-1].distributions
    assert isinstance(dists["classical.min_distance"], optuna.distributions.IntDistribution)
    used = {by_number[n].params["classical.min_distance"] for n in top3}
    assert dists["classical.min_distance"].low <= min(used) and dists["classical.min_distance"].high >= max(used)
    thresholds = {by_number[n].params["classical.threshold"] for n in top3}
    assert all(t.params.get("classical.threshold", next(iter(thresholds))) in thresholds for t in fine_trials)

    # confirm: the best 2 of fine, again, on every image (the training image plus mitocheck)
    top2 = [t.number for t in ranked_trials(fine)[:2]]
    assert confirm.user_attrs["derived_from"] == top2
    fine_by_number = {t.number: t for t in fine.get_trials()}
    got = [t.user_attrs["summary"]["pipeline"] for t in sorted(confirm.get_trials(), key=lambda t: t.number)]
    assert got == [fine_by_number[n].user_attrs["summary"]["pipeline"] for n in top2]
    # the training image's labels are reused, mitocheck is segmented
    assert [t.user_attrs["summary"]["segment_reused"] for t in confirm.get_trials()] == [1, 1]
    assert "stage staged/confirm: 2 images/items" in r.stdout + r.stderr
    assert "stage staged/fine: 1 images/items" in r.stdout + r.stderr
    assert (tmp_path / "studies" / "staged" / "best_confirm.yaml").is_file()
    for t in confirm.get_trials():  # each confirm trial knows its fine trial and the score it had there
        source = fine_by_number[int(t.user_attrs["source_trial"].split("#")[1])]
        assert t.user_attrs["source_score"] == pytest.approx(source.value)

    # re-running the finished study adds nothing
    r = run_cli(*STAGED, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert [len(_stage(tmp_path, s).get_trials()) for s in ("coarse", "fine", "confirm")] == [12, 5, 2]

    # restart_stage redoes one stage from scratch
    first = {t.number: t.datetime_start for t in _stage(tmp_path, "confirm").get_trials()}
    r = run_cli(*STAGED, "stage=confirm", "restart_stage=confirm", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    again = _stage(tmp_path, "confirm")
    assert len(again.get_trials()) == 2 and again.user_attrs["derived_from"] == top2
    assert all(t.datetime_start > max(first.values()) for t in again.get_trials())
    # one leaderboard for all stages, also when this command ran only one of them
    board = pd.read_csv(tmp_path / "studies" / "staged" / "leaderboard.csv")
    assert board.groupby("stage").size().to_dict() == {"coarse": 12, "fine": 5, "confirm": 2}
    assert list(dict.fromkeys(board["stage"])) == ["coarse", "fine", "confirm"]
    best_fine = board[board["stage"] == "fine"].iloc[0]
    assert best_fine["stage_rank"] == 1 and best_fine["number"] == top2[0] and best_fine["trial"] == f"fine#{top2[0]}"


def _fine_states(db) -> tuple[int, int]:
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)
        rows = con.execute("select t.state from trials t join studies s on t.study_id = s.study_id "
                           "where s.study_name = 'staged/fine'").fetchall()
        con.close()
    except sqlite3.Error:
        return 0, 0
    states = [r[0] for r in rows]
    return states.count("RUNNING"), states.count("COMPLETE")


def test_kill_during_fine_then_resume_keeps_its_space_and_budget(tmp_path):
    args = [*STAGED, "heartbeat.interval=1", "heartbeat.grace=2"]
    r = run_cli(*args, "stage=coarse", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    proc = popen_cli(*args, "stage=fine", cwd=tmp_path)
    db = tmp_path / "studies" / "staged" / "optuna.db"
    deadline = time.time() + 120
    while time.time() < deadline:
        running, complete = _fine_states(db)
        if complete >= 2 and running == 1:
            os.kill(proc.pid, signal.SIGKILL)
            break
        if proc.poll() is not None:
            pytest.fail("fine finished before it could be killed:\n" + proc.stdout.read())
        time.sleep(0.005)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    derived = _stage(tmp_path, "fine").user_attrs["derived_from"]

    r = run_cli(*args, "stage=fine", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    fine = _stage(tmp_path, "fine")
    assert fine.user_attrs["derived_from"] == derived
    states = [t.state for t in fine.get_trials()]
    assert states.count(optuna.trial.TrialState.COMPLETE) == 5 and states.count(optuna.trial.TrialState.FAIL) == 1
    handed_over = [t.user_attrs["source_trial"] for t in fine.get_trials()
                   if t.state == optuna.trial.TrialState.COMPLETE and "source_trial" in t.user_attrs]
    assert sorted(handed_over) == sorted(f"coarse#{n}" for n in derived)  # each top-k pipeline once
