"""Inference / post-processing split and the inference cache (issue 15).

For every model family the split path (``cached_call`` through an
:class:`InferenceCache`, one forward pass shared by a 3 x 3 grid of
post-processing settings) gives the same labels, to the pixel, as a direct
call of the model's own library (Cellpose ``eval``, StarDist
``predict_instances``, the U-Net's probability + watershed, the classical
threshold + watershed). Cellpose and StarDist use tiny models trained here
from scratch (bench/inference_reuse.py trains them as tests/test_cellpose_model.py
and tests/test_stardist_model.py do).
"""
from __future__ import annotations

import importlib
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import randomize_cp_unet

from opsef_opt.search.infercache import InferenceCache, inference_key
from opsef_opt.segment.registry import load_segmenter

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(BENCH))
    try:
        yield importlib.import_module("inference_reuse")
    finally:
        sys.path.remove(str(BENCH))


@pytest.fixture(scope="module")
def image():
    from stardist.data import test_image_nuclei_2d

    img = test_image_nuclei_2d().astype(np.float32)
    return ((img - img.min()) / (img.max() - img.min()))[:256, :320]


def _split_grid(model, image, grid: dict, fixed: dict | None = None):
    """Labels per post-processing setting through the cache, and the cache (for its counts)."""
    cache = InferenceCache(None)
    out = {}
    names = list(grid)
    for a in grid[names[0]]:
        for b in grid[names[1]]:
            params = {**(fixed or {}), names[0]: a, names[1]: b}

            def lookup(inference, compute):
                key = inference_key("img", model.family, model.init, inference, model.raw_version)
                return cache.get(key, compute)[0]

            out[(a, b)] = model.cached_call(image, "YX", lookup, **params)
    return out, cache


def _assert_same(split, direct_fn):
    nonempty = 0
    for setting, seg in split.items():
        want = np.asarray(direct_fn(*setting)).astype(np.int32)
        assert seg.labels.dtype == np.int32
        np.testing.assert_array_equal(seg.labels, want, err_msg=str(setting))
        nonempty += int(want.max() > 0)
    assert nonempty >= len(split) // 2, "too few settings found objects: the comparison says little"


def test_declared_split_is_a_subset_of_params():
    from opsef_opt.segment import SEGMENTERS

    assert {"classical", "bioimageio_unet", "cellpose", "stardist", "cp_unet"} <= set(SEGMENTERS.names())
    for name in SEGMENTERS.names():
        cls = SEGMENTERS.get(name)
        assert set(cls.inference_params) <= {p.name for p in cls.params}, name


def test_classical_has_no_forward_pass(image):
    model = load_segmenter("classical")
    calls = []
    seg = model.cached_call(image, "YX", lambda inf, compute: calls.append(1), min_distance=4, threshold="li")
    assert calls == []  # no network: the cache is never asked
    np.testing.assert_array_equal(seg.labels, model(image, "YX", min_distance=4, threshold="li").labels)
    from opsef_opt.segment.classical import threshold_watershed

    np.testing.assert_array_equal(seg.labels, threshold_watershed(image, threshold="li", min_distance=4))


def test_unet_split_matches_probability_plus_watershed(image):
    from opsef_opt.segment.instances import instances_from_probability

    model = load_segmenter("bioimageio_unet")
    grid = {"threshold": [0.3, 0.5, 0.7], "min_distance": [3, 5, 8]}
    split, cache = _split_grid(model, image, grid)
    prob = model.probability(image)
    _assert_same(split, lambda t, d: instances_from_probability(prob, t, d, 20))
    assert cache.stats["forward_passes"] == 1 and len(cache.keys) == 1 and cache.stats["memory_hits"] == 8
    # and the whole call (segment) still gives the same
    np.testing.assert_array_equal(model(image, "YX", threshold=0.7, min_distance=8).labels,
                                  split[(0.7, 8)].labels)


def test_cp_unet_split_matches_classes_plus_watershed(image, tmp_path):
    pytest.importorskip("tensorflow")
    from opsef_opt.segment.cp_unet import build_cp_unet, labels_from_classes, predict_classes

    net = build_cp_unet()
    randomize_cp_unet(net)  # deterministic random weights (the repository has no trained cp_unet)
    path = tmp_path / "w.weights.h5"
    net.save_weights(str(path))
    model = load_segmenter("cp_unet", weights=str(path), device="cpu")
    img = image[:128, :128]
    grid = {"interior_threshold": [0.2, 0.4, 0.6], "min_distance": [0, 3, 6]}
    split, cache = _split_grid(model, img, grid, {"min_size": 0})
    probs = predict_classes(model.model, img)
    for (t, d), seg in split.items():
        np.testing.assert_array_equal(seg.labels, labels_from_classes(probs, t, 0, min_distance=d))
    assert cache.stats["forward_passes"] == 1 and len(cache.keys) == 1


@pytest.mark.slow
def test_cellpose_split_matches_cellpose_eval(bench, image, tmp_path_factory):
    from opsef_opt.segment import cellpose_model as cpm

    if cpm.cellpose_version() is None:
        pytest.skip("cellpose is not installed")
    path = bench.tiny_cellpose(tmp_path_factory.mktemp("cp"))
    model = load_segmenter("cellpose", model=str(path), device="cpu")
    grid = {"flow_threshold": [0.2, 0.4, 0.8], "cellprob_threshold": [-1.0, 0.0, 1.0]}
    for fixed in ({}, {"diameter": 15.0, "invert": False}, {"scale": 1.3, "normalize": False}):
        split, cache = _split_grid(model, image, grid, fixed)
        d = model.eval_diameter(fixed.get("diameter"), fixed.get("scale"))

        def direct(ft, ct):
            return model._model.eval(image, diameter=d, flow_threshold=ft, cellprob_threshold=ct,
                                     normalize=fixed.get("normalize", True), channels=[0, 0])[0]

        _assert_same(split, direct)
        assert cache.stats["forward_passes"] == 1 and len(cache.keys) == 1
    # confidences (cell probability x flow agreement) come from the same flows
    seg = split[(0.4, 0.0)]
    whole = model(image, "YX", flow_threshold=0.4, cellprob_threshold=0.0, scale=1.3, normalize=False)
    assert seg.confidence == whole.confidence


@pytest.mark.slow
def test_stardist_split_matches_predict_instances(bench, image, tmp_path_factory):
    from csbdeep.utils import normalize

    folder = bench.tiny_stardist(tmp_path_factory.mktemp("sd"))
    model = load_segmenter("stardist", model=str(folder), device="cpu")
    grid = {"prob_thresh": [0.3, 0.5, 0.7], "nms_thresh": [0.2, 0.4, 0.6]}
    for fixed in ({}, {"pmin": 3.0, "pmax": 99.0}):
        split, cache = _split_grid(model, image, grid, fixed)
        x = normalize(image, fixed.get("pmin", 1.0), fixed.get("pmax", 99.8), axis=None)

        def direct(pt, nt):
            return model.model.predict_instances(x, axes="YX", n_tiles=(1, 1), prob_thresh=pt, nms_thresh=nt,
                                                 show_tile_progress=False, verbose=False)[0]

        _assert_same(split, direct)
        assert cache.stats["forward_passes"] == 1 and len(cache.keys) == 1
    # the model's own thresholds (None) and a tiled prediction agree too
    model.max_tile = 128  # 2 x 3 tiles
    seg = model(image, "YX")
    want = model.model.predict_instances(normalize(image, 1.0, 99.8, axis=None), axes="YX", n_tiles=(2, 3),
                                         show_tile_progress=False, verbose=False)[0]
    np.testing.assert_array_equal(seg.labels, want)
    assert want.max() > 0


def test_inference_cache_memory_bound_disk_and_off(tmp_path):
    raw = {"p": np.arange(1000, dtype=np.float32)}  # 4000 bytes
    calls = []

    def compute():
        calls.append(1)
        return dict(raw)

    cache = InferenceCache(tmp_path / "infer", max_bytes=10_000)
    for k in ("a", "b", "c"):
        assert cache.get(k, compute)[1] == "computed"
    assert cache.memory_bytes <= 10_000 and cache.get("c", compute)[1] == "memory"
    assert cache.get("a", compute)[1] == "disk"  # evicted from memory (least recently used), still on disk
    got, _ = cache.get("b", compute)
    np.testing.assert_array_equal(got["p"], raw["p"])
    assert not got["p"].flags.writeable
    # a second process (a worker, a resumed run) finds them on disk
    other = InferenceCache(tmp_path / "infer")
    assert [other.get(k, compute)[1] for k in "abc"] == ["disk"] * 3
    assert len(calls) == 3 and cache.stats["forward_passes"] == 3
    off = InferenceCache(tmp_path / "infer", enabled=False)
    assert [off.get(k, compute)[1] for k in "aa"] == ["computed"] * 2 and len(off.keys) == 1


def test_inference_key_depends_on_what_changes_the_forward_pass(tmp_path):
    weights = tmp_path / "w.bin"
    weights.write_bytes(b"1")
    base = inference_key("pre", "cellpose", {"model": str(weights)}, {"diameter": 10.0})
    assert base == inference_key("pre", "cellpose", {"model": str(weights)}, {"diameter": 10.0})
    others = {
        inference_key("pre2", "cellpose", {"model": str(weights)}, {"diameter": 10.0}),
        inference_key("pre", "stardist", {"model": str(weights)}, {"diameter": 10.0}),
        inference_key("pre", "cellpose", {"model": str(weights)}, {"diameter": 12.0}),
        inference_key("pre", "cellpose", {"model": str(weights)}, {"diameter": 10.0}, perturbation="noise"),
        inference_key("pre", "cellpose", {"model": str(weights)}, {"diameter": 10.0}, raw_version="2"),
    }
    assert base not in others and len(others) == 5


@pytest.mark.slow
def test_study_runs_each_network_once_per_distinct_input(bench, tmp_path):
    """A real study (the CLI): 2 preprocessings x 2 images x 3 x 3 U-Net post-processing settings."""
    res = bench.measure("unet", tmp_path, tmp_path / "models", n_pre=2, stability=False)
    before, after = res["before"][0], res["after"][0]
    assert before.trials == after.trials == 18
    assert before.forward_passes == 18 * 2  # every trial ran the network on each image
    assert after.forward_passes == after.keys == bench.expected_keys(2, False) == 4


@pytest.mark.slow
def test_stability_perturbations_are_cached_per_key(bench, tmp_path):
    res = bench.measure("unet", tmp_path, tmp_path / "models", n_pre=1, stability=True)
    before, after = res["before"][0], res["after"][0]
    assert before.forward_passes == 9 * 2 * 2  # image + noise-perturbed image, every trial
    assert after.forward_passes == after.keys == bench.expected_keys(1, True) == 4


def test_a_family_without_the_split_still_runs_whole(image):
    """A family written before the split (only ``segment``) is run whole by ``cached_call``."""
    from opsef_opt.segment.base import Segmentation, Segmenter
    from opsef_opt.segment.classical import threshold_watershed

    class Whole(Segmenter):
        family = "whole_test"

        def segment(self, image, **params):
            return Segmentation(threshold_watershed(image, min_distance=4))

    model = Whole()
    assert not model.splits
    calls = []
    seg = model.cached_call(image, "YX", lambda inf, compute: calls.append(1))
    assert calls == [] and model.split_params({"a": 1}) == ({"a": 1}, {})
    np.testing.assert_array_equal(seg.labels, threshold_watershed(image, min_distance=4))


def test_stability_runs_only_when_an_enabled_score_uses_it():
    """Proxies of cost "model" (stability) get a re-segmenter only when an enabled score uses them."""
    from opsef_opt.config import score_spec
    from opsef_opt.score.objective import Objective
    from opsef_opt.search.trial import _needs_model_runs

    default = score_spec({})
    assert default.weights["stability"] == 0.0
    assert not _needs_model_runs(Objective(default, "gt_f1"))
    assert not _needs_model_runs(Objective(default, "proxy"))
    assert _needs_model_runs(Objective(default, "tags"))
    assert _needs_model_runs(Objective(default, "proxy.stability"))
    weighted = score_spec({"proxies": {"stability": {"weight": 0.5}}})
    assert _needs_model_runs(Objective(weighted, "proxy"))
