"""Unsupervised proxies on real images: each ranks the failures it is designed to see below a good result.

Broken segmentations, the same for every proxy:

(a) ``empty``: all background;
(b) ``giant``: the foreground after a large closing (radius 1/16 of the
    image) and hole filling, as ONE label: it merges neighbours and the
    background between them;
(c) ``salt``: 5% random pixels, each its own label.

Good = the ground-truth labels (for stability, which needs a pipeline: a
classical Otsu + watershed pipeline, against segment functions that produce
the broken cases from the perturbed input).

What each proxy detects (asserted below on dsb2018_256, mitocheck and
StarDist's test image):

==========  =======  ============================  =====  ===========================================
proxy       empty    giant                         salt   blind spot (by design)
==========  =======  ============================  =====  ===========================================
consensus   yes      yes                           yes    errors shared by most of the pool
stability   yes      NO                            yes    consistent errors: the same merge every run
shape       yes      yes (low solidity)            yes    wrong objects of plausible shape and size
contrast    yes      yes (diluted inside)          yes    missed objects, splits/merges of touching
                                                          objects (see ``separation``)
confidence  NaN      NaN                           NaN    models without confidence; confident errors
sanity      yes (0)  only above 1/6 of the image   yes    anything plausible-looking: it is a gate
combine     yes      yes                           yes
==========  =======  ============================  =====  ===========================================
"""
from __future__ import annotations

import hashlib
import math

import numpy as np
import pytest
import tifffile
from conftest import shared
from scipy import ndimage as ndi
from stardist.matching import matching

from opsef_opt.params import check_kwargs
from opsef_opt.preprocess import run_chain
from opsef_opt.score.proxies import (
    PERTURBATIONS,
    ConsensusAccumulator,
    combine,
    confidence_score,
    consensus_labels,
    consensus_score,
    contrast_score,
    default_weights,
    match_instances,
    mean_confidence,
    perturb,
    sanity_score,
    shape_score,
    solidity,
    stability_score,
    unperturb_labels,
    valid_region,
)
from opsef_opt.score.registry import PROXIES, ImageResult
from opsef_opt.segment import load_segmenter

IMAGES = ["dsb2018_256", "mitocheck", "stardist_nuclei"]
BROKEN = ["empty", "giant", "salt"]


# --------------------------------------------------------------------------- data


def _load(name: str) -> tuple[np.ndarray, np.ndarray]:
    if name == "stardist_nuclei":
        from stardist.data import test_image_nuclei_2d

        img, lab = test_image_nuclei_2d(return_mask=True)
        return img, lab.astype(np.int32)
    return (tifffile.imread(shared("gt", name, "image.tif")),
            tifffile.imread(shared("gt", name, "labels.tif")).astype(np.int32))


def giant(labels: np.ndarray) -> np.ndarray:
    """(b): closing by a disc of radius max(shape)/16 (via distance transforms), holes filled, one label."""
    r = max(labels.shape) // 16
    fg = np.pad(labels > 0, r + 1)
    dilated = ndi.distance_transform_edt(~fg) <= r
    closed = ndi.distance_transform_edt(dilated) > r
    return ndi.binary_fill_holes(closed[r + 1:-r - 1, r + 1:-r - 1]).astype(np.int32)


def salt(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """(c): 5% random pixels, each its own label."""
    rng = np.random.default_rng(seed)
    out = np.zeros(shape, np.int32)
    idx = rng.choice(out.size, out.size // 20, replace=False)
    out.flat[idx] = np.arange(1, idx.size + 1)
    return out


def broken(kind: str, truth: np.ndarray) -> np.ndarray:
    return {"empty": lambda: np.zeros_like(truth), "giant": lambda: giant(truth),
            "salt": lambda: salt(truth.shape)}[kind]()


_CLASSICAL = load_segmenter("classical")


def pipeline(source: np.ndarray, threshold: str = "otsu", min_distance: int = 6) -> np.ndarray:
    image, axes = run_chain(source, "YX", ())
    return _CLASSICAL(image, axes, threshold=threshold, min_distance=min_distance).labels


_CACHE: dict[str, dict] = {}


def case(name: str) -> dict:
    """Image, truth, reference intensities and a consensus of 6 classical pipelines (cached)."""
    if name not in _CACHE:
        img, truth = _load(name)
        raw, _ = run_chain(img, "YX", ())
        pool = [pipeline(img, t, d) for t in ("otsu", "li", "triangle") for d in (4, 8)]
        _CACHE[name] = dict(img=img, truth=truth, raw=raw, consensus=consensus_labels(pool))
    return _CACHE[name]


def result(name: str, labels: np.ndarray, **kw) -> ImageResult:
    c = case(name)
    return ImageResult(labels, c["raw"], raw=c["raw"], consensus=kw.pop("consensus", c["consensus"]), **kw)


def value(proxy, name: str, labels: np.ndarray, **kw) -> float:
    key = next(n for n, p in PROXIES.items() if p.func is proxy)
    return proxy(result(name, labels), **kw)[key]


# --------------------------------------------------------------------------- detection on real images


@pytest.mark.parametrize("name", IMAGES)
@pytest.mark.parametrize("proxy", [consensus_score, shape_score, contrast_score], ids=lambda f: f.__name__)
def test_proxy_ranks_every_broken_case_below_good(name, proxy):
    truth = case(name)["truth"]
    good = value(proxy, name, truth)
    assert good > 0.2
    for kind in BROKEN:
        bad = value(proxy, name, broken(kind, truth))
        assert bad < good, f"{proxy.__name__} on {name}: {kind} {bad:.3f} >= good {good:.3f}"


@pytest.mark.parametrize("name", IMAGES)
def test_sanity_gate_zero_for_empty_and_salt_and_for_giants_above_a_sixth(name):
    truth = case(name)["truth"]
    assert sanity_score(result(name, truth))["sanity"] == 1.0
    assert sanity_score(result(name, broken("empty", truth)))["sanity"] == 0.0
    assert sanity_score(result(name, broken("salt", truth)))["sanity"] == 0.0
    out = sanity_score(result(name, broken("giant", truth)))
    share = out["sanity.max_object_share"]
    assert out["sanity.count"] == 1
    # the rule: no penalty up to 1/6 of the image, 0 from 1/3 on
    if share <= 1 / 6:
        assert out["sanity"] == 1.0
    else:
        assert out["sanity"] == pytest.approx(min(max((1 / 3 - share) / (1 / 6), 0.0), 1.0))
    assert out["sanity.fg_fraction"] >= share


@pytest.mark.parametrize("name", IMAGES)
@pytest.mark.parametrize("with_consensus", [True, False], ids=["consensus", "no-consensus"])
def test_combine_ranks_all_broken_cases_below_good(name, with_consensus):
    truth = case(name)["truth"]
    weights = default_weights()

    def combined(labels):
        r = result(name, labels, **({} if with_consensus else {"consensus": None}))
        values = {}
        for proxy in PROXIES.names():
            if PROXIES.get(proxy).cost == "cheap":
                values.update(PROXIES.get(proxy).func(r))
        return combine(values, weights)

    good = combined(truth)
    assert good > 0.4
    for kind in BROKEN:
        assert combined(broken(kind, truth)) < good - 0.1, kind


def _seeded_salt(source: np.ndarray) -> np.ndarray:
    """Salt noise that is a deterministic function of the input (like a model picking up noise)."""
    seed = int.from_bytes(hashlib.blake2b(np.ascontiguousarray(source).tobytes(), digest_size=8).digest(), "little")
    return salt(source.shape[:2], seed)


@pytest.mark.parametrize("name", ["dsb2018_256", "mitocheck"])
def test_stability_detects_empty_and_salt_but_not_a_consistent_merge(name):
    c = case(name)
    img = c["img"]
    segments = {
        "good": pipeline,
        "empty": lambda s: np.zeros(s.shape[:2], np.int32),
        "giant": lambda s: giant(pipeline(s)),
        "salt": _seeded_salt,
    }
    values = {}
    for kind, seg in segments.items():
        r = ImageResult(seg(img), c["raw"], source=img, source_axes="YX", segment=seg)
        values[kind] = stability_score(r, perturbations=["noise", "zoom_out"])
    assert values["good"]["stability"] > 0.75
    assert values["empty"]["stability"] == 0.0
    assert values["salt"]["stability"] < 0.2
    # by design: the same merge on every perturbed input looks perfectly stable
    assert values["giant"]["stability"] > 0.9
    assert set(values["good"]) == {"stability", "stability.noise", "stability.zoom_out"}


def test_stability_nan_without_segment_and_works_for_a_projected_stack():
    c = case("mitocheck")
    assert math.isnan(stability_score(ImageResult(c["truth"], c["raw"]))["stability"])
    stack = np.stack([c["img"], c["img"] // 2, c["img"] // 3])  # ZYX; the pipeline projects it

    def seg(source):
        return pipeline(source.max(axis=0))

    r = ImageResult(seg(stack), c["raw"], source=stack, source_axes="ZYX", segment=seg)
    out = stability_score(r, perturbations=["shift", "zoom_in"])
    assert out["stability"] > 0.75 and set(out) == {"stability", "stability.shift", "stability.zoom_in"}
    assert stability_score(r, perturbations="noise")["stability"] > 0.75  # comma-separated form


# --------------------------------------------------------------------------- degenerate inputs, 3D


@pytest.mark.parametrize("proxy", [p.func for _, p in PROXIES.items()], ids=lambda f: f.__name__)
def test_no_objects_scores_zero(proxy):
    c = case("mitocheck")
    r = ImageResult(np.zeros_like(c["truth"]), c["raw"], raw=c["raw"], consensus=c["consensus"],
                    confidence={1: 0.9}, source=c["img"], segment=pipeline)
    out = proxy(r)
    assert out[next(k for k in out if "." not in k)] == 0.0


@pytest.mark.parametrize("proxy", [p.func for _, p in PROXIES.items()], ids=lambda f: f.__name__)
def test_3d_labels_do_not_crash(proxy):
    truth = case("mitocheck")["truth"][100:200, 50:150]
    vol = np.stack([truth, truth, np.zeros_like(truth), truth])
    raw = (vol > 0).astype(np.float32) * 0.8 + 0.1
    def seg(source):
        return ndi.label(source > 0.5)[0]

    vol = seg(raw)
    r = ImageResult(vol, raw, raw=raw, consensus=vol, confidence={int(i): 0.5 for i in np.unique(vol)[1:]},
                    source=raw, source_axes="ZYX", segment=seg)
    out = proxy(r)
    main = out[next(k for k in out if "." not in k)]
    assert math.isnan(main) or 0.0 <= main <= 1.0


def test_shape_parts_on_3d_skip_solidity():
    vol = np.zeros((4, 30, 30), np.int32)
    vol[1:3, 2:8, 2:8], vol[1:3, 12:18, 12:18], vol[1:3, 20:26, 2:8] = 1, 2, 3
    out = shape_score(ImageResult(vol, vol.astype(np.float32)))
    assert math.isnan(out["shape.solidity"]) and out["shape"] == 1.0


# --------------------------------------------------------------------------- consensus


def test_consensus_of_identical_candidates_reproduces_them():
    truth = case("stardist_nuclei")["truth"]
    acc = ConsensusAccumulator(truth.shape)
    for _ in range(3):
        acc.add(truth)
    assert acc.n == 3
    cons = acc.labels()
    assert match_instances(truth, cons).f1 == 1.0
    assert consensus_score(ImageResult(truth, truth, consensus=cons))["consensus"] == 1.0


def test_consensus_exclude_equals_consensus_of_the_others():
    c = case("dsb2018_256")
    others = [pipeline(c["img"], t, d) for t, d in (("otsu", 3), ("li", 6), ("triangle", 10), ("yen", 6))]
    x = giant(others[0])
    acc = ConsensusAccumulator(x.shape)
    for lab in [*others[:2], x, *others[2:]]:
        acc.add(lab)
    np.testing.assert_array_equal(acc.labels(exclude=x), consensus_labels(others))
    assert not np.array_equal(acc.labels(), consensus_labels(others))


def test_consensus_majority_semantics_by_hand():
    a = np.zeros((6, 10), np.int32)
    a[1:5, 1:9] = 1                      # one object
    b = a.copy()
    b[1:5, 5:9] = 2                      # the same, split in two
    c = np.zeros_like(a)
    c[1:5, 1:5] = 7                      # only the left half
    acc = ConsensusAccumulator(a.shape)
    for lab in (a, b, c):
        acc.add(lab)
    # foreground: 2 of 3 votes everywhere in a's object; joins across the split: a only (1 of 3)
    cons = acc.labels(min_size=1)
    assert cons.max() == 2
    assert len(np.unique(cons[1:5, 1:5])) == 1 and len(np.unique(cons[1:5, 5:9])) == 1
    assert cons[2, 2] != cons[2, 6] and (cons[a == 0] == 0).all()
    # quorum 2/3: a pixel needs all three votes, so only the left half survives
    cons = acc.labels(quorum=2 / 3, min_size=1)
    assert cons.max() == 1 and (cons > 0).sum() == 16
    # without b, a and c disagree on the right half: 1 of 2 votes is not a majority
    cons = acc.labels(exclude=b, min_size=1)
    assert cons.max() == 1 and (cons > 0).sum() == 16
    # small components are dropped
    assert acc.labels(quorum=2 / 3, min_size=17).max() == 0
    with pytest.raises(ValueError, match="no candidate"):
        ConsensusAccumulator(a.shape).labels()
    with pytest.raises(ValueError, match="shape"):
        acc.add(np.zeros((5, 5), np.int32))


def test_consensus_3d_and_count_ratio_sign():
    vol = np.zeros((3, 12, 12), np.int32)
    vol[:, 2:6, 2:6], vol[:, 7:11, 7:11] = 1, 2
    assert match_instances(vol, consensus_labels([vol, vol])).f1 == 1.0
    merged = (vol > 0).astype(np.int32)
    split = vol.copy()
    split[:, 2:6, 4:6] = 3
    assert consensus_score(ImageResult(merged, vol, consensus=vol))["consensus.count_ratio"] < 0
    assert consensus_score(ImageResult(split, vol, consensus=vol))["consensus.count_ratio"] > 0
    assert math.isnan(consensus_score(ImageResult(vol, vol))["consensus"])


@pytest.fixture(scope="module")
def stardist_matching():
    """StarDist's matching, compiled once (its numba JIT takes about 1.5 s on the first call)."""
    one = np.ones((2, 2), np.int32)
    matching(one, one)
    return matching


def test_sparse_matching_equals_stardist(stardist_matching):
    c = case("stardist_nuclei")
    truth = c["truth"]
    crop = (slice(0, 160), slice(0, 160))  # StarDist's dense assignment is slow for salt noise
    pairs = [(truth, np.roll(truth, 3, axis=1)), (truth, c["consensus"]), (c["consensus"], truth[::-1]),
             (truth[crop], salt(truth[crop].shape)), (truth[crop], giant(truth)[crop])]
    for truth, pred in pairs:
        ours, ref = match_instances(truth, pred), stardist_matching(truth, pred)
        assert (ours.tp, ours.n_ref, ours.n_pred) == (ref.tp, ref.n_true, ref.n_pred)
        assert ours.f1 == pytest.approx(ref.f1)
        if ref.tp:
            assert ours.mean_iou == pytest.approx(ref.mean_matched_score)
    # a tie at exactly IoU 0.5: one 2-pixel object, two 1-pixel objects
    a = np.array([[1, 1]])
    b = np.array([[1, 2]])
    assert match_instances(a, b).tp == stardist_matching(a, b).tp == 1


# --------------------------------------------------------------------------- perturbations


@pytest.mark.parametrize("name", ["shift", "zoom_in", "zoom_out"])
def test_perturb_then_unperturb_labels_is_nearly_identity(name, stardist_matching):
    truth = case("dsb2018_256")["truth"]
    moved = perturb(truth, "YX", name, order=0)
    back = unperturb_labels(moved, name, truth.shape)
    region = valid_region(name, truth.shape)
    assert back.shape == truth.shape
    assert stardist_matching(truth[region], back[region]).f1 > 0.95


def test_perturb_shapes_and_axes():
    rgb = np.random.default_rng(0).random((40, 50, 3)).astype(np.float32)
    stack = np.random.default_rng(0).random((3, 40, 50)).astype(np.float32)
    for name in PERTURBATIONS:
        p = perturb(rgb, "YXC", name)
        assert p.shape[2] == 3 and p.dtype == np.float32
        q = perturb(stack, "ZYX", name)
        assert q.shape[0] == 3 and q.shape[1:] == p.shape[:2]
    assert perturb(rgb, "YXC", "zoom_in").shape[:2] == (44, 55)
    assert perturb(rgb, "YXC", "zoom_out").shape[:2] == (36, 45)
    shifted = perturb(stack, "ZYX", "shift", shift=3)
    np.testing.assert_array_equal(shifted[:, 3:, 3:], stack[:, :-3, :-3])
    with pytest.raises(ValueError, match="unknown perturbation"):
        perturb(rgb, "YXC", "rotate")


def test_noise_is_deterministic_with_a_seed():
    img = case("mitocheck")["img"]
    a = perturb(img, "YX", "noise", seed=3)
    np.testing.assert_array_equal(a, perturb(img, "YX", "noise", seed=3))
    assert not np.array_equal(a, perturb(img, "YX", "noise", seed=4))
    lo, hi = np.percentile(img, (1, 99))
    assert np.std(a - img) == pytest.approx(0.05 * (hi - lo), rel=0.05)


# --------------------------------------------------------------------------- shape, contrast, confidence


def test_solidity_of_digital_shapes():
    lab = np.zeros((40, 40), np.int32)
    yy, xx = np.mgrid[:40, :40]
    lab[(yy - 10) ** 2 + (xx - 10) ** 2 <= 36] = 1        # disc: digitally convex
    lab[2:5, 25:38] = 2                                   # rectangle
    lab[20:35, 20:35] = 3
    lab[20:30, 25:35] = 0                                 # an L shape
    lab[38, 5] = 4                                        # one pixel
    lab[25:35, 5] = 5                                     # a line
    s = solidity(lab)
    np.testing.assert_allclose(s[[0, 1, 3, 4]], 1.0)
    assert s[2] == pytest.approx(125 / 170)  # hull: 225 pixels minus the 55 above the diagonal cut


def test_contrast_is_symmetric_for_dark_objects():
    c = case("stardist_nuclei")
    bright = contrast_score(ImageResult(c["truth"], c["raw"], raw=c["raw"]))
    dark = contrast_score(ImageResult(c["truth"], 1 - c["raw"], raw=1 - c["raw"]))
    for k in bright:
        assert dark[k] == pytest.approx(bright[k], abs=1e-4), k


def test_contrast_falls_back_to_the_image_channels_averaged():
    c = case("mitocheck")
    rgb = np.repeat(c["raw"][..., None], 3, axis=-1)
    assert contrast_score(ImageResult(c["truth"], rgb))["contrast"] == pytest.approx(
        contrast_score(ImageResult(c["truth"], c["raw"], raw=c["raw"]))["contrast"], abs=1e-5)


def test_confidence():
    lab = np.zeros((10, 10), np.int32)
    lab[:2, :2], lab[5:, 5:] = 1, 2                        # areas 4 and 25
    assert math.isnan(confidence_score(ImageResult(lab, lab))["confidence"])
    assert math.isnan(confidence_score(ImageResult(lab, lab, confidence={}))["confidence"])
    assert math.isnan(mean_confidence(lab, {7: 0.5}))
    r = ImageResult(lab, lab, confidence={1: 0.2, 2: 0.9, 3: 0.0})
    assert confidence_score(r)["confidence"] == pytest.approx((4 * 0.2 + 25 * 0.9) / 29)


# --------------------------------------------------------------------------- combine, registry


def test_combine_renormalises_over_nan_and_applies_the_gate():
    w = {"a": 1.0, "b": 3.0, "c": 2.0, "sanity": 0.0}
    assert combine({"a": 1.0, "b": 0.0, "c": float("nan"), "sanity": 1.0}, w) == pytest.approx(0.25)
    assert combine({"a": 1.0, "b": 0.0, "sanity": 0.5}, w) == pytest.approx(0.125)
    assert combine({"a": 1.0, "b": 0.0, "sanity": 0.5}, w, gate=None) == pytest.approx(0.25)
    assert combine({"a": 0.8, "sanity": float("nan")}, w) == pytest.approx(0.8)  # a NaN gate does not gate
    assert combine({"c": float("nan"), "sanity": 1.0}, w) == 0.0
    assert combine({"a": 1.0, "a.detail": 5.0}, {"a": 0.0}) == 0.0


def test_registry_declares_every_proxy_with_valid_defaults():
    assert set(PROXIES.names()) >= {"consensus", "stability", "shape", "contrast", "confidence", "sanity"}
    assert PROXIES.get("stability").cost == "model"
    assert default_weights()["sanity"] == 0.0 and default_weights()["consensus"] > 0
    for name, proxy in PROXIES.items():
        check_kwargs(proxy.params, {p.name: p.default for p in proxy.params}, f"proxies.{name}")
        assert proxy.doc
    assert shape_score(ImageResult(case("mitocheck")["truth"], case("mitocheck")["raw"]),
                       area="300,1200")["shape.in_range"] == 1.0


@pytest.mark.parametrize("name", IMAGES)
def test_separation_ranks_broken_cases_below_good_and_ignores_inversion(name):
    from opsef_opt.score.proxies import separation_score

    c = case(name)
    good = separation_score(result(name, c["truth"]))["separation"]
    for kind in BROKEN:
        assert separation_score(result(name, broken(kind, c["truth"])))["separation"] < good, kind
    dark = separation_score(ImageResult(c["truth"], 1 - c["raw"], raw=1 - c["raw"]))["separation"]
    assert dark == pytest.approx(good, abs=1e-4)


def test_window_extremes_equal_ndimage_filters():
    """The contrast proxy's fast box max/min give ndimage's values exactly, edges included (2D and 3D)."""
    from scipy import ndimage as ndi

    from opsef_opt.score.proxies.contrast import _window_extreme

    rng = np.random.default_rng(3)
    for shape in [(1, 9), (40, 57), (5, 6, 7)]:
        lab = rng.integers(0, 40, shape).astype(np.int32)
        for r in (1, 2, 4):
            assert np.array_equal(_window_extreme(lab, r, np.maximum),
                                  ndi.maximum_filter(lab, size=2 * r + 1, mode="nearest"))
        assert np.array_equal(_window_extreme(lab, 1, np.minimum), ndi.grey_erosion(lab, size=(3,) * lab.ndim))


def test_raw_image_values_are_computed_once_per_image_object():
    """What every candidate shares (the raw image's gradient) is computed once; a new image is not served stale values."""
    from opsef_opt.score.proxies._derived import derived

    calls = []

    def grad(a):
        calls.append(1)
        return a * 2

    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    assert derived(a, "test", grad) is derived(a, "test", grad)
    assert len(calls) == 1
    b = a.copy()  # equal values, another image: computed for it
    derived(b, "test", grad)
    assert len(calls) == 2
    del a
    c = np.full((3, 4), 7, np.float32)  # may reuse a's id: must not get a's value
    assert np.array_equal(derived(c, "test", grad), c * 2)


def test_a_candidates_proxies_share_its_relabelling_and_areas():
    """The proxies of one candidate relabel it and count its areas once; the shared areas cannot be changed."""
    from opsef_opt.score.proxies._derived import RECENT_LABELS
    from opsef_opt.score.proxies._match import object_areas, relabel

    lab = np.array([[0, 5, 5], [9, 9, 0]], np.int32)
    first, n = relabel(lab)
    assert n == 2 and relabel(lab)[0] is first and np.array_equal(first, [[0, 1, 1], [2, 2, 0]])
    areas = object_areas(first)
    assert object_areas(first) is areas and list(areas) == [2, 2, 2]
    with pytest.raises(ValueError):
        areas[1] = 0
    others = [np.array([[i, i]], np.int32) for i in range(1, RECENT_LABELS + 2)]
    for o in others:
        relabel(o)
    assert relabel(lab)[0] is not first  # older label images are not kept
