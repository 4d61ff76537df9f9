"""The leaderboard a user reads: trial names, ground-truth columns, whole pipelines, near-ties."""
from __future__ import annotations

import optuna
import pandas as pd
import pytest

from opsef_opt.search.leaderboard import NEAR_TIE, combined_leaderboard, leaderboard, print_leaderboard

LONG = ("normalize(p_low=1, p_high=99.8) | background=tophat(radius=15) | filter=gaussian(sigma=1.5) | "
        "classical(min_distance=7, threshold=otsu, footprint=5, compactness=0.01, exclude_border=false)")


def _study(name: str, scores: list[float], gt: bool = True) -> optuna.Study:
    """A stage whose trials carry the summary run_trial stores (pipeline, objects, GT metrics)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=name, direction="maximize")
    for i, value in enumerate(scores):
        summary = {"pipeline": f"{LONG} #{i}", "model": "classical", "n_objects_mean": 10.0 + i}
        if gt:
            summary.update({"gt.f1": 0.5 + i / 100, "gt.ap": 0.3 + i / 100, "gt.pooled.f1": 0.6})
        study.add_trial(optuna.trial.create_trial(
            value=value, params={}, distributions={},
            user_attrs={"summary": summary, "mlflow_run_id": f"run{i}"}))
    return study


def test_csv_has_trial_names_gt_columns_and_whole_pipelines(tmp_path):
    boards = {"coarse": leaderboard(_study("demo/coarse", [0.6, 0.8, 0.7]), {"run1": "correct"}),
              "fine": leaderboard(_study("demo/fine", [0.9], gt=False))}
    path = tmp_path / "leaderboard.csv"
    combined_leaderboard(boards).to_csv(path, index=False)
    board = pd.read_csv(path, keep_default_na=False)
    assert list(board["trial"]) == ["coarse#1", "coarse#2", "coarse#0", "fine#0"]
    assert list(board["number"]) == [1, 2, 0, 0]
    # the GT columns come right after the scores, headline metrics first
    cols = list(board.columns)
    assert cols[cols.index("near_tie") + 1:cols.index("near_tie") + 4] == ["gt.f1", "gt.ap", "gt.pooled.f1"]
    assert float(board.loc[0, "gt.f1"]) == pytest.approx(0.51) and board.loc[3, "gt.f1"] == ""  # fine: no labels
    assert list(board["pipeline"]) == [f"{LONG} #1", f"{LONG} #2", f"{LONG} #0", f"{LONG} #0"]
    assert len(board.loc[0, "pipeline"]) > 150 and board.loc[0, "tag"] == "correct"


def test_near_ties_are_marked_by_group():
    board = leaderboard(_study("demo/coarse", [0.6645, 0.6644, 0.70, 0.5, 0.697, 0.6600]))
    ties = dict(zip(board["trial"], board["near_tie"]))
    # 0.70 and 0.697 (3e-3 apart) tie; 0.6645, 0.6644 and 0.6600 form the next group; 0.5 stands alone
    assert ties == {"coarse#2": "coarse#2", "coarse#4": "coarse#2", "coarse#0": "coarse#0",
                    "coarse#1": "coarse#0", "coarse#5": "coarse#0", "coarse#3": ""}
    # a group is measured from its best trial, not chained: 0.70, 0.696, 0.692 -> two groups
    board = leaderboard(_study("demo/s", [0.70, 0.696, 0.692]))
    assert list(board["near_tie"]) == ["s#0", "s#0", ""]
    assert NEAR_TIE == 0.005
    assert (leaderboard(_study("demo/s", [0.7, 0.6]))["near_tie"] == "").all()


def test_printed_table_names_trials_shows_gt_and_ties(capsys, tmp_path):
    board = leaderboard(_study("demo/coarse", [0.6645, 0.6644, 0.5]))
    print_leaderboard(board, 10, tmp_path / "leaderboard.csv", "study demo/coarse")
    out = capsys.readouterr().out
    assert "coarse#0" in out and "coarse#1" in out and "GT F1" in out and "GT AP" in out
    assert "0.5100" in out  # coarse#1's GT F1
    assert "≈ #1" in out and "within 0.005" in out
    # the pipeline is wrapped, never cut: its last step is printed
    flat = "".join(ch for ch in out if ch not in " \n│")
    assert "compactness=0.01,exclude_border=false)#0" in flat
    assert "…" not in out
