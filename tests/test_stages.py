"""Staged search through the real CLI: coarse grid -> TPE around its top-k -> top-k on all images."""
from __future__ import annotations

import optuna
import pytest

from opsef_opt.search.derive import ranked_trials

from conftest import TEST_CONF, run_cli

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
    assert "stage staged/confirm: 2 images/items" in r.stdout + r.stderr
    assert "stage staged/fine: 1 images/items" in r.stdout + r.stderr
    assert (tmp_path / "studies" / "staged" / "best_confirm.yaml").is_file()

    # re-running the finished study adds nothing
    r = run_cli(*STAGED, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert [len(_stage(tmp_path, s).get_trials()) for s in ("coarse", "fine", "confirm")] == [12, 5, 2]
