"""bench/proxy_validity.py: its core on a tiny subset, and leave-one-dataset-out that never looks at the held-out set.

The subset: dsb2018_256 and mitocheck, 8 classical candidates each (right and
inverted polarity x four threshold settings; 8 so that the consensus pool's
voting half leaves every candidate 3 others), segmentations cached in a temporary
folder; then the same again with ``rescore_only`` and a model that fails if
it is called.
"""
from __future__ import annotations

import importlib
import math
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(BENCH))
    try:
        corpus = importlib.import_module("_validity_corpus")
        pv = importlib.import_module("proxy_validity")
        yield pv, corpus
    finally:
        sys.path.remove(str(BENCH))


def _tiny_corpus(corpus):
    datasets = corpus.load_corpus({"dsb2018_256", "mitocheck"}, tiny={}, quick=True)
    for ds in datasets:
        d = corpus.DIAMETERS[ds.name]
        ds.candidates = [corpus._cand(p, steps, f"{th} md{md}", "classical", {}, {"threshold": th, "min_distance": md})
                         for p, steps in (("none", ()), ("invert", (("invert", "invert", {}),)))
                         for th, md in (("otsu", max(2, d // 4)), ("otsu", max(3, d // 2)),
                                        ("triangle", max(2, d // 4)), ("li", max(2, d // 4)))]
    return datasets


@pytest.fixture(scope="module")
def scored(bench, tmp_path_factory):
    pv, corpus = bench
    root = tmp_path_factory.mktemp("validity-cache")
    old = corpus.CACHE
    corpus.CACHE = root
    try:
        spec = pv.score_spec(None)
        datasets = _tiny_corpus(corpus)
        first = {ds.name: pv.score_dataset(ds, spec, rescore_only=False, refresh=set()) for ds in datasets}
        yield spec, datasets, first, root
    finally:
        corpus.CACHE = old


def test_corpus_and_spaces(bench):
    pv, corpus = bench
    datasets = corpus.load_corpus(None, tiny={"stardist": "/x/sd", "cellpose": "/x/cp"}, quick=False)
    assert [d.name for d in datasets] == list(corpus.ALL)
    by = {d.name: d for d in datasets}
    assert by["bbbc007_sparse"].sparse and len(by["bbbc007_sparse"].images) == 6
    for name in ("kromp2020_fluo_nuclei_dense", "kromp2020_fluo_nuclei_lowsnr_confocal"):
        assert all(img.shape == (corpus.CROP, corpus.CROP) == truth.shape for _, img, truth in by[name].images)
    for ds in datasets:
        n = 48 if ds.name == "stardist_dsb512" else 60  # the tiny models were trained on the DSB 512 image
        assert len(ds.candidates) == n and len({c.label for c in ds.candidates}) == n
        preps = {c.prep for c in ds.candidates}
        assert {"invert", "gauss4", "clahe"} <= preps
        families = {c.family for c in ds.candidates}
        assert {"classical", "bioimageio_unet"} <= families
        assert ("stardist" in families) == (ds.name != "stardist_dsb512")
    assert not any(img is None for _, img, _ in by["mitocheck"].images)


def test_scores_and_printed_tables(bench, scored, capsys):
    pv, _ = bench
    spec, datasets, first, _ = scored
    for sc in first.values():
        assert len(sc.f1) == 8 and np.isfinite(sc.f1).all()
        assert np.isfinite(sc.default).all()  # score.final from the library's final re-score
        assert {"shape", "consensus", "sanity"} <= set(sc.proxies)
        assert np.isfinite(sc.proxies["consensus"]).any()  # the final consensus against the others
        # inverted polarity on bright nuclei: nothing right
        inverted = np.array([c.prep == "invert" for c in sc.candidates])
        assert sc.f1[inverted].max() < sc.f1[~inverted].max()
    names = [n for n in pv.GRID_PROXIES if n in spec.weights][:3]
    grid = pv.weight_grid(names, (0.0, 1.0))
    assert len(grid) == 7  # 2**3 - 1 directions
    tables = {d: pv.grid_table(sc, grid, spec) for d, sc in first.items()}
    chosen = pv.lodo(tables, spec.weights)
    capsys.readouterr()
    rows = [pv.print_dataset(sc, spec, chosen[d], "mean", ("test", {5: 0.0, 10: 0.0, 20: 0.0}))
            for d, sc in first.items()]
    pv.print_summary(rows, "lodo", "LODO")
    pv.print_summary(rows, "default", "default")
    out = capsys.readouterr().out
    for d in first:
        assert f"## held-out: {d}" in out
    for line in ("proxy shape", "proxy consensus", "combined, default weights (score.final)",
                 "combined, LODO weights", "catches:", "sanity == 0", "tags (test)"):
        assert line in out, line
    header = "| dataset | candidates | grid best GT F1 | pick's GT F1 | regret | rho |"
    assert out.count(header) == 2
    table = [ln for ln in out.splitlines() if ln.startswith("| ")]
    assert sum(ln.startswith("| dsb2018_256 |") for ln in table) == 2
    assert sum(ln.startswith("| **mean** |") for ln in table) == 2
    lodo_rows = [ln for ln in table if ln.startswith("| mitocheck |")]
    assert len(lodo_rows[0].split("|")) - 2 == 8  # dataset .. tags columns


def test_rescore_only_runs_no_model(bench, scored, monkeypatch):
    pv, _ = bench
    spec, datasets, first, root = scored
    assert list((root / "dsb2018_256").glob("*.npz"))

    class NoModel:
        def __call__(self, *a, **k):
            raise AssertionError("--rescore-only ran a model")

    monkeypatch.setattr("opsef_opt.segment.load_segmenter", lambda *a, **k: NoModel())  # what Pipeline.segmenter loads
    for ds in datasets:
        again = pv.score_dataset(ds, spec, rescore_only=True, refresh=set())
        assert again.misses == 0
        np.testing.assert_allclose(again.f1, first[ds.name].f1)
        np.testing.assert_allclose(again.default, first[ds.name].default)
        for p, v in first[ds.name].proxies.items():
            np.testing.assert_allclose(again.proxies[p], v, equal_nan=True)


def test_rescore_only_without_cache_fails(bench, tmp_path, monkeypatch):
    pv, corpus = bench
    monkeypatch.setattr(corpus, "CACHE", tmp_path)
    ds = _tiny_corpus(corpus)[1]
    with pytest.raises(corpus.CacheMiss):
        pv.score_dataset(ds, pv.score_spec(None), rescore_only=True, refresh=set())


def test_lodo_never_uses_the_held_out_dataset(bench):
    pv, _ = bench
    A, B = (("shape", 1.0), ("consensus", 0.0)), (("shape", 0.0), ("consensus", 1.0))
    default = {"shape": 2.0, "consensus": 0.5}
    # the three training sets prefer A; the held-out set would prefer B by far
    tables = {
        "a": {A: (0.9, 0.0), B: (0.5, 0.1)},
        "b": {A: (0.8, 0.02), B: (0.6, 0.05)},
        "c": {A: (0.7, 0.0), B: (0.6, 0.0)},
        "held": {A: (-0.9, 0.5), B: (1.0, 0.0)},
    }
    chosen = pv.lodo(tables, default)
    assert chosen["held"] == A
    # the held-out set's own numbers cannot change its choice
    for flipped in ({A: (1.0, 0.0), B: (-1.0, 1.0)}, {A: (math.nan, math.nan), B: (1.0, 0.0)}):
        assert pv.lodo({**tables, "held": flipped}, default)["held"] == A
    # ... while they do count when another set is held out (it is then a training set)
    assert pv.choose_weights({d: t for d, t in tables.items() if d != "a"}, default) == B
    # the worst-case objective: A's worst training fold (0.7) beats B's (0.4)
    assert pv.choose_weights({d: tables[d] for d in "abc"}, default, "worst") == A
    with pytest.raises(ValueError):
        pv.choose_weights({}, default)


def test_tie_break_prefers_the_default_direction(bench):
    pv, _ = bench
    near = (("shape", 2.0), ("consensus", 0.5))
    far = (("shape", 0.0), ("consensus", 1.0))
    tables = {"a": {far: (0.8, 0.0), near: (0.8, 0.0)}}
    assert pv.choose_weights(tables, {"shape": 2.0, "consensus": 0.5}) == near


def test_rank_quality(bench):
    pv, _ = bench
    f1 = np.array([0.9, 0.5, 0.1, 0.0])
    rho, regret, pick = pv.rank_quality(np.array([4.0, 3.0, 2.0, 1.0]), f1)
    assert rho == pytest.approx(1.0) and regret == 0 and pick == 0.9
    # a tie at the top: the mean of the tied candidates
    rho, regret, pick = pv.rank_quality(np.array([1.0, 1.0, 0.0, 0.0]), f1)
    assert pick == pytest.approx(0.7) and regret == pytest.approx(0.2)
    # NaN scores are not ranked; regret is still against the grid's best
    rho, regret, pick = pv.rank_quality(np.array([math.nan, 1.0, 0.5, 0.0]), f1)
    assert pick == 0.5 and regret == pytest.approx(0.4)
    assert pv.above_median(np.array([4.0, 3.0, 2.0, 1.0]), f1 < 0.1) == 0
    assert pv.above_median(np.array([1.0, 2.0, 3.0, 4.0]), f1 < 0.1) == 1
    assert pv._regret_of((2, 5), f1) == pytest.approx(0.8)
    assert pv._regret_of({"regret": 0.25}, f1) == 0.25


def test_tag_curve_without_the_tag_queue(bench, scored, monkeypatch):
    """Before ``opsef_opt.tags.queue`` exists the curve falls back to random simulated tags + fit_tag_model."""
    pv, _ = bench
    _, _, first, _ = scored
    monkeypatch.setitem(sys.modules, "opsef_opt.tags.queue", None)  # import raises ImportError
    how, curve = pv.tag_curve(first["dsb2018_256"], counts=(3, 6), seeds=2)
    assert how.startswith("random simulated tags") and "error" not in how
    assert set(curve) == {3, 6} and all(0.0 <= v <= 1.0 for v in curve.values())


def test_joint_lodo_of_family_level_and_weights_never_uses_the_held_out_dataset(bench):
    pv, _ = bench
    A, B = (("shape", 1.0), ("consensus", 0.0)), (("shape", 0.0), ("consensus", 1.0))
    default = {"shape": 2.0, "consensus": 0.5}
    # level 0.9: the training sets do best with A; level 0.8: worse everywhere but on "held"
    tables = {
        0.9: {"a": {A: (0.9, 0.0), B: (0.5, 0.1)}, "b": {A: (0.8, 0.0), B: (0.6, 0.0)},
              "held": {A: (-0.5, 0.5), B: (-0.5, 0.5)}},
        0.8: {"a": {A: (0.6, 0.1), B: (0.5, 0.1)}, "b": {A: (0.5, 0.1), B: (0.7, 0.0)},
              "held": {A: (1.0, 0.0), B: (1.0, 0.0)}},
    }
    chosen = pv.lodo_joint(tables, default, default_level=0.9)
    assert chosen["held"] == (0.9, A)
    # with "held" in training (another set held out) its preference for 0.8 counts
    assert pv.choose_joint({lv: {d: t[d] for d in ("b", "held")} for lv, t in tables.items()}, default,
                           default_level=0.9) == (0.8, B)
    # a tie between levels goes to the library's level
    same = {lv: {"a": {A: (0.5, 0.0), B: (0.1, 0.0)}} for lv in (0.8, 0.95)}
    assert pv.choose_joint(same, default, default_level=0.95)[0] == 0.95
    assert pv.choose_joint(same, default, default_level=0.8)[0] == 0.8
    with pytest.raises(ValueError):
        pv.choose_joint({}, default)


def test_the_combination_is_chosen_without_the_held_out_dataset(bench):
    pv, _ = bench
    # (rho, regret) held out per set; the three training sets prefer rank, "held" would prefer the mean by far
    rows = [{"dataset": "a", "lodo": (0.5, 0.2), "rank": (0.9, 0.0)},
            {"dataset": "b", "lodo": (0.9, 0.0), "rank": (0.8, 0.05)},
            {"dataset": "c", "lodo": (0.6, 0.1), "rank": (0.8, 0.0)},
            {"dataset": "held", "lodo": (1.0, 0.0), "rank": (-1.0, 1.0)}]
    assert pv.choose_combination(rows, "held") == "rank"
    rows[3] = {"dataset": "held", "lodo": (-1.0, 1.0), "rank": (1.0, 0.0)}  # its own numbers do not count
    assert pv.choose_combination(rows, "held") == "rank"
    # ... they do when another set is held out, and on all sets
    rows[3] = {"dataset": "held", "lodo": (1.0, 0.0), "rank": (-1.0, 1.0)}
    assert pv.choose_combination(rows, "a") == "lodo"
    assert pv.choose_combination(rows) == "lodo"
    # a tie goes to the weighted mean
    assert pv.choose_combination([{"dataset": "x", "lodo": (0.8, 0.0), "rank": (0.8, 0.0)}], "y") == "lodo"


def _bound_set(pv, name, good_has):
    """Three plausible candidates; the good one (F1 0.9) is highest in ``good_has``, the others equal."""
    per_image = []
    for i in range(3):
        v = {f"pct.{f}": 0.5 for f in pv.RANK_FEATURES} | {f: 0.5 for f in pv.RANK_FEATURES}
        v |= {"sanity": 1.0, "plausible": 1.0, "confidence": math.nan, "pct.confidence": math.nan}
        if i == 0:
            v[f"pct.{good_has}"] = v[good_has] = 0.9
        elif i == 1:  # a bad candidate highest in everything else
            v |= {f"pct.{f}": 0.8 for f in pv.RANK_FEATURES if f not in (good_has, "confidence")}
            v |= {f: 0.8 for f in pv.RANK_FEATURES if f not in (good_has, "confidence")}
        per_image.append([v])
    return pv.Scored(name, ["good", "bad", "other"], [], np.array([0.9, 0.5, 0.4]), {}, np.zeros(3), per_image, [])


def test_linear_bound_says_whether_any_weights_put_a_good_pipeline_first_everywhere(bench):
    pv, _ = bench
    for kind in ("raw", "pct"):
        # shape decides on one set, separation on the other: shape + separation puts both good ones first
        margin, w = pv.linear_bound({"a": _bound_set(pv, "a", "shape"), "b": _bound_set(pv, "b", "separation")}, kind)
        assert margin > 0 and w["shape"] > 0 and w["separation"] > 0
        # a third set where the good pipeline is LOWER in shape and separation than a bad one, equal elsewhere
        c = _bound_set(pv, "c", "contrast")
        for v in c.per_image[0]:
            v |= {"pct.contrast": 0.5, "contrast": 0.5, "pct.shape": 0.2, "shape": 0.2,
                  "pct.separation": 0.2, "separation": 0.2}
        margin, _ = pv.linear_bound({"a": _bound_set(pv, "a", "shape"), "b": _bound_set(pv, "b", "separation"),
                                     "c": c}, kind)
        assert margin <= 1e-9
