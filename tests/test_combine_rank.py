"""The rank combination (pool percentiles, fixed learning-to-rank coefficients) behind score.final."""
from __future__ import annotations

import math

import numpy as np
import pytest

from opsef_opt.config import ConfigError, score_spec
from opsef_opt.score.proxies import combine
from opsef_opt.score.proxies.rank import (NO_CONFIDENCE, RANK_FEATURES, RANK_WEIGHTS, fit_rank_weights,
                                          percentiles, plausible_row, pool_percentiles, rank_base, rank_combine,
                                          rank_features)
from opsef_opt.search.pool import LabelStore
from opsef_opt.search.rescore import final_scores, uses_rank


def test_percentiles_are_mid_ranks_among_the_finite_reference():
    ref = [0.1, 0.2, 0.2, 0.4]
    got = percentiles([0.0, 0.1, 0.2, 0.3, 0.5, math.nan], ref)
    assert got[:5].tolist() == pytest.approx([0.0, 0.125, 0.5, 0.75, 1.0])
    assert math.isnan(got[5])
    assert np.isnan(percentiles([0.3], [math.nan])).all()  # no reference: NaN


def test_only_plausible_candidates_are_the_reference_but_every_candidate_gets_a_percentile():
    rows = [{"shape": 0.9, "plausible": 1.0, "sanity": 1.0},
            {"shape": 0.5, "plausible": 1.0, "sanity": 1.0},
            {"shape": 0.99, "plausible": 0.0, "sanity": 1.0},  # vetoed: not in the reference
            {"shape": 0.95, "plausible": 1.0, "sanity": 0.0}]  # gated to 0: not in the reference
    assert [plausible_row(r) for r in rows] == [True, True, False, False]
    pct = pool_percentiles(rows, features=("shape",))
    assert [p["shape"] for p in pct] == pytest.approx([0.75, 0.25, 1.0, 1.0])


def test_rank_base_is_in_unit_interval_and_follows_the_weights():
    assert sum(abs(w) for w in RANK_WEIGHTS.values()) == pytest.approx(1.0, abs=5e-3)  # rounded constants
    best = {f: 1.0 if RANK_WEIGHTS[f] > 0 else 0.0 for f in RANK_FEATURES}
    worst = {f: 0.0 if RANK_WEIGHTS[f] > 0 else 1.0 for f in RANK_FEATURES}
    for pct in (best, worst, {}, {"shape": 0.3}):
        assert 0.0 <= rank_base(pct) <= 1.0
    assert rank_base(best) > rank_base({f: 0.5 for f in RANK_FEATURES}) > rank_base(worst)
    # a feature with a positive weight: a higher percentile scores higher, the others equal
    for f in ("shape", "consensus", "separation", "contrast"):
        lo, hi = {**best, f: 0.2}, {**best, f: 0.8}
        assert rank_base(hi) > rank_base(lo)
    # NaN percentile = the median (feature 0); missing confidence switches the indicator
    x = rank_features({"shape": math.nan, "confidence": math.nan})
    assert x[RANK_FEATURES.index("shape")] == 0.0 and x[-1] == 0.5
    assert rank_features({"confidence": 0.7})[-1] == -0.5
    assert len(rank_features({}, indicator=False)) == len(RANK_FEATURES)


def test_rank_combine_keeps_the_veto_and_the_gate():
    pct_good = {f: 0.9 for f in RANK_FEATURES}
    pct_bad = {f: 0.1 for f in RANK_FEATURES}
    vetoed = rank_combine({"plausible": 0.0, "sanity": 1.0}, pct_good)
    plausible = rank_combine({"plausible": 1.0, "sanity": 1.0}, pct_bad)
    assert vetoed < 0 <= plausible  # an implausible result below every plausible one
    assert rank_combine({"plausible": 1.0, "sanity": 0.5}, pct_good) == pytest.approx(0.5 * rank_base(pct_good))
    # the same arithmetic as combine() for gate and veto
    base = rank_base(pct_good)
    assert rank_combine({"plausible": 0.5, "sanity": 1.0}, pct_good) == pytest.approx(
        combine({"x": base, "plausible": 0.5, "sanity": 1.0}, {"x": 1.0}))


def test_fit_rank_weights_puts_the_informative_feature_first():
    rng = np.random.default_rng(0)
    sets = []
    for _ in range(3):
        n = 30
        X = rng.uniform(-0.5, 0.5, size=(n, 3))
        f1 = 0.5 + 0.8 * X[:, 1] + 0.05 * rng.normal(size=n)  # feature 1 orders the candidates
        sets.append((X, f1, np.ones(n, bool)))
    w = fit_rank_weights(sets, C=1.0, names=("a", "b", "c"))
    assert sum(abs(v) for v in w.values()) == pytest.approx(1.0)
    assert w["b"] > 0.6 and abs(w["a"]) < 0.2 and abs(w["c"]) < 0.2
    with pytest.raises(ValueError):
        fit_rank_weights([(np.zeros((3, 2)), np.ones(3), np.ones(3, bool))], C=1.0, names=("a", "b"))


def _truth(shape=(64, 64)):
    lab = np.zeros(shape, np.int32)
    k = 0
    for y in range(6, 60, 14):
        for x in range(6, 60, 14):
            k += 1
            yy, xx = np.ogrid[:shape[0], :shape[1]]
            lab[(yy - y) ** 2 + (xx - x) ** 2 <= 16] = k
    return lab


def _store(tmp_path, n=6):
    truth = _truth()
    store = LabelStore(tmp_path)
    rng = np.random.default_rng(1)
    for t in range(n):
        lab = truth.copy()
        lab[np.isin(lab, rng.choice(np.arange(1, truth.max() + 1), size=t, replace=False))] = 0
        m = {"proxy.shape": 0.9 - 0.01 * t, "proxy.separation": 0.6 + 0.02 * t, "proxy.contrast": 0.3,
             "proxy.sanity": 1.0, "proxy.plausible": 1.0, "proxy.confidence": math.nan}
        store.save(t, {"img": lab}, {"img": m})
    return store


def test_final_scores_are_the_rank_combination_by_default_and_report_the_weighted_mean_as_a_detail(tmp_path):
    store = _store(tmp_path)
    spec = score_spec()
    assert spec.combination == "rank" and uses_rank(spec)  # chosen by leave-one-dataset-out (README, Benchmarks)
    finals = final_scores(store, spec, "proxy", list(range(6)), details=True)
    for row in finals.values():
        assert 0.0 <= row["score.final"] <= 1.0
        assert row["score.final"] == row["proxy.final"] == row["proxy.rank.final"]
        assert set(f"proxy.{f}.pct.final" for f in RANK_FEATURES) <= set(row)
    # the two combinations disagree on this pool (rank and raw spreads differ), so the default is not the mean
    assert any(row["proxy.rank.final"] != pytest.approx(row["proxy.weighted.final"]) for row in finals.values())
    # shape falls and separation rises with t: their percentiles mirror each other
    assert finals[0]["proxy.shape.pct.final"] > finals[5]["proxy.shape.pct.final"]
    assert finals[0]["proxy.separation.pct.final"] < finals[5]["proxy.separation.pct.final"]
    # without details a study logs what it logged before
    plain = final_scores(store, spec, "proxy", list(range(6)))
    assert set(plain[0]) == {"proxy.consensus.final", "proxy.final", "proxy.plausible.final", "score.final"}
    assert plain[0]["score.final"] == finals[0]["score.final"]
    # percentiles come from the whole pool: scoring a subset of the trials gives them the same values
    some = final_scores(store, spec, "proxy", [1, 4])
    assert some[1] == plain[1] and some[4] == plain[4]


def test_weights_of_ones_own_select_the_weighted_mean_and_options_keep_the_rank_combination(tmp_path):
    store = _store(tmp_path)
    custom = score_spec({"proxies": {"shape": {"weight": 1.0}, "consensus": {"weight": 1.0}}})
    assert custom.combination == "mean" and not uses_rank(custom)
    mine = final_scores(store, custom, "proxy", list(range(6)), details=True)
    for row in mine.values():
        assert row["score.final"] == row["proxy.final"] == pytest.approx(row["proxy.weighted.final"])
    # a proxy's options without a weight (e.g. the polarity) leave the default combination alone
    assert uses_rank(score_spec({"proxies": {"plausible": {"expect": "dark"}}}))
    assert not uses_rank(score_spec({"combination": "mean"}))
    with pytest.raises(ConfigError, match=r"combination=rank combines .* weight of study.score.proxies.shape"):
        score_spec({"combination": "rank", "proxies": {"shape": {"weight": 1.0}}})
    with pytest.raises(ConfigError, match="combination"):
        score_spec({"combination": "ranks"})


def test_no_confidence_key_is_the_indicator():
    assert NO_CONFIDENCE in RANK_WEIGHTS
    assert rank_base({f: 0.5 for f in RANK_FEATURES if f != "confidence"}) != rank_base(
        {f: 0.5 for f in RANK_FEATURES})
