"""The best pipeline file and the stage's plots: written, logged, and runnable on their own."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import tifffile
import yaml
from mlflow import MlflowClient
from PIL import Image as PILImage

from opsef_opt.config import ConfigError
from opsef_opt.figures.decision import SheetLayout
from opsef_opt.search.best import load_pipeline

from conftest import DEMO, TEST_CONF, run_cli


@pytest.mark.slow
def test_best_yaml_reproduces_the_best_trial_and_plots_are_logged(tmp_path):
    r = run_cli("study=tiny", f"hydra.searchpath=[file://{TEST_CONF}]", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    folder = tmp_path / "studies" / "tiny"
    board = pd.read_csv(folder / "leaderboard.csv")
    pipeline, reshape = load_pipeline(folder / "best.yaml")
    assert pipeline.label == board.loc[0, "pipeline"]
    assert (folder / "best_search.yaml").read_text() == (folder / "best.yaml").read_text()
    # one trial name everywhere; the demo images have labels: GT metrics in the CSV and best.yaml
    source = yaml.safe_load((folder / "best.yaml").read_text())["source"]
    assert source["trial"] == board.loc[0, "trial"] == f"search#{source['number']}"
    assert {"gt.f1", "gt.ap"} <= set(board.columns) and board["gt.f1"].between(0, 1).all()
    assert source["gt"]["f1"] == pytest.approx(board.loc[0, "gt.f1"])
    assert MlflowClient(f"sqlite:///{tmp_path}/studies/mlflow.db").get_run(
        board.loc[0, "mlflow_run_id"]).info.run_name == board.loc[0, "trial"]
    # the decision sheet: a ground-truth row, then the 6 trials best first; a section per demo image
    sheet = np.asarray(PILImage.open(folder / "contact_sheets" / "search.png"))
    assert sheet.shape == (*SheetLayout(1 + 6, 2, legend=True).shape, 3)

    # run on its own, the file's pipeline gives the labels the study's best trial logged
    client = MlflowClient(f"sqlite:///{tmp_path}/studies/mlflow.db")
    run = client.get_run(board.loc[0, "mlflow_run_id"])
    image = tifffile.imread(DEMO / "images" / "dsb2018_256.tif")
    labels = pipeline(image, "YX")  # the reshape the study searched with, the steps, the model
    assert labels.max() == run.data.metrics["dsb2018_256/n_objects"]
    logged = tifffile.imread(client.download_artifacts(run.info.run_id, "images/dsb2018_256/labels.tif",
                                                       str(tmp_path / "dl")))
    np.testing.assert_array_equal(labels, logged)

    parent = client.get_run(run.data.tags["mlflow.parentRunId"])
    logged = {a.path for folder_ in ("best", "plots", "contact_sheet")
              for a in client.list_artifacts(parent.info.run_id, folder_)}
    assert {"best/best_search.yaml", "plots/optimization_history.png", "plots/param_importances.png",
            "plots/parallel_coordinate.png", "contact_sheet/search.png"} <= logged


def test_a_broken_pipeline_file_is_named(tmp_path):
    bad = tmp_path / "best.yaml"
    bad.write_text("preprocess:\n- {slot: filter, name: median, size: 4}\nmodel: {family: classical}\n")
    with pytest.raises(ConfigError, match="best.yaml.*must be odd"):
        load_pipeline(bad)
    bad.write_text("model: [")
    with pytest.raises(ConfigError, match="not a readable pipeline file"):
        load_pipeline(bad)
