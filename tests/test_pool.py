"""The label store and consensus pool shared by a stage's trials, and the end-of-stage rescoring."""
from __future__ import annotations

import numpy as np
import tifffile
from scipy import ndimage as ndi

from opsef_opt.config import score_spec
from opsef_opt.score.proxies import consensus_score
from opsef_opt.score.registry import ImageResult
from opsef_opt.search.pool import MIN_CANDIDATES, ConsensusPool, LabelStore, plausibility
from opsef_opt.search.rescore import final_scores

from conftest import shared


def _truth() -> np.ndarray:
    return tifffile.imread(shared("gt", "dsb2018_256", "labels.tif")).astype(np.int32)


def test_store_round_trip_keeps_labels_and_metrics(tmp_path):
    store = LabelStore(tmp_path / "labels")
    truth = _truth()
    big = truth.copy()
    big[0, 0] = 70000  # needs int32
    store.save(3, {"a": truth, "b": big}, {"a": {"proxy.shape": 0.5}, "b": {"proxy.shape": float("nan")}})
    assert store.trials() == [3]
    back = store.load(3)
    assert np.array_equal(back["a"], truth) and np.array_equal(back["b"], big)
    m = store.load_metrics(3)
    assert m["a"]["proxy.shape"] == 0.5 and np.isnan(m["b"]["proxy.shape"])
    assert not list((tmp_path / "labels").glob("*.tmp*"))


GOOD = {"proxy.shape": 0.9, "proxy.separation": 0.8, "proxy.sanity": 1.0}
POOR = {"proxy.shape": 0.2, "proxy.separation": 0.1, "proxy.sanity": 1.0}


def test_plausibility_ignores_consensus_and_applies_the_gate():
    spec = score_spec()
    assert plausibility(GOOD, spec) > plausibility(POOR, spec)
    assert plausibility({**GOOD, "proxy.consensus": 0.0}, spec) == plausibility(GOOD, spec)
    assert plausibility({**GOOD, "proxy.sanity": 0.0}, spec) == 0.0


def test_pool_votes_with_the_plausible_half_and_excludes_the_scored_one(tmp_path):
    store = LabelStore(tmp_path)
    truth = _truth()
    spec = score_spec()
    pool = ConsensusPool(store, spec)
    pool.refresh()
    assert pool.consensus("img") is None
    for t in range(MIN_CANDIDATES):
        store.save(t, {"img": truth}, {"img": GOOD})
    pool.refresh()
    agreed = pool.consensus("img")
    assert consensus_score(ImageResult(truth, np.zeros(0), consensus=agreed))["consensus"] == 1.0
    assert pool.consensus("img", trial=0) is None  # only 2 others vote
    # poor candidates (all empty) join the pool but fall below the median and do not vote
    for t in range(MIN_CANDIDATES, 2 * MIN_CANDIDATES):
        store.save(t, {"img": np.zeros_like(truth)}, {"img": POOR})
    pool.refresh()
    assert pool.members["img"] == set(range(MIN_CANDIDATES))
    assert consensus_score(ImageResult(truth, np.zeros(0), consensus=pool.consensus("img")))["consensus"] == 1.0
    # a better candidate arriving later pushes the median up: votes are withdrawn incrementally
    for t in (20, 21, 22, 23):
        store.save(t, {"img": truth}, {"img": {**GOOD, "proxy.shape": 1.0}})
    pool.refresh()
    assert pool.members["img"] >= {20, 21, 22, 23} and pool.acc["img"].n == len(pool.members["img"])
    # a candidate of a different shape (another geometry) is ignored, not an error
    store.save(30, {"img": truth[:100]}, {"img": GOOD})
    pool.refresh()
    assert 30 not in pool.scores["img"]


def test_final_scores_compare_each_candidate_with_all_others(tmp_path):
    store = LabelStore(tmp_path)
    truth = _truth()
    spec = score_spec()
    broken = (truth > 0).astype(np.int32)  # every nucleus touching its neighbour merged: one label per blob
    for t in range(4):
        store.save(t, {"img": truth}, {"img": GOOD})
    store.save(4, {"img": broken}, {"img": GOOD})
    finals = final_scores(store, spec, "proxy", list(range(5)))
    assert finals[0]["proxy.consensus.final"] == 1.0
    assert finals[4]["proxy.consensus.final"] < finals[0]["proxy.consensus.final"]
    assert finals[4]["score.final"] < finals[0]["score.final"]
    assert "score.final" not in final_scores(store, spec, "gt_f1", [0])[0]
