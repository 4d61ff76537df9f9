"""The label store and consensus pool shared by a stage's trials, and the end-of-stage rescoring."""
from __future__ import annotations

import json

import numpy as np
import tifffile

from opsef_opt.config import score_spec
from opsef_opt.score.proxies import consensus_score
from opsef_opt.score.registry import ImageResult
from opsef_opt.score.proxies.consensus import WEIGHT_UNIT, ConsensusAccumulator
from opsef_opt.search.pool import MIN_FAMILIES, ConsensusPool, LabelStore, plausibility
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
    assert np.array_equal(store.load_one(3, "b"), big)


GOOD = {"proxy.shape": 0.9, "proxy.separation": 0.8, "proxy.sanity": 1.0}
POOR = {"proxy.shape": 0.2, "proxy.separation": 0.1, "proxy.sanity": 1.0}


def test_plausibility_ignores_consensus_and_applies_the_gate():
    spec = score_spec()
    assert plausibility(GOOD, spec) > plausibility(POOR, spec)
    assert plausibility({**GOOD, "proxy.consensus": 0.0}, spec) == plausibility(GOOD, spec)
    assert plausibility({**GOOD, "proxy.sanity": 0.0}, spec) == 0.0


def _drop(truth: np.ndarray, k: int, of: int) -> np.ndarray:
    """The truth without the objects whose id is ``k`` modulo ``of``: a good candidate, distinct from its siblings."""
    out = truth.copy()
    out[(truth % of == k) & (truth > 0)] = 0
    return out


def test_pool_votes_once_per_family_with_the_plausible_half_and_excludes_the_scored_one(tmp_path):
    store = LabelStore(tmp_path)
    truth = _truth()
    spec = score_spec()
    pool = ConsensusPool(store, spec)
    pool.refresh()
    assert pool.consensus("img") is None
    # three good candidates, each missing a different third of the nuclei: three families, whose majority is the truth
    for t in range(MIN_FAMILIES):
        store.save(t, {"img": _drop(truth, t, MIN_FAMILIES)}, {"img": GOOD})
    pool.refresh()
    assert pool.families("img") == MIN_FAMILIES
    agreed = pool.consensus("img")
    assert consensus_score(ImageResult(truth, np.zeros(0), consensus=agreed))["consensus"] == 1.0
    assert pool.consensus("img", trial=0) is None  # only 2 other families vote
    # the same labels stored again (another stage, a retried trial) are the same candidate, not a new vote
    store.save(3, {"img": _drop(truth, 0, MIN_FAMILIES)}, {"img": GOOD})
    # near-duplicates of candidate 0 (one more nucleus missing each) join its family: still three votes
    ids = np.unique(_drop(truth, 0, MIN_FAMILIES))[1:]
    for t, gone in zip((4, 5, 6), ids[:3]):
        lab = _drop(truth, 0, MIN_FAMILIES)
        lab[lab == gone] = 0
        store.save(t, {"img": lab}, {"img": GOOD})
    pool.refresh()
    assert pool.key_of("img", 3) == pool.key_of("img", 0)
    assert len(pool.candidates("img")) == 6 and pool.n_families("img") == pool.families("img") == MIN_FAMILIES
    assert len({pool.family_of("img", pool.key_of("img", t)) for t in (0, 4, 5, 6)}) == 1
    # ... and share one vote: the family of four is one of three votes, the majority is still the truth
    assert sum(pool.images["img"].weights.values()) == MIN_FAMILIES * WEIGHT_UNIT
    assert consensus_score(ImageResult(truth, np.zeros(0), consensus=pool.consensus("img")))["consensus"] == 1.0
    # a scored member's near-duplicates still vote for it: with them, three families remain
    assert pool.consensus("img", trial=4) is not None
    # poor candidates (all empty) join the pool but fall below the median and do not vote
    for t in range(10, 20):
        store.save(t, {"img": np.zeros_like(truth)}, {"img": POOR})
    pool.refresh()
    empty = pool.key_of("img", 10)
    assert pool.key_of("img", 19) == empty and empty not in pool.images["img"].weights
    assert consensus_score(ImageResult(truth, np.zeros(0), consensus=pool.consensus("img")))["consensus"] == 1.0
    # a candidate of a different shape (another geometry) is ignored, not an error
    store.save(30, {"img": truth[:100]}, {"img": GOOD})
    pool.refresh()
    assert pool.key_of("img", 30) is None


def test_incremental_votes_equal_votes_counted_afresh(tmp_path):
    """Re-weighting families as they grow and the median moves keeps the integer votes exact."""
    store = LabelStore(tmp_path)
    truth = _truth()
    pool = ConsensusPool(store, score_spec())
    rng = np.random.default_rng(0)
    for t in range(14):
        lab = _drop(truth, t % 4, 4)
        lab[np.isin(lab, rng.choice(np.unique(lab)[1:], size=t % 3, replace=False))] = 0
        quality = {**GOOD, "proxy.shape": float(rng.uniform(0.3, 1.0))}
        store.save(t, {"img": lab}, {"img": quality})
        pool.refresh()  # one by one, as trials arrive
        img = pool.images["img"]
        fresh = ConsensusAccumulator(truth.shape, weighted=True)
        for key, w in img.weights.items():
            fresh.add(pool.labels("img", key), w)
        assert fresh.n == img.acc.n == pool.families("img") * WEIGHT_UNIT
        assert np.array_equal(fresh._fg, img.acc._fg)
        assert all(np.array_equal(a, b) for a, b in zip(fresh._same, img.acc._same))


def test_final_scores_compare_each_candidate_with_all_others(tmp_path):
    store = LabelStore(tmp_path)
    truth = _truth()
    spec = score_spec()
    broken = (truth > 0).astype(np.int32)  # every nucleus touching its neighbour merged: one label per blob
    for t in range(4):
        store.save(t, {"img": _drop(truth, t, 4)}, {"img": GOOD})
    store.save(4, {"img": broken}, {"img": GOOD})
    store.save(5, {"img": truth}, {"img": GOOD})
    finals = final_scores(store, spec, "proxy", list(range(6)))
    assert finals[5]["proxy.consensus.final"] == 1.0  # the others' majority is the truth
    assert finals[4]["proxy.consensus.final"] < finals[0]["proxy.consensus.final"] < 1.0
    assert finals[4]["score.final"] < finals[0]["score.final"]
    assert "score.final" not in final_scores(store, spec, "gt_f1", [0])[0]


def test_label_store_reads_recent_trials_from_memory_as_from_disk(tmp_path):
    rng = np.random.default_rng(0)
    store = LabelStore(tmp_path)
    saved = {t: {"a": rng.integers(0, 300, (20, 30)).astype(np.int64), "b": rng.integers(0, 70000, (5, 5))}
             for t in range(LabelStore.RECENT + 2)}
    for t, labels in saved.items():
        store.save(t, labels, {"a": {"x": 0.1 * t, "n": t, "nan": float("nan")}})
    disk = LabelStore(tmp_path)  # another process: reads the files
    for t in saved:
        mem, ref = store.load(t), disk.load(t)
        assert list(mem) == list(ref) == ["a", "b"]
        for name in mem:
            assert mem[name].dtype == ref[name].dtype == np.int32
            np.testing.assert_array_equal(mem[name], ref[name])
            np.testing.assert_array_equal(mem[name], saved[t][name])
        assert json.dumps(store.load_metrics(t)) == json.dumps(disk.load_metrics(t))
    assert sorted(store._recent) == list(range(2, LabelStore.RECENT + 2))  # bounded: the oldest went
    store.load(5)["a"][:] = 0  # a caller changing what it got does not change what is stored
    np.testing.assert_array_equal(store.load(5)["a"], saved[5]["a"])
