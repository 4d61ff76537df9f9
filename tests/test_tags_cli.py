"""Quality tags through the real CLI: set them (MLflow, terminal, CSV), and a stage learns from them."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import optuna
import pytest
from mlflow import MlflowClient
from PIL import Image as PILImage

from opsef_opt.figures.decision import SheetLayout
from opsef_opt.track.contact_sheet import grid_shape

from conftest import TEST_CONF, run_cli

pytestmark = pytest.mark.slow

TAGGED = ["study=tagged", f"hydra.searchpath=[file://{TEST_CONF}]"]


@pytest.fixture(scope="module")
def searched(tmp_path_factory) -> Path:
    """A finished first stage (6 pipelines scored by the proxies), copied by each test."""
    root = tmp_path_factory.mktemp("searched")
    r = run_cli(*TAGGED, "stage=search", cwd=root)
    assert r.returncode == 0, r.stdout + r.stderr
    return root


@pytest.fixture
def study_dir(searched, tmp_path) -> Path:
    shutil.copytree(searched / "studies", tmp_path / "studies")
    return tmp_path


def _runs(tmp: Path):
    client = MlflowClient(f"sqlite:///{tmp}/studies/mlflow.db")
    exp = client.get_experiment_by_name("tagged")
    runs = client.search_runs([exp.experiment_id], "tags.`optuna.study` = 'tagged/search' and "
                              "attributes.status = 'FINISHED'", max_results=100)
    children = sorted((r for r in runs if "optuna.trial" in r.data.tags), key=lambda r: int(r.data.tags["optuna.trial"]))
    return client, children


def _stage(tmp: Path, stage: str) -> optuna.Study:
    return optuna.load_study(study_name=f"tagged/{stage}", storage=f"sqlite:///{tmp}/studies/tagged/optuna.db")


def test_first_stage_writes_proxies_final_scores_and_contact_sheet(searched):
    client, children = _runs(searched)
    assert len(children) == 6
    for run in children:
        m = run.data.metrics
        for key in ("proxy", "proxy.consensus", "proxy.stability", "proxy.shape", "proxy.contrast",
                    "proxy.separation", "proxy.sanity", "proxy.final", "score.final"):
            assert key in m, key
    # (proxy.consensus.final needs 3 other families of near-duplicates voting: this 6-candidate pool
    # of 2 preprocessings x 3 watershed settings has too few, so its consensus is NaN and left out)
    sheets = searched / "studies" / "tagged" / "contact_sheets"
    # the decision sheet: the 6 candidates as rows (no ground truth: no truth row; a legend of the
    # colours that mark objects unlike the first row), a section per demo image
    assert np.asarray(PILImage.open(sheets / "search.png")).shape == (*SheetLayout(6, 2, legend=True).shape, 3)
    # the grid of every candidate: 2 preprocessings (rows) x 3 watershed settings (columns)
    assert np.asarray(PILImage.open(sheets / "search_grid.png")).shape == (*grid_shape(2, 3), 3)
    parent = [r for r in client.search_runs([children[0].info.experiment_id], max_results=100)
              if "optuna.trial" not in r.data.tags][0]
    assert "contact_sheet/search.png" in [a.path for a in client.list_artifacts(parent.info.run_id, "contact_sheet")]


def test_tag_stage_waits_for_tags_then_is_seeded_with_their_values(study_dir):
    r = run_cli(*TAGGED, "stage=taste", cwd=study_dir)
    assert r.returncode == 3, r.stdout + r.stderr
    assert "0 tagged run(s) found" in r.stderr and "mode=tag" in r.stderr and "at least 4" in r.stderr

    client, children = _runs(study_dir)
    given = {0: "correct", 1: "correct", 2: "over", 3: "failed"}
    for i, tag in given.items():
        client.set_tag(children[i].info.run_id, "quality", tag)
    r = run_cli(*TAGGED, "stage=taste", cwd=study_dir)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "tag model: 4 tagged runs" in r.stdout + r.stderr

    search = {t.number: t for t in _stage(study_dir, "search").get_trials()}
    taste = _stage(study_dir, "taste").get_trials()
    seeded = [t for t in taste if t.user_attrs.get("value_source") == "tag"]
    expected = {"correct": 1.0, "over": 0.4, "under": 0.4, "failed": 0.0}
    assert len(seeded) == 4
    for t in seeded:
        source = search[int(t.user_attrs["seeded_from"].split("#")[1])]
        run = next(c for c in children if c.info.run_id == t.user_attrs["mlflow_run_id"])
        assert int(run.data.tags["optuna.trial"]) == source.number
        assert t.value == expected[given[children.index(run)]]
        assert t.params == source.params
    evaluated = [t for t in taste if t.user_attrs.get("value_source") != "tag"]
    assert len(evaluated) == 2 and all(t.state == optuna.trial.TrialState.COMPLETE for t in evaluated)
    # predicted values in tag units (the tag model's, or the proxy's when the model does not beat it)
    assert all(-0.5 <= t.value <= 1.5 for t in evaluated)
    assert "ranks by the tag model" in r.stdout + r.stderr or "ranks by the proxy" in r.stdout + r.stderr

    # re-running the finished stage adds nothing; a new tag is added once
    client.set_tag(children[4].info.run_id, "quality", "under")
    r = run_cli(*TAGGED, "stage=taste", cwd=study_dir)
    assert r.returncode == 0, r.stdout + r.stderr
    taste = _stage(study_dir, "taste").get_trials()
    assert sum(t.user_attrs.get("value_source") == "tag" for t in taste) == 5
    assert sum(t.user_attrs.get("value_source") != "tag" for t in taste) == 2


def test_tag_mode_reads_answers_from_stdin(study_dir):
    answers = "c\no two nuclei split\nxyz\nu\n\nq\n"
    r = run_cli(*TAGGED, "mode=tag", "tag_batch=5", cwd=study_dir, input=answers)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "unknown tag 'xyz'" in r.stdout
    assert "tagged 3 run(s) now" in r.stdout
    assert (study_dir / "studies" / "tagged" / "contact_sheets" / "to_tag.png").is_file()
    _, children = _runs(study_dir)
    tags = sorted((r.data.tags.get("quality"), r.data.tags.get("quality.note")) for r in children
                  if "quality" in r.data.tags)
    assert tags == [("correct", None), ("over", "two nuclei split"), ("under", None)]
    # the runs asked first are the best-scored ones
    best = max(children, key=lambda r: r.data.metrics["score.final"])
    assert best.data.tags.get("quality") == "correct"


def test_tags_import_from_csv_applies_valid_rows_and_names_bad_ones(study_dir):
    _, children = _runs(study_dir)
    csv = study_dir / "tags.csv"
    csv.write_text("trial,tag,note\n0,correct,looks right\n1,Over-segmented,\n2,maybe,\n99,failed,\n\n")
    with_id = study_dir / "ids.csv"
    with_id.write_text(f"run_id,quality\n{children[3].info.run_id},failed\n")
    r = run_cli(*TAGGED, "mode=tag", f"tags_csv={csv}", cwd=study_dir)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "imported 2 tag(s)" in r.stdout
    assert "tags.csv:4: unknown tag 'maybe'" in r.stderr and "tags.csv:5: trial '99'" in r.stderr
    r = run_cli(*TAGGED, "mode=tag", f"tags_csv={with_id}", cwd=study_dir)
    assert r.returncode == 0, r.stdout + r.stderr
    _, children = _runs(study_dir)
    got = {int(c.data.tags["optuna.trial"]): (c.data.tags.get("quality"), c.data.tags.get("quality.note"))
           for c in children}
    assert got[0] == ("correct", "looks right") and got[1] == ("over", None) and got[3] == ("failed", None)
    assert got[2] == (None, None)


def test_tag_mode_asks_comparisons_after_the_tags(study_dir):
    """Two tags, then pairs of top runs: 'a' (A is better), '=' (equally good), then quit."""
    r = run_cli(*TAGGED, "mode=tag", "tag_batch=2", cwd=study_dir, input="c\nf\na\n=\nq\n")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "which is better?" in r.stdout and "[1/3]" in r.stdout and "[2/3]" in r.stdout
    assert "tagged 2 run(s) now and compared 2 pair(s)" in r.stdout
    assert "2 comparison(s)" in r.stdout
    assert (study_dir / "studies" / "tagged" / "contact_sheets" / "to_compare.png").is_file()
    _, children = _runs(study_dir)
    ids = {c.info.run_id: int(c.data.tags["optuna.trial"]) for c in children}
    better = {(ids[c.info.run_id], ids[o]) for c in children
              for o in c.data.tags.get("quality.better_than", "").split(",") if o}
    same = {frozenset((ids[c.info.run_id], ids[o])) for c in children
            for o in c.data.tags.get("quality.same_as", "").split(",") if o}
    assert len(better) == 1 and len(same) == 1
    # the first pair is the leader (the best-scored run, tagged correct) against a challenger
    best = max(children, key=lambda c: c.data.metrics["score.final"])
    assert best.data.tags.get("quality") == "correct"
    assert next(iter(better))[0] == ids[best.info.run_id]
    assert ids[best.info.run_id] in next(iter(same))

    # comparisons from a CSV (trial numbers of the default stage), next to a tag
    csv = study_dir / "pairs.csv"
    csv.write_text("trial,tag,better,worse\n5,under,,\n,,search#4,3\n")
    r = run_cli(*TAGGED, "mode=tag", f"tags_csv={csv}", cwd=study_dir)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "imported 1 tag(s) and 1 comparison(s)" in r.stdout
    assert "3 comparison(s)" in r.stdout
    _, children = _runs(study_dir)
    by_trial = {int(c.data.tags["optuna.trial"]): c for c in children}
    assert by_trial[4].data.tags.get("quality.better_than") == by_trial[3].info.run_id
