"""End-to-end through the real CLI: a study runs, is tracked, survives kill -9 and bad images."""
from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import time
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
import tifffile
from mlflow import MlflowClient
from PIL import Image as PILImage

from opsef_opt.figures.overlay import TP_RGB

from conftest import DEMO, TEST_CONF, popen_cli, run_cli

pytestmark = pytest.mark.slow

TINY = ["study=tiny", f"hydra.searchpath=[file://{TEST_CONF}]"]


def _study(tmp: Path, name: str = "tiny") -> optuna.Study:
    return optuna.load_study(study_name=f"{name}/search", storage=f"sqlite:///{tmp}/studies/{name}/optuna.db")


def _child_runs(tmp: Path, experiment: str):
    client = MlflowClient(f"sqlite:///{tmp}/studies/mlflow.db")
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    return client, parents, children


def _states(study):
    return [t.state for t in study.get_trials(deepcopy=False)]


def test_short_study_completes_with_leaderboard_and_mlflow_runs(tmp_path):
    r = run_cli(*TINY, "n_trials=4", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "study tiny/search" in r.stdout and "mlflow ui --backend-store-uri sqlite:///" in r.stdout
    study = _study(tmp_path)
    assert _states(study).count(optuna.trial.TrialState.COMPLETE) == 4
    board = pd.read_csv(tmp_path / "studies" / "tiny" / "leaderboard.csv")
    assert len(board) == 4 and board["score"].is_monotonic_decreasing

    client, parents, children = _child_runs(tmp_path, "tiny")
    assert len(parents) == 1 and len(children) == 4
    by_id = {r.info.run_id: r for r in children}
    for t in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)):
        run = by_id[t.user_attrs["mlflow_run_id"]]
        assert run.data.tags["optuna.trial"] == str(t.number)
        assert run.data.tags["optuna.study"] == "tiny/search"
        assert run.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert run.info.status == "FINISHED"
        assert run.data.params["model"] == "classical"
        assert run.data.params["pre.filter"] in ("none", "median(size=3)")
        assert abs(run.data.metrics["score"] - t.value) < 1e-9
        for key in ("n_objects_mean", "mean_object_area", "time_preprocess_s", "time_segment_s",
                    "time_score_s", "time_log_s", "dsb2018_256/gt.f1", "mitocheck_hela/proxy", "gt.mean_matched_iou",
                    "gt.ap", "gt.pooled.f1", "proxy", "proxy.consensus", "proxy.shape", "proxy.contrast",
                    "proxy.sanity"):
            assert key in run.data.metrics, key
    # artifacts of one run, read back like a user would
    run = children[0]
    local = Path(client.download_artifacts(run.info.run_id, "images", str(tmp_path / "dl")))
    names = sorted(p.name for p in local.iterdir())
    assert [n for n in names if "+step+" not in n] == ["dsb2018_256", "metrics_per_image.csv", "mitocheck_hela"]
    # MLflow images (key overlay/<image>; MLflow stores them under images/ too)
    assert sorted(n.split("+")[0] for n in names if "+step+" in n and n.endswith(".png")) == [
        "overlay~dsb2018_256", "overlay~mitocheck_hela"]
    per_image = pd.read_csv(local / "metrics_per_image.csv")
    assert list(per_image["image"]) == ["dsb2018_256", "mitocheck_hela"]
    assert abs(per_image["gt.f1"].mean() - run.data.metrics["gt.f1"]) < 1e-9
    labels = tifffile.imread(local / "dsb2018_256" / "labels.tif")
    assert labels.dtype == np.int32 and labels.shape == (256, 256)
    assert labels.max() == run.data.metrics["dsb2018_256/n_objects"]
    # the overlay: enlarged 3 x, outlines coloured against the ground truth, a legend strip below
    overlay = np.asarray(PILImage.open(local / "dsb2018_256" / "overlay.png"))
    assert overlay.shape == (3 * 256 + 24, 3 * 256, 3) and overlay.dtype == np.uint8
    assert ((overlay == TP_RGB).all(-1)).sum() > 100  # true positives are drawn
    assert np.asarray(PILImage.open(local / "dsb2018_256" / "labels.png")).shape == (256, 256, 3)
    table = pd.read_csv(local / "mitocheck_hela" / "regions.csv")
    from opsef_opt.post.props import region_properties  # the apply mode's table: same columns

    assert list(table.columns) == list(region_properties(np.zeros((4, 4), np.int32)).columns)
    assert table["mean_intensity"].notna().all()
    assert len(table) == run.data.metrics["mitocheck_hela/n_objects"]


def _running_trial_and_complete(db: Path) -> tuple[int, int]:
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)
        rows = con.execute("select state from trials").fetchall()
        con.close()
    except sqlite3.Error:
        return 0, 0
    states = [r[0] for r in rows]
    return states.count("RUNNING"), states.count("COMPLETE")


def _interrupt_mid_trial(proc, db: Path, sig: int, after: int = 2) -> None:
    """Send ``sig`` to the study process while a trial runs, after at least ``after`` completed."""
    deadline = time.time() + 120
    while time.time() < deadline:
        running, complete = _running_trial_and_complete(db)
        if complete >= after and running == 1:
            os.kill(proc.pid, sig)
            return
        if proc.poll() is not None:
            pytest.fail("study finished before it could be interrupted:\n" + proc.stdout.read())
        time.sleep(0.005)
    pytest.fail("no running trial seen within 120 s")


def test_kill_9_mid_trial_then_resume_completes_budget_once(tmp_path):
    args = [*TINY, "n_trials=6", "heartbeat.interval=1", "heartbeat.grace=2"]
    proc = popen_cli(*args, cwd=tmp_path)
    _interrupt_mid_trial(proc, tmp_path / "studies" / "tiny" / "optuna.db", signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    study = _study(tmp_path)
    assert optuna.trial.TrialState.RUNNING in _states(study)

    r = run_cli(*args, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    study = _study(tmp_path)
    states = _states(study)
    assert states.count(optuna.trial.TrialState.COMPLETE) == 6
    assert states.count(optuna.trial.TrialState.FAIL) == 1
    assert len(states) == 7  # nothing duplicated: the 6 grid points + 1 interrupted attempt
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len({tuple(sorted(t.params.items())) for t in complete}) == 6

    client, parents, children = _child_runs(tmp_path, "tiny")
    assert len(parents) == 1  # the resumed run continues the same parent run
    attempts = [t for t in study.trials if "mlflow_run_id" in t.user_attrs]
    assert len(children) == len(attempts) >= 6
    status = {r.info.run_id: r.info.status for r in children}
    for t in attempts:
        expected = "FINISHED" if t.state == optuna.trial.TrialState.COMPLETE else "KILLED"
        assert status[t.user_attrs["mlflow_run_id"]] == expected
    for t in complete:
        arts = client.list_artifacts(t.user_attrs["mlflow_run_id"], "images/dsb2018_256")
        assert {Path(a.path).name for a in arts} == {"overlay.png", "labels.tif", "labels.png", "regions.csv"}


def _completed(folder: Path) -> tuple[set, float]:
    study = _study(folder)
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    return {tuple(sorted(t.params.items())) for t in done}, max(t.value for t in done)


def test_kill_9_resumed_study_evaluates_what_an_uninterrupted_one_does(tmp_path):
    """Budget below the grid: the interrupted pipeline runs next, not behind the rest of the grid."""
    args = [*TINY, "n_trials=3", "heartbeat.interval=1", "heartbeat.grace=2"]
    (tmp_path / "ref").mkdir()
    (tmp_path / "killed").mkdir()
    assert run_cli(*args, cwd=tmp_path / "ref").returncode == 0
    proc = popen_cli(*args, cwd=tmp_path / "killed")
    _interrupt_mid_trial(proc, tmp_path / "killed" / "studies" / "tiny" / "optuna.db", signal.SIGKILL, after=1)
    proc.wait(timeout=30)
    r = run_cli(*args, cwd=tmp_path / "killed")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "was interrupted (no heartbeat); its parameters are queued again" in r.stdout + r.stderr
    states = _states(_study(tmp_path / "killed"))
    assert states.count(optuna.trial.TrialState.FAIL) == 1 and states.count(optuna.trial.TrialState.COMPLETE) == 3
    assert _completed(tmp_path / "killed") == _completed(tmp_path / "ref")
    best = (tmp_path / "killed" / "studies" / "tiny" / "best.yaml").read_text()
    reference = (tmp_path / "ref" / "studies" / "tiny" / "best.yaml").read_text()
    assert best.split("\npipeline:")[1] == reference.split("\npipeline:")[1]  # same pipeline (trial numbers differ)


def test_rgb_image_in_grey_study_stops_before_any_trial(tmp_path):
    images = tmp_path / "images"
    shutil.copytree(DEMO / "images", images)
    rgb = np.stack([tifffile.imread(DEMO / "images" / "dsb2018_256.tif")] * 3, axis=-1)
    tifffile.imwrite(images / "colour.tif", rgb, photometric="rgb")
    labels = tmp_path / "labels"
    shutil.copytree(DEMO / "labels", labels)
    shutil.copy(labels / "dsb2018_256.tif", labels / "colour.tif")
    r = run_cli(*TINY, f"study.images.folder={images}", f"study.images.labels.folder={labels}", cwd=tmp_path)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "image colour (RGB image, axes YXC) cannot reach any model" in r.stderr
    assert "add a color step such as grayscale or stain" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "studies" / "tiny" / "optuna.db").exists()


def test_stage_whose_every_trial_failed_exits_5_with_the_reasons(tmp_path):
    missing = tmp_path / "no_such_package"
    r = run_cli(*TINY, "~study.search.models.classical",
                f"+study.search.models.needed={{family: bioimageio_unet, init: {{package: '{missing}'}}}}",
                cwd=tmp_path)
    assert r.returncode == 5, r.stdout + r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("opsef-opt: stage tiny/search: all 2 trials failed: 2x ")
    assert "no bioimageio.yaml" in last
    assert not (tmp_path / "studies" / "tiny" / "best.yaml").exists()


def test_corrupt_tiff_is_reported_and_the_study_goes_on(tmp_path):
    images = tmp_path / "images"
    shutil.copytree(DEMO / "images", images)
    good = (DEMO / "images" / "dsb2018_256.tif").read_bytes()
    (images / "broken.tif").write_bytes(good[: len(good) // 3])
    (images / "not_an_image.tif").write_bytes(b"hello, I am not a TIFF")
    r = run_cli(*TINY, "n_trials=2", f"study.images.folder={images}", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout + r.stderr
    assert "broken.tif" in out and "not_an_image.tif" in out
    study = _study(tmp_path)
    assert _states(study).count(optuna.trial.TrialState.COMPLETE) == 2
    _, parents, children = _child_runs(tmp_path, "tiny")
    assert "broken.tif" in parents[0].data.tags["skipped_images"]
    assert {"dsb2018_256/gt.f1", "mitocheck_hela/gt.f1"} <= set(children[0].data.metrics)


def test_failing_pipeline_fails_only_its_trials(tmp_path):
    # a colour step on grayscale images is a pipeline error: those trials fail with the reason
    r = run_cli(*TINY, "n_trials=12", "+study.search.preprocess.color=[none, grayscale]", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    study = _study(tmp_path)
    failed = [t for t in study.trials if t.state == optuna.trial.TrialState.FAIL]
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(failed) == 6 and len(complete) == 6
    assert all("RGB" in t.user_attrs["error"] for t in failed)
    client, _, children = _child_runs(tmp_path, "tiny")
    failed_runs = [r for r in children if r.info.status == "FAILED"]
    assert len(failed_runs) == 6 and "RGB" in failed_runs[0].data.tags["opsef.error"]
    assert "6 failed trial(s)" in r.stdout


def test_rerun_of_finished_study_adds_nothing(tmp_path):
    assert run_cli(*TINY, "n_trials=2", cwd=tmp_path).returncode == 0
    r = run_cli(*TINY, "n_trials=2", cwd=tmp_path)
    assert r.returncode == 0
    done = lambda: _states(_study(tmp_path)).count(optuna.trial.TrialState.COMPLETE)  # noqa: E731
    assert done() == 2
    r = run_cli(*TINY, "n_trials=3", cwd=tmp_path)  # a larger budget continues the same study
    assert r.returncode == 0 and done() == 3


def test_changed_search_space_is_refused_with_advice(tmp_path):
    assert run_cli(*TINY, "n_trials=1", cwd=tmp_path).returncode == 0
    r = run_cli(*TINY, "n_trials=2", "study.search.models.classical.params.min_distance=[2,4]", cwd=tmp_path)
    assert r.returncode == 2
    assert "changed since it was created" in r.stderr and "study.name=NEW_NAME" in r.stderr


def test_models_command_lists_models_and_availability(tmp_path):
    r = run_cli("models", cwd=tmp_path, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "classical" in r.stdout and "bioimageio_unet" in r.stdout
    assert "yes: onnx weights" in r.stdout and "min_distance" in r.stdout
    assert not (tmp_path / "studies").exists()


def test_unavailable_models_optional_skipped_required_fail_fast(tmp_path):
    missing = tmp_path / "no_such_package"
    r = run_cli(*TINY, "n_trials=20",
                f"+study.search.models.gone={{family: bioimageio_unet, optional: true, init: {{package: '{missing}'}}}}",
                f"+study.search.models.needed={{family: bioimageio_unet, init: {{package: '{missing}'}}}}",
                cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Model skipped: gone" in r.stdout and str(missing) in r.stdout
    study = _study(tmp_path)
    by_model = {}
    for t in study.get_trials(states=(optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL)):
        by_model.setdefault(t.params.get("model"), []).append(t)
    assert "gone" not in by_model
    assert all(t.state == optuna.trial.TrialState.FAIL and "no bioimageio.yaml" in t.user_attrs["error"]
               for t in by_model["needed"])
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in by_model["classical"])
    assert (len(by_model["needed"]), len(by_model["classical"])) == (2, 6)  # the whole grid, capped


def test_ctrl_c_mid_trial_then_resume(tmp_path):
    args = [*TINY, "n_trials=6"]
    proc = popen_cli(*args, cwd=tmp_path)
    _interrupt_mid_trial(proc, tmp_path / "studies" / "tiny" / "optuna.db", signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, out
    assert "run the same command again to continue" in out
    assert "Traceback" not in out and "KeyboardInterrupt" not in out
    r = run_cli(*args, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    states = _states(_study(tmp_path))
    assert states.count(optuna.trial.TrialState.COMPLETE) == 6
    assert states.count(optuna.trial.TrialState.FAIL) <= 1
    _, parents, children = _child_runs(tmp_path, "tiny")
    assert len(parents) == 1
    assert sum(r.info.status == "FINISHED" for r in children) == 6
