"""The plausibility veto: wrong polarity, background tiling and one dominant object rank below every plausible result.

Real images throughout: the fluorescence GT sets in ../shared/data/gt (their
labels must pass; the same images segmented after ``invert``, or their
background cut into tiles, must fail) and the shared H&E image, where half
of a realistic space (grey without invert, haematoxylin with invert)
segments the background.
"""
from __future__ import annotations

import math
import time

import numpy as np
import pytest
import tifffile
from conftest import shared
from scipy import ndimage as ndi

from opsef_opt.config import score_spec
from opsef_opt.io.dataset import Item
from opsef_opt.params import check_kwargs
from opsef_opt.preprocess import run_chain
from opsef_opt.score.objective import Objective
from opsef_opt.score.proxies import (background_peak, combine, consensus_labels, default_weights,
                                     enclosed_background, expected_polarity, plausible_score, polarity)
from opsef_opt.score.registry import PROXIES, ImageResult
from opsef_opt.search.trial import reference_intensities
from opsef_opt.segment import load_segmenter

_CLASSICAL = load_segmenter("classical")
INVERT = ("invert", "invert", {})
GREY = ("color", "grayscale", {})
HEMA = ("color", "stain", {"stain": "hematoxylin"})

#: (dataset, image) for every fluorescence GT image in ../shared/data/gt
FLUO = [("dsb2018_256", None), ("mitocheck", None)] + [
    (ds, name) for ds, names in {
        "bbbc007_sparse": ["17P1_POS0013_D_1UL", "20P1_POS0005_D_1UL", "20P1_POS0007_D_1UL", "20P1_POS0010_D_1UL",
                           "A9_p7d", "AS_09125_040701150004_A02f00d0"],
        "kromp2020_fluo_nuclei_dense": ["Ganglioneuroblastoma_4", "Ganglioneuroblastoma_7", "otherspecimen_2"],
        "kromp2020_fluo_nuclei_lowsnr_confocal": ["Ganglioneuroblastoma_6", "normal_36", "otherspecimen_3",
                                                  "otherspecimen_4"],
    }.items() for name in names]


def _fluo(ds: str, name: str | None) -> tuple[np.ndarray, np.ndarray]:
    if name is None:
        return (tifffile.imread(shared("gt", ds, "image.tif")),
                tifffile.imread(shared("gt", ds, "labels.tif")).astype(np.int32))
    return (tifffile.imread(shared("gt", ds, "images", f"{name}.tif")),
            tifffile.imread(shared("gt", ds, "labels", f"{name}.tif")).astype(np.int32))


def _raw(image: np.ndarray, axes: str = "YX") -> np.ndarray:
    """The reference intensities a trial sees (channels averaged, scaled to [0, 1])."""
    item = Item("x", "x", image, axes, None, "x.tif", "x")
    shape = image.shape[:-1] if axes.endswith("C") else image.shape
    return reference_intensities(item, shape, np.zeros(0))


def _segment(image: np.ndarray, axes: str, steps, **params) -> tuple[np.ndarray, np.ndarray]:
    pre, out_axes = run_chain(image, axes, steps)
    return _CLASSICAL(pre, out_axes, **params).labels, pre


def _check(labels: np.ndarray, raw: np.ndarray, **options) -> dict[str, float]:
    return plausible_score(ImageResult(labels, raw, raw=raw), **options)


def _background_tiles(truth: np.ndarray, size: int = 32) -> np.ndarray:
    """The background cut into ``size`` px squares, each its own object: objects that tile the background."""
    yy, xx = np.indices(truth.shape)
    return np.where(truth == 0, (yy // size) * 10_000 + xx // size + 1, 0).astype(np.int32)


# --------------------------------------------------------------------------- fluorescence GT sets


@pytest.mark.parametrize("ds,name", FLUO, ids=[f"{d}/{n}" if n else d for d, n in FLUO])
def test_gt_passes_and_inverted_segmentations_fail(ds, name):
    image, truth = _fluo(ds, name)
    raw = _raw(image)
    assert expected_polarity(raw) == 1.0  # bright nuclei on a dark, narrow background peak
    good = _check(truth, raw)
    assert good["plausible"] == 1.0, good
    assert good["plausible.polarity"] > 0.3

    inverted, _ = _segment(image, "YX", [INVERT], threshold="otsu")
    bad = _check(inverted, raw)
    assert bad["plausible"] == 0.0 and bad["plausible.wrong_polarity"] == 1.0, bad
    assert bad["plausible.polarity"] < -0.3

    tiles = _check(_background_tiles(truth), raw)
    assert tiles["plausible"] == 0.0 and tiles["plausible.wrong_polarity"] == 1.0
    # the tiling check alone (polarity switched off) sees it too, where the tiles cover most of the image
    # (kromp2020 dense otherspecimen_2: nuclei cover half of it, so do the tiles, and only polarity catches them)
    alone = _check(_background_tiles(truth), raw, expect="any")
    assert alone["plausible.polarity"] == 0.0 and alone["plausible.wrong_polarity"] == 0.0
    assert alone["plausible.enclosed"] > 0.5
    if np.mean(truth == 0) > 0.55:
        assert alone["plausible"] == 0.0 and alone["plausible.tiling"] == 1.0, alone


# --------------------------------------------------------------------------- H&E: the case, end to end


@pytest.fixture(scope="module")
def he_candidates():
    """The shared H&E image (2x2 binned, for speed) through a space a user would write: grey / haematoxylin,
    with and without invert, classical Otsu and Li; scored as a trial scores them (default proxies and
    weights, consensus of the pool, raw reference intensities)."""
    he = tifffile.imread(shared("raw", "he_example.tif"))
    h, w = he.shape[0] // 2 * 2, he.shape[1] // 2 * 2
    he = he[:h, :w].reshape(h // 2, 2, w // 2, 2, 3).mean(axis=(1, 3)).astype(np.uint8)
    chains = {"grey": [GREY], "grey+invert": [GREY, INVERT], "hematoxylin": [HEMA],
              "hematoxylin+invert": [HEMA, INVERT]}
    outputs = {f"{c} {t}": _segment(he, "YXC", steps, threshold=t, min_distance=3)
               for c, steps in chains.items() for t in ("otsu", "li")}
    item = Item("he", "he", he, "YXC", None, "he_example.tif", "he")
    raw = reference_intensities(item, he.shape[:2], np.zeros(0))
    pool = consensus_labels([labels for labels, _ in outputs.values()])
    spec = score_spec()
    objective = Objective(spec, "proxy")
    metrics = {k: objective.image_metrics(ImageResult(labels, pre, raw=raw, consensus=pool))
               for k, (labels, pre) in outputs.items()}
    return spec, metrics


def test_inverted_polarity_pipelines_on_he_rank_last(he_candidates):
    spec, metrics = he_candidates
    wrong = {k: m for k, m in metrics.items() if k.startswith(("grey ", "hematoxylin+invert"))}
    right = {k: m for k, m in metrics.items() if k not in wrong}
    assert len(wrong) == len(right) == 4
    for k, m in right.items():
        assert m["proxy.plausible"] == 1.0 and m["proxy.plausible.polarity"] > 0.3, k
    for k, m in wrong.items():
        assert m["proxy.plausible"] == 0.0 and m["proxy.plausible.wrong_polarity"] == 1.0, k
        assert m["proxy.plausible.expected"] == -1.0  # nuclei are dark: the glass is the narrow bright peak
        # the other proxies alone rate it like a real candidate (the issue: 0.51-0.59 against 0.66 at the top)
        values = {p.name: m[f"proxy.{p.name}"] for p in spec.proxies}
        assert combine(values, spec.weights, spec.gate, veto=None) > 0.4, k
    assert max(m["proxy"] for m in wrong.values()) < 0 <= min(m["proxy"] for m in right.values())
    ranking = sorted(metrics, key=lambda k: -metrics[k]["proxy"])
    assert set(ranking[-4:]) == set(wrong)


# --------------------------------------------------------------------------- ambiguity, options, 3D


def test_ambiguous_raw_image_never_vetoes():
    rng = np.random.default_rng(0)
    # a smooth ramp with texture: no narrow background peak at either end
    # (not clipped: pixels piled up at 0 would be exactly a narrow dark background peak)
    raw = np.linspace(0.1, 0.9, 256, dtype=np.float32)[None, :].repeat(256, 0)
    raw += rng.normal(0, 0.03, raw.shape).astype(np.float32)
    level, width = background_peak(raw)
    assert width > 0.15 and expected_polarity(raw) == 0.0
    dark_half, _ = ndi.label(raw < 0.3)
    out = _check(dark_half, raw)
    assert out["plausible.expected"] == 0.0 and out["plausible.polarity"] == 0.0
    assert out["plausible.wrong_polarity"] == 0.0
    # a constant image has no peak position at all: passes too
    flat = np.full((64, 64), 0.5, np.float32)
    assert math.isnan(background_peak(flat)[0]) and expected_polarity(flat) == 0.0
    assert _check(dark_half[:64, :64], flat)["plausible.wrong_polarity"] == 0.0


def test_tissue_crop_dominated_by_nuclei_is_ambiguous_not_wrong():
    """In a crop of dense lymphocytes the mode is the nuclei: the wide peak keeps the check from vetoing."""
    he = tifffile.imread(shared("raw", "he_example.tif"))
    crop = he[128:384, 384:640]
    raw = _raw(crop, "YXC")
    level, width = background_peak(raw)
    assert level < 0.5 and width > 0.15  # the most frequent intensity is dark, but not an empty background
    assert expected_polarity(raw) == 0.0


def test_expect_option_states_the_polarity():
    image, truth = _fluo("dsb2018_256", None)
    raw = _raw(image)
    assert _check(truth, raw, expect="bright")["plausible"] == 1.0
    assert _check(truth, raw, expect="dark")["plausible.wrong_polarity"] == 1.0
    assert _check(truth, raw, expect="any")["plausible"] == 1.0
    options = check_kwargs(PROXIES.get("plausible").params, {"expect": "dark", "max_enclosed": 0.6}, "plausible")
    assert options["expect"] == "dark" and options["max_enclosed"] == 0.6
    defaults = {p.name: p.default for p in PROXIES.get("plausible").params}
    assert defaults == {"expect": "auto", "max_peak_width": 0.15, "peak_end": 0.25, "min_polarity": 0.05,
                        "max_enclosed": 0.5, "min_fg_tiling": 0.5, "max_largest_share": 0.5, "min_others": 10,
                        "min_area": 16}
    with pytest.raises(ValueError, match="expect"):
        _check(truth, raw, expect="sideways")


def test_mostly_one_object():
    image, truth = _fluo("dsb2018_256", None)
    raw = _raw(image)
    assert _check(truth, raw)["plausible.largest_share"] < 0.5
    merged = truth.copy()
    ids = np.unique(truth)[1:]
    merged[np.isin(truth, ids[: len(ids) * 2 // 3])] = ids[0]  # two thirds of the nuclei as one object
    out = _check(merged, raw)
    assert out["plausible.largest_share"] > 0.5 and out["plausible.one_object"] == 1.0
    assert out["plausible"] == 0.0
    # the same share with only a few others is one large object among few: passes
    few = np.where(np.isin(merged, [ids[0]] + list(ids[-3:])), merged, 0)
    assert _check(few, raw)["plausible.one_object"] == 0.0


def test_three_d_labels():
    image = tifffile.imread(shared("gt", "plantseg_gonuclear_3d_nuclei", "images", "gonuclear_1136_mini.tif"))
    truth = tifffile.imread(shared("gt", "plantseg_gonuclear_3d_nuclei", "labels", "gonuclear_1136_mini.tif"))
    truth = truth.astype(np.int32)
    raw = _raw(image, "ZYX")
    out = _check(truth, raw)  # very noisy: no narrow background peak, so no polarity check
    assert out["plausible"] == 1.0 and out["plausible.expected"] == 0.0
    assert all(math.isfinite(v) for v in out.values())
    zz, yy, xx = np.indices(truth.shape)
    blocks = np.where(truth == 0, (zz // 20) * 100 + (yy // 20) * 10 + xx // 20 + 1, 0).astype(np.int32)
    assert _check(truth, raw, expect="bright")["plausible"] == 1.0
    assert _check(blocks, raw, expect="bright")["plausible.wrong_polarity"] == 1.0
    # tiling in 3D: balls inside a volume, the background around them cut into blocks
    balls = np.zeros((40, 40, 40), np.int32)
    for i, c in enumerate([(10, 10, 10), (10, 28, 20), (28, 12, 26), (26, 28, 12)], 1):
        balls[(zz[:40, :40, :40] - c[0]) ** 2 + (yy[:40, :40, :40] - c[1]) ** 2
              + (xx[:40, :40, :40] - c[2]) ** 2 <= 36] = i
    tiles = np.where(balls == 0, (zz[:40, :40, :40] // 20) * 4 + (yy[:40, :40, :40] // 20) * 2
                     + xx[:40, :40, :40] // 20 + 1, 0).astype(np.int32)
    volume = np.where(balls > 0, 0.8, 0.1).astype(np.float32)
    assert _check(balls, volume)["plausible"] == 1.0
    out = _check(tiles, volume, expect="any")
    assert out["plausible.enclosed"] == 1.0 and out["plausible.tiling"] == 1.0 and out["plausible"] == 0.0


def test_no_objects_scores_zero_and_no_reference_skips_polarity():
    raw = np.random.default_rng(0).random((32, 32)).astype(np.float32)
    out = _check(np.zeros((32, 32), np.int32), raw)
    assert out["plausible"] == 0.0 and math.isnan(out["plausible.polarity"])
    assert out["plausible.wrong_polarity"] == out["plausible.tiling"] == out["plausible.one_object"] == 0.0
    labels = np.zeros((32, 32), np.int32)
    labels[8:16, 8:16] = 1
    out = plausible_score(ImageResult(labels, np.zeros(0, np.float32)))  # image of another shape, no raw
    assert out["plausible"] == 1.0 and math.isnan(out["plausible.polarity"])


def test_helpers():
    labels = np.zeros((20, 20), np.int32)
    labels[5:10, 5:10] = 1
    raw = np.zeros((20, 20), np.float32)
    raw[5:10, 5:10] = 1.0
    assert polarity(labels, raw, 1.0, 1.0) == pytest.approx(1.0)
    assert polarity(labels, raw, -1.0, 1.0) == pytest.approx(-1.0)
    assert math.isnan(polarity(np.zeros_like(labels), raw, 1.0))
    assert enclosed_background(labels) == 0.0
    ring = np.ones((20, 20), np.int32)
    ring[6:14, 6:14] = 0  # an object enclosing a background pocket, thick enough to survive the erosion
    assert enclosed_background(ring) == 1.0
    lines = np.ones((20, 20), np.int32)
    lines[:, 10] = 0  # a 1-px watershed line is not background
    assert enclosed_background(lines) == 1.0


def test_fast_on_a_1024_label_image():
    image, truth = _fluo("kromp2020_fluo_nuclei_lowsnr_confocal", "otherspecimen_4")
    raw = _raw(image)
    labels, _ = _segment(image, "YX", [INVERT], threshold="otsu")
    result = ImageResult(labels, raw, raw=raw)
    plausible_score(result)
    times = []
    for _ in range(5):
        t = time.process_time()
        plausible_score(result)
        times.append(time.process_time() - t)
    assert labels.size >= 1024 * 1024 and np.median(times) < 0.05, times


@pytest.mark.parametrize("name", ["dsb2018_256", "mitocheck", "stardist_nuclei"])
def test_table_row_empty_and_salt_fail_giant_is_sanitys_job(name):
    """The ``plausible`` row of the table in opsef_opt/score/proxies/__init__.py."""
    if name == "stardist_nuclei":
        from stardist.data import test_image_nuclei_2d

        image, truth = test_image_nuclei_2d(return_mask=True)
        truth = truth.astype(np.int32)
    else:
        image, truth = _fluo(name, None)
    raw = _raw(image)
    assert _check(np.zeros_like(truth), raw)["plausible"] == 0.0
    r = max(truth.shape) // 16  # one label over the foreground closed by a large disc
    fg = np.pad(truth > 0, r + 1)
    closed = ndi.distance_transform_edt(ndi.distance_transform_edt(~fg) <= r) > r
    giant = ndi.binary_fill_holes(closed[r + 1:-r - 1, r + 1:-r - 1]).astype(np.int32)
    assert _check(giant, raw)["plausible"] == 1.0
    rng = np.random.default_rng(0)
    salt = np.zeros(truth.shape, np.int32)
    idx = rng.choice(salt.size, salt.size // 20, replace=False)
    salt.flat[idx] = np.arange(1, idx.size + 1)
    out = _check(salt, raw)
    assert out["plausible.expected"] == 1.0 and abs(out["plausible.polarity"]) < 0.05
    assert out["plausible"] == 0.0  # objects without contrast on the side where nuclei are


# --------------------------------------------------------------------------- combine


def test_combine_ranks_an_implausible_result_below_every_plausible_one():
    w = {"shape": 2.0, "consensus": 0.5, "plausible": 3.0}  # the veto's own weight is never averaged in
    best_but_broken = {"shape": 1.0, "consensus": 1.0, "sanity": 1.0, "plausible": 0.0}
    worst_plausible = {"shape": 0.0, "consensus": 0.0, "sanity": 0.0, "plausible": 1.0}
    assert combine(best_but_broken, w) < 0.0 <= combine(worst_plausible, w)
    assert combine(best_but_broken, w) == pytest.approx(1.0 / 2 - 1)
    # plausible results keep their value; implausible ones keep their order among themselves
    assert combine({"shape": 0.6, "sanity": 1.0, "plausible": 1.0}, w) == pytest.approx(0.6)
    assert combine({"shape": 0.2, "plausible": 0.0}, w) < combine({"shape": 0.8, "plausible": 0.0}, w) < 0
    # a missing or NaN veto does not veto; veto=None switches it off
    assert combine({"shape": 0.6}, w) == pytest.approx(0.6)
    assert combine({"shape": 0.6, "plausible": float("nan")}, w) == pytest.approx(0.6)
    assert combine({"shape": 0.6, "plausible": 0.0}, {"shape": 2.0}, veto=None) == pytest.approx(0.6)
    # a trial's mean over images (2 of 4 plausible) lies in between
    half = combine({"shape": 0.6, "plausible": 0.5}, w)
    assert combine({"shape": 0.6, "plausible": 0.0}, w) < half < 0.6
    # nothing weighted and implausible: still below every plausible result
    assert combine({"plausible": 0.0}, {}) == -1.0


def test_plausible_is_registered_as_a_veto_with_weight_zero():
    assert "plausible" in PROXIES and default_weights()["plausible"] == 0.0
    assert {p.name for p in score_spec().proxies} >= {"plausible", "sanity"}
