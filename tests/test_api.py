"""The public Python API: a study run from Python writes what the CLI writes and gives back the answer."""
from __future__ import annotations

import importlib

import numpy as np
import pandas as pd
import pytest
import tifffile
from mlflow import MlflowClient

import opsef_opt
from opsef_opt.config import ConfigError

from conftest import DEMO, TEST_CONF


def test_public_names_and_version():
    assert opsef_opt.__version__.count(".") >= 2
    assert {"run_study", "load_pipeline", "apply", "Pipeline", "StudyResult"} <= set(dir(opsef_opt))
    importlib.import_module("opsef_opt.batch.run")  # the apply mode's package: no name clash with the function

    assert callable(opsef_opt.apply) and opsef_opt.apply.__module__ == "opsef_opt.api"
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        opsef_opt.nope  # noqa: B018


def test_a_bad_key_or_study_is_a_config_error_and_creates_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="n_trail"):
        opsef_opt.run_study("demo", n_trail=5)
    with pytest.raises(ConfigError, match="dmeo"):
        opsef_opt.run_study("dmeo")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_run_study_writes_the_cli_files_and_returns_the_best_pipeline(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = opsef_opt.run_study("tiny", config_dir=TEST_CONF, studies_dir=tmp_path / "studies")
    assert result.folder == tmp_path / "studies" / "tiny"
    csv = pd.read_csv(result.folder / "leaderboard.csv")
    assert len(csv) == len(result.leaderboard) == 6
    assert list(csv["pipeline"]) == list(result.leaderboard["pipeline"])
    assert result.best.label == csv.loc[0, "pipeline"]
    assert result.best == opsef_opt.load_pipeline(result.folder / "best.yaml")

    # the returned pipeline, called on an array, gives the labels the best trial was scored on
    run = MlflowClient(result.mlflow_uri).get_run(csv.loc[0, "mlflow_run_id"])
    image = tifffile.imread(DEMO / "images" / "dsb2018_256.tif")
    labels = result.best(image)
    assert labels.max() == run.data.metrics["dsb2018_256/n_objects"]
    by_name = opsef_opt.apply(result.best, DEMO / "images", progress=False)
    assert sorted(by_name) == ["dsb2018_256", "mitocheck_hela"]
    np.testing.assert_array_equal(by_name["dsb2018_256"], labels)

    # the same call again continues the same study: nothing is evaluated twice
    again = opsef_opt.run_study("tiny", config_dir=TEST_CONF, studies_dir=tmp_path / "studies")
    assert len(again.leaderboard) == 6
    assert list(again.leaderboard["pipeline"]) == list(result.leaderboard["pipeline"])


@pytest.mark.slow
def test_a_study_folder_deleted_and_run_again_in_the_same_process_is_recorded_afresh(tmp_path, monkeypatch):
    """A notebook: run, delete ``studies/``, run again. The second run's store is a new file; every trial of it
    is recorded there (by the recording process too), none written through a connection to the deleted file."""
    import shutil

    monkeypatch.chdir(tmp_path)
    def complete_runs(result):
        client = MlflowClient(result.mlflow_uri)
        exp = client.get_experiment_by_name("tiny")
        runs = client.search_runs([exp.experiment_id], "tags.`opsef.status` = 'complete'", max_results=100)
        return client, [r for r in runs if "mlflow.parentRunId" in r.data.tags]  # trials, not the stage

    first = opsef_opt.run_study("tiny", config_dir=TEST_CONF, studies_dir=tmp_path / "studies")
    n_first = len(complete_runs(first)[1])
    shutil.rmtree(tmp_path / "studies")
    second = opsef_opt.run_study("tiny", config_dir=TEST_CONF, studies_dir=tmp_path / "studies")
    assert list(second.leaderboard["pipeline"]) == list(first.leaderboard["pipeline"])
    client, runs = complete_runs(second)
    assert len(runs) == n_first >= 6 and all(r.info.status == "FINISHED" for r in runs)
    for r in runs:  # the artifacts of each trial (written by the recording process) are in the new folder
        files = {f.path for f in client.list_artifacts(r.info.run_id, "images/dsb2018_256")}
        assert "images/dsb2018_256/overlay.png" in files
