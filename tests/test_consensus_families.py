"""Consensus that does not follow the crowd: families of near-duplicates share one vote, one common pool
for every stage, size outliers are implausible, and the progress line does not print an inflated score.

Constructed cases on synthetic discs (no shared data needed), except the slow CLI test.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
from skimage.draw import disk

from opsef_opt.config import score_spec
from opsef_opt.score.proxies import ConsensusAccumulator, consensus_score
from opsef_opt.score.proxies.consensus import FAMILY_AGREEMENT, WEIGHT_UNIT, object_agreement, object_signature
from opsef_opt.score.registry import ImageResult
from opsef_opt.search import rescore
from opsef_opt.search.pool import (MIN_FAMILIES, SETTLED_FAMILIES, SIZE_FACTOR, ConsensusPool, LabelStore,
                                   plausibility)
from opsef_opt.search.rescore import common_final_scores, final_scores

GOOD = {"proxy.shape": 0.9, "proxy.separation": 0.8, "proxy.sanity": 1.0}
SHAPE = (256, 256)


def _discs(centres, radius: float, shape=SHAPE) -> np.ndarray:
    lab = np.zeros(shape, np.int32)
    for i, (y, x) in enumerate(centres, start=1):
        lab[disk((y, x), radius, shape=shape)] = i
    return lab


#: the "truth": 49 nuclei of radius 6 on a grid
NUCLEI = [(18 + 36 * i, 18 + 36 * j) for i in range(7) for j in range(7)]
#: background texture a crowd of similar pipelines picks up: 30 specks between the nuclei
SPECKS = [(36 + 36 * i, 36 + 36 * j) for i in range(6) for j in range(5)]


def truth() -> np.ndarray:
    return _discs(NUCLEI, 6)


def good(k: int) -> np.ndarray:
    """Truth without every 4th nucleus (a different quarter for each k < 4): F1 0.85, distinct from the others."""
    return _discs([c for i, c in enumerate(NUCLEI) if i % 4 != k], 6)


def bad(k: int) -> np.ndarray:
    """Truth plus the background specks, minus one speck (a different one for each k): near-duplicates, F1 0.77."""
    return _discs(NUCLEI + [c for i, c in enumerate(SPECKS) if i != k], 6)


def f1(labels: np.ndarray, reference: np.ndarray | None) -> float:
    return consensus_score(ImageResult(labels, np.zeros(0), consensus=reference))["consensus"]


def test_constructed_candidates_are_what_the_test_says():
    t = truth()
    assert all(f1(good(k), t) > 0.84 for k in range(4)) and all(f1(bad(k), t) < 0.8 for k in range(6))
    sig = {f"good{k}": object_signature(good(k)) for k in range(4)} | {f"bad{k}": object_signature(bad(k))
                                                                        for k in range(6)}
    assert object_agreement(sig["bad0"], sig["bad1"]) > 0.95 > FAMILY_AGREEMENT  # near-duplicates
    assert object_agreement(sig["good0"], sig["good1"]) < FAMILY_AGREEMENT  # distinct
    assert object_agreement(sig["good0"], sig["bad0"]) < FAMILY_AGREEMENT


def test_a_family_of_near_duplicates_does_not_outvote_distinct_better_candidates(tmp_path):
    """6 near-identical bad candidates + 3 distinct good ones that agree with each other and with the truth."""
    cands = [bad(k) for k in range(6)] + [good(k) for k in range(3)]
    store = LabelStore(tmp_path)
    for t, lab in enumerate(cands):
        store.save(t, {"img": lab}, {"img": GOOD})  # equally plausible: only agreement tells them apart

    # contrast: the old majority counted per candidate; the crowd of six wins and the good ones look worse
    acc = ConsensusAccumulator(SHAPE)
    for lab in cands:
        acc.add(lab)
    old = [f1(lab, acc.labels(exclude=lab)) for lab in cands]
    assert max(old[6:]) < min(old[:6])

    # families: the six share one vote, the good ones are three more; the majority of families is the truth
    pool = ConsensusPool(store, score_spec())
    pool.refresh()
    assert pool.n_families("img") == 4 and pool.families("img") == 4
    assert len({pool.family_of("img", pool.key_of("img", t)) for t in range(6)}) == 1
    new = [f1(lab, pool.consensus("img", trial=t)) for t, lab in enumerate(cands)]
    assert min(new[6:]) > max(new[:6])
    assert new[6:] == pytest.approx([f1(lab, truth()) for lab in cands[6:]])  # scored against the truth itself
    # the end-of-stage re-score ranks them the same way
    finals = final_scores(store, score_spec(), "proxy", list(range(len(cands))))
    assert min(finals[t]["score.final"] for t in range(6, 9)) > max(finals[t]["score.final"] for t in range(6))


def test_object_agreement_is_object_f1_of_coinciding_objects():
    t = truth()
    s = object_signature(t)
    assert object_agreement(s, s) == 1.0
    assert object_agreement(s, object_signature(np.zeros(SHAPE, np.int32))) == 0.0
    assert object_agreement(object_signature(np.zeros(SHAPE, np.int32)), object_signature(np.zeros(SHAPE))) == 1.0
    assert object_agreement(s, object_signature(good(0))) == pytest.approx(2 * 36 / (49 + 36))
    assert object_agreement(s, object_signature(np.roll(t, 1, axis=1))) == 1.0  # a pixel off: the same objects
    assert object_agreement(s, object_signature(np.roll(t, 4, axis=1))) == 0.0  # 2/3 of the radius: not
    assert object_agreement(s, object_signature(_discs(NUCLEI, 3))) == 0.0  # a quarter of the area: not
    assert s.median_area == pytest.approx(np.bincount(t.ravel())[1:].mean())
    vol = np.zeros((8, 40, 40), np.int32)
    vol[2:6, 5:12, 5:12], vol[2:6, 20:30, 20:30] = 1, 2
    assert object_agreement(object_signature(vol), object_signature(vol[:, :, ::-1].copy())) == 0.0
    assert object_agreement(object_signature(vol), object_signature(vol * 7)) == 1.0  # ids do not matter


def test_weighted_accumulator_excludes_exactly_the_scored_candidate():
    a, b, c = good(0), good(1), bad(0)
    acc = ConsensusAccumulator(SHAPE, weighted=True)
    for lab, w in ((a, 3), (b, 2), (c, 2), (c, -1)):  # a weight changes by adding the difference
        acc.add(lab, w)
    assert acc.n == 6
    ref = ConsensusAccumulator(SHAPE)  # weight = repetition
    for lab, w in ((a, 3), (b, 2), (c, 1)):
        for _ in range(w):
            ref.add(lab)
    np.testing.assert_array_equal(acc.labels(), ref.labels())
    others = ConsensusAccumulator(SHAPE)
    for lab in (a, a, a, c):
        others.add(lab)
    np.testing.assert_array_equal(acc.labels(exclude=b, exclude_weight=2), others.labels())
    with pytest.raises(ValueError):
        ConsensusAccumulator(SHAPE).add(a, 2)


def _store(folder, cands):
    store = LabelStore(folder)
    for t, (lab, m) in enumerate(cands):
        store.save(t, {"img": lab}, {"img": m})
    return store


def test_the_same_pipeline_in_two_stages_gets_the_same_final_score(tmp_path):
    """Two stages' label stores: final scores against one common pool make stage scores comparable."""
    coarse = _store(tmp_path / "coarse", [(good(k), GOOD) for k in range(3)] + [(bad(k), GOOD) for k in range(3)])
    # fine re-evaluates coarse's trial 1 first (identical labels and metrics), then tries two others: alone, its
    # pool is too small for a consensus, and the same pipeline scored differently in the two stages
    fine = _store(tmp_path / "fine", [(good(1), GOOD), (good(3), GOOD), (bad(4), GOOD)])
    spec = score_spec()
    alone = {"coarse": final_scores(coarse, spec, "proxy", list(range(6))),
             "fine": final_scores(fine, spec, "proxy", list(range(3)))}
    assert alone["coarse"][1]["score.final"] != alone["fine"][0]["score.final"]  # scores were pool-relative

    stores = {"coarse": coarse, "fine": fine}
    common = common_final_scores(stores, spec, {"coarse": "proxy", "fine": "proxy"},
                                 {"coarse": list(range(6)), "fine": list(range(3))})
    assert common["coarse"][1] == common["fine"][0]
    assert not math.isnan(common["fine"][0]["proxy.consensus.final"])
    # the duplicate is one candidate: the same scores as a pool where fine never re-evaluated it
    fine2 = _store(tmp_path / "fine2", [(good(3), GOOD), (bad(4), GOOD)])
    without = common_final_scores({"coarse": coarse, "fine": fine2}, spec, {"coarse": "proxy", "fine": "proxy"},
                                  {"coarse": list(range(6)), "fine": [0, 1]})
    assert without["coarse"] == common["coarse"]
    assert [without["fine"][t] for t in (0, 1)] == [common["fine"][t] for t in (1, 2)]
    # a stage scored by ground truth gets the proxies' final values but no score.final
    gt = common_final_scores(stores, spec, {"coarse": "gt_f1"}, {"coarse": [1]})
    assert "score.final" not in gt["coarse"][1] and gt["coarse"][1]["proxy.final"] == common["coarse"][1]["proxy.final"]


@pytest.mark.parametrize("factor", [20.0, 1 / 20.0], ids=["20x larger", "20x smaller"])
def test_a_candidate_with_absurd_object_sizes_is_implausible(tmp_path, monkeypatch, factor):
    cands = [(good(k), GOOD) for k in range(4)] + [(truth(), GOOD)]
    radius = 6 * math.sqrt(factor)
    centres = NUCLEI[::8] if factor > 1 else NUCLEI
    outlier = _discs(centres, radius) if radius >= 1 else _discs([(y + dy, x + dx) for y, x in NUCLEI
                                                                  for dy in (-4, 0, 4) for dx in (-4, 0, 4)], 0.9)
    cands.append((outlier, GOOD))
    store = _store(tmp_path, cands)
    pool = ConsensusPool(store, score_spec())
    pool.refresh()
    area = object_signature(outlier).median_area
    assert not (pool.images["img"].reference_area / SIZE_FACTOR <= area <= pool.images["img"].reference_area
                * SIZE_FACTOR)
    key = pool.key_of("img", 5)
    assert not pool.size_ok("img", key) and all(pool.size_ok("img", pool.key_of("img", t)) for t in range(5))
    assert key not in pool.images["img"].weights  # it does not vote either

    seen = []
    real = rescore.combine
    monkeypatch.setattr(rescore, "combine", lambda values, *a, **k: seen.append(dict(values)) or real(values, *a, **k))
    finals = final_scores(store, score_spec(), "proxy", list(range(6)))
    assert finals[5]["proxy.plausible.final"] == 0.0 and all(finals[t]["proxy.plausible.final"] == 1.0
                                                             for t in range(5))
    assert [v.get("plausible") == 0.0 for v in seen] == [False] * 5 + [True]


def test_an_implausible_verdict_of_the_per_image_checks_is_kept(tmp_path):
    """The pool's size check is ANDed into the per-image ``plausible`` value, it never overrides a failure."""
    cands = [(good(k), GOOD) for k in range(4)] + [(truth(), {**GOOD, "proxy.plausible": 0.0})]
    finals = final_scores(_store(tmp_path, cands), score_spec(), "proxy", list(range(5)))
    assert finals[4]["proxy.plausible.final"] == 0.0 and finals[0]["proxy.plausible.final"] == 1.0


def test_progress_line_prints_no_consensus_score_until_the_pool_has_enough_families(tmp_path):
    spec = score_spec()
    store = LabelStore(tmp_path)
    pool = ConsensusPool(store, spec)
    for t in range(3):
        store.save(t, {"img": good(t)}, {"img": GOOD})
    pool.refresh()
    store.save(3, {"img": bad(0)}, {"img": {**GOOD, "proxy.consensus": 1.0, "proxy": 0.9}})
    value, note = pool.progress(3, 0.9, "proxy")
    assert value == pytest.approx(plausibility(GOOD, spec)) and "without consensus" in note
    assert f"3 of {SETTLED_FAMILIES} families" in note
    assert pool.progress(3, 0.9, "gt_f1") == (0.9, "")
    assert pool.progress(3, 0.9, "proxy.consensus")[1].startswith(" (provisional")
    store.save(4, {"img": good(3)}, {"img": GOOD})  # four good families and the family of bad ones
    for t in range(5, 8):
        store.save(t, {"img": bad(t)}, {"img": GOOD})
    pool.refresh()
    assert pool.families("img") >= SETTLED_FAMILIES
    value, note = pool.progress(3, 0.9, "proxy")
    assert value == 0.9 and "provisional" in note


def test_min_families_counts_families_not_candidates(tmp_path):
    store = _store(tmp_path, [(bad(k), GOOD) for k in range(6)] + [(good(0), GOOD)])
    pool = ConsensusPool(store, score_spec())
    pool.refresh()
    assert pool.families("img") == 2 < MIN_FAMILIES
    assert pool.consensus("img") is None  # seven candidates, but two opinions
    assert sum(pool.images["img"].weights.values()) == 2 * WEIGHT_UNIT


@pytest.mark.slow
def test_staged_study_gives_a_pipeline_the_same_final_score_in_every_stage(tmp_path):
    """coarse grid -> fine around its top 3 (evaluated first) -> confirm: one common pool for the final scores."""
    import mlflow
    import optuna

    from conftest import TEST_CONF, run_cli

    args = ["study=staged", f"hydra.searchpath=[file://{TEST_CONF}]", "+study.score.objective=proxy"]
    r = run_cli(*args, cwd=tmp_path)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    storage = f"sqlite:///{tmp_path}/studies/staged/optuna.db"
    coarse, fine, confirm = (optuna.load_study(study_name=f"staged/{s}", storage=storage)
                             for s in ("coarse", "fine", "confirm"))
    finals = {s.study_name: s.user_attrs["final_scores"] for s in (coarse, fine, confirm)}
    handed = [t for t in fine.get_trials() if str(t.user_attrs.get("source_trial", "")).startswith("coarse#")]
    assert len(handed) == 3
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'studies' / 'mlflow.db'}")
    for t in handed:
        source = t.user_attrs["source_trial"].split("#")[1]
        assert finals["staged/fine"][str(t.number)] == finals["staged/coarse"][source]
        src_run = next(s for s in coarse.get_trials() if str(s.number) == source).user_attrs["mlflow_run_id"]
        assert client.get_run(t.user_attrs["mlflow_run_id"]).data.metrics["score.final"] == \
            client.get_run(src_run).data.metrics["score.final"] == finals["staged/coarse"][source]
    # the earlier stages were re-scored when the later ones finished, and each knows which pool it was scored on
    assert "final scores of stage(s) coarse" in out
    assert len({s.user_attrs["final_pool"] for s in (coarse, fine, confirm)}) == 1
    # early progress lines do not print a score against a pool of a few candidates
    assert "without consensus" in out
    # a re-run with nothing new does not re-score (the markers are current)
    r = run_cli(*args, cwd=tmp_path)
    assert r.returncode == 0 and "final scores of stage(s)" not in r.stdout + r.stderr


def test_two_missed_objects_of_seven_are_not_near_duplicates(tmp_path):
    """A pool of few objects (MitoCheck: 7 nuclei): finding 5 of them is object agreement 0.83.

    At the earlier level 0.8 that is one family with the candidates finding all 7, and a
    homogeneous pool has no consensus at all; at the default level they are two families.
    """
    seven = NUCLEI[:7]
    full = _discs(seven, 6)
    missed = _discs(seven[:5], 6)
    assert object_agreement(object_signature(full), object_signature(missed)) == pytest.approx(2 * 5 / 12)
    assert 0.8 < 2 * 5 / 12 < FAMILY_AGREEMENT
    store = LabelStore(tmp_path)
    for t, lab in enumerate([full, missed]):
        store.save(t, {"img": lab}, {"img": GOOD})
    counts = {}
    for level in (0.8, None, 0.95):
        pool = ConsensusPool(store, score_spec(), family_agreement=level)
        pool.refresh()
        counts[level] = pool.n_families("img")
    assert counts == {0.8: 1, None: 2, 0.95: 2}
    with pytest.raises(ValueError):
        ConsensusPool(store, score_spec(), family_agreement=0.0)
