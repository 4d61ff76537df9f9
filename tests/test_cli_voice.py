"""The command line in the tool's own voice: help, "did you mean", exit codes, nothing created when refused."""
from __future__ import annotations

import io
import re
import shutil
import sqlite3
from pathlib import Path

import pytest

from conftest import TEST_CONF, run_cli

TINY = ["study=tiny", f"hydra.searchpath=[file://{TEST_CONF}]"]


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_lists_every_mode_with_an_example_and_points_to_the_readme(tmp_path, flag):
    r = run_cli(flag, cwd=tmp_path, timeout=60)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    from opsef_opt.config import MODES

    for mode in MODES:
        assert re.search(rf"^  {mode}\s+\S", out, re.M), f"mode {mode} not listed:\n{out}"
        example = "python -m opsef_opt models" if mode == "models" else (
            "python -m opsef_opt study=demo n_trials" if mode == "search" else f"study=demo mode={mode}")
        assert example in out, f"no example for {mode}:\n{out}"
    assert "README.md" in out and "exit codes" in out and "did you mean" not in out
    assert "Powered by Hydra" not in out and "== Config ==" not in out  # not Hydra's generic page
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("args", "message"), [
    (["study=dmeo"], "study=dmeo: no such study; did you mean demo?"),
    (["n_trail=5"], "n_trail=5: unknown key; did you mean n_trials?"),
    (["+n_trail=5"], "n_trail: unknown key; did you mean n_trials?"),
    (["study.n_trail=5"], "study.n_trail=5: unknown key; did you mean n_trials?"),
    (["study.imags.folder=x"], "study.imags is not a key; did you mean images?"),
    (["mode=serch"], "mode='serch': expected one of search, models, tag, apply, reimport, ui; did you mean search?"),
    ([*TINY, "study.images.pattren=*.tif"], "study.images.pattren=*.tif: unknown key; did you mean pattern?"),
    (["n_trials=[1"], "cannot read the override 'n_trials=[1'"),
])
def test_mistakes_get_did_you_mean_exit_2_and_create_nothing(tmp_path, args, message):
    r = run_cli(*args, cwd=tmp_path, timeout=120)
    assert r.returncode == 2, r.stdout + r.stderr
    line = r.stderr.strip()
    assert line.startswith("opsef-opt: config error: ") and message in line, line
    assert len(line.splitlines()) == 1, line  # one line, not Hydra's report
    assert "HYDRA_FULL_ERROR" not in r.stderr and "To append to your config use" not in r.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args", [["mode=tag"], ["mode=ui"], ["mode=apply"], ["study.images.folder=/nonexistent"],
                                  ["restart_stage=nope"]])
def test_refused_commands_create_no_folder_database_or_experiment(tmp_path, args):
    r = run_cli(*args, cwd=tmp_path, timeout=120)
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr.startswith("opsef-opt: "), r.stderr
    assert list(tmp_path.iterdir()) == [], sorted(p.name for p in tmp_path.rglob("*"))


def test_models_written_to_a_file_keep_urls_and_keys_whole(tmp_path):
    from opsef_opt.models_report import model_rows

    r = run_cli("models", cwd=tmp_path, timeout=120)  # stdout is a pipe, as when written to a file
    assert r.returncode == 0, r.stderr
    tokens = {t.rstrip(";") for row in model_rows() for key in ("reason", "params", "init_params")
              for t in row[key].split()}
    long = [t for t in tokens if len(t) > 20]  # paths, URLs, config keys: what a table would fold
    assert long, "no long words to check"
    for token in tokens:
        assert token in r.stdout, f"{token!r} broken in the models listing:\n{r.stdout}"
    assert "┃" not in r.stdout and "│" not in r.stdout


def test_progress_plain_lines_with_time_left_without_a_terminal():
    from opsef_opt.progress import Progress

    out = io.StringIO()
    with Progress(4, "apply", "tile", stream=out, every=0) as bar:
        for _ in range(4):
            bar.update(1)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("apply: 1/4 tiles (25%)") and "left" in lines[1] and "[" not in out.getvalue()
    assert lines[-1].startswith("apply: 4/4 tiles (100%)")


def test_progress_bar_with_time_left_on_a_terminal():
    from opsef_opt.progress import Progress

    out = io.StringIO()
    with Progress(3, "apply", "tile", stream=out, terminal=True) as bar:
        bar.update(1)
        bar.update(2)
    text = out.getvalue()
    assert "\r" in text and "3/3 tiles" in text and "left" in text and "|" in text


@pytest.mark.slow
def test_copied_studies_folder_works_where_it_is(tmp_path):
    """cp -r studies elsewhere: the copy's new runs write their artifacts into the copy, old ones are read there."""
    from mlflow import MlflowClient

    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    r = run_cli(*TINY, "n_trials=3", cwd=a)
    assert r.returncode == 0, r.stdout + r.stderr
    # progress lines (stdout is not a terminal): trial names and the time left, no bar
    assert re.search(r"^\[2/3\] search#\d+  score [0-9.]+.*\(about \d+s left\)$", r.stdout, re.M), r.stdout
    assert "\r" not in r.stdout + r.stderr
    shutil.copytree(a / "studies", b / "studies")
    before_a = sorted(p.name for p in (a / "studies" / "mlartifacts").iterdir())

    r = run_cli(*TINY, "n_trials=4", cwd=b)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "studies folder was copied or moved" in r.stdout + r.stderr
    client = MlflowClient(f"sqlite:///{b}/studies/mlflow.db")
    exp = client.get_experiment_by_name("tiny")
    assert exp.artifact_location == (b / "studies" / "mlartifacts").resolve().as_uri()
    runs = client.search_runs([exp.experiment_id], max_results=100)
    assert len(runs) == 5  # the stage's parent run and 4 trials
    for run in runs:  # old and new runs: their artifacts are in the copy
        assert run.info.artifact_uri.startswith(exp.artifact_location + "/"), run.info.artifact_uri
        assert Path(run.info.artifact_uri[len("file://"):]).is_dir()
    new = next(r for r in runs if r.info.run_name == "search#3")
    assert (b / "studies" / "mlartifacts" / new.info.run_id / "artifacts" / "images").is_dir()
    # the original is untouched: no new run folder, its database still points at itself
    assert sorted(p.name for p in (a / "studies" / "mlartifacts").iterdir()) == before_a
    assert new.info.run_id not in before_a and len(before_a) == 4
    con = sqlite3.connect(a / "studies" / "mlflow.db")
    assert con.execute("select artifact_location from experiments where name = 'tiny'").fetchone()[0] == \
        (a / "studies" / "mlartifacts").resolve().as_uri()
    con.close()
