"""Tiling large images and stitching the tiles' labels into one seamless label image (real images)."""
from __future__ import annotations

import logging

import numpy as np
import pytest
import tifffile
from scipy import ndimage as ndi

from opsef_opt.batch.tiles import Stitcher, TileBox, keep_core, plan_tiles, segment_tiled
from opsef_opt.preprocess import run_chain
from opsef_opt.segment import load_segmenter

from conftest import shared

#: the largest nucleus of gt/dsb2018_256 spans 17 px
DSB_MAX_DIAMETER = 17


@pytest.fixture(scope="module")
def truth() -> np.ndarray:
    labels = tifffile.imread(shared("gt", "dsb2018_256", "labels.tif")).astype(np.int32)
    assert labels.max() == 65 and np.unique(labels).size == 66
    return labels


def same_objects(a: np.ndarray, b: np.ndarray) -> bool:
    """True if ``a`` and ``b`` hold the same objects pixel for pixel (ids may differ)."""
    if a.shape != b.shape or not np.array_equal(a > 0, b > 0):
        return False
    fg = a > 0
    pairs = np.unique(np.stack([a[fg], b[fg]]), axis=1)
    return pairs.shape[1] == np.unique(a[fg]).size == np.unique(b[fg]).size


def stitch_truth(truth: np.ndarray, size: int, overlap: int, out: np.ndarray | None = None):
    """"Segment" each window by cropping the ground truth, then keep cores and stitch."""
    stitcher = Stitcher(np.zeros(truth.shape, np.int32) if out is None else out)
    reports = [stitcher.add(box, keep_core(truth[box.window_slices], box))
               for box in plan_tiles(truth.shape, size, overlap)]
    return stitcher, reports


# ------------------------------------------------------------------ plan_tiles


@pytest.mark.parametrize("shape, size, overlap", [
    ((682, 682), 256, 48),     # raw/nuclei_plk1.tif
    ((1484, 1380), 512, 64),   # raw/he_example.tif
    ((450, 450), 128, 0),      # raw/fluorescence_multichannel_example.tif, no halo
    ((256, 256), 64, 20),      # gt/dsb2018_256
    ((257, 1000), 256, 1),     # one pixel more than a tile / a wide strip
    ((300, 97), 50, 24),       # tiny core step (2 px)
])
def test_cores_partition_the_image_and_windows_are_grown_cores(shape, size, overlap):
    boxes = plan_tiles(shape, size, overlap)
    h, w = shape
    hits = np.zeros(shape, np.int32)
    for i, box in enumerate(boxes):
        assert box.index == i
        y0, y1, x0, x1 = box.core
        hits[y0:y1, x0:x1] += 1
        assert box.window == (max(y0 - overlap, 0), min(y1 + overlap, h), max(x0 - overlap, 0), min(x1 + overlap, w))
        assert max(box.window_shape) <= size
    assert (hits == 1).all()  # every pixel in exactly one core
    # row-major order, and no sliver tile: windows along an axis differ by at most one pixel
    rows = sorted({b.core[:2] for b in boxes})
    cols = sorted({b.core[2:] for b in boxes})
    assert [b.core for b in boxes] == [r + c for r in rows for c in cols]
    for spans, length in ((rows, h), (cols, w)):
        if len(spans) > 1:
            sizes = [min(b + overlap, length) - max(a - overlap, 0) for a, b in spans]
            assert max(sizes) - min(sizes) <= 1, sizes
            assert min(sizes) > size // 2


def test_image_not_larger_than_a_tile_is_one_tile():
    for shape in ((256, 256), (200, 100), (1, 256)):
        (box,) = plan_tiles(shape, 256, 48)
        assert box.core == box.window == (0, shape[0], 0, shape[1])
    assert len(plan_tiles((256, 257), 256, 48)) == 2


@pytest.mark.parametrize("size, overlap", [(96, 48), (64, 40), (0, 0)])
def test_size_must_exceed_twice_the_overlap(size, overlap):
    with pytest.raises(ValueError, match=f"tile size {size} must be larger than twice the overlap"):
        plan_tiles((682, 682), size, overlap)
    with pytest.raises(ValueError, match="overlap must be >= 0"):
        plan_tiles((682, 682), 256, -1)


# ------------------------------------------------------------------ keep_core and Stitcher on ground truth


@pytest.mark.parametrize("size, overlap", [(64, 20), (72, 18), (100, 24), (128, 32), (256, 48), (90, 40)])
def test_stitched_truth_crops_give_back_the_truth(truth, size, overlap):
    assert overlap > DSB_MAX_DIAMETER
    stitcher, reports = stitch_truth(truth, size, overlap)
    out = stitcher.out
    assert same_objects(truth, out)
    assert stitcher.n_objects == 65 and set(np.unique(out)) == set(range(66))  # contiguous ids, none lost
    assert sum(len(r.id_map) for r in reports) == 65  # each object kept by exactly one tile
    assert all(r.dropped == [] and r.conflict_px == 0 and r.truncated == 0 for r in reports)
    # ids are assigned in tile order, continuing after the previous tile
    assert [g for r in reports for g in r.id_map.values()] == list(range(1, 66))


def test_keep_core_relabels_in_order_of_original_ids(truth):
    box = plan_tiles(truth.shape, 128, 32)[3]
    window = truth[box.window_slices]
    kept = keep_core(window, box)
    assert kept.dtype == np.int32 and kept.shape == window.shape
    k = int(kept.max())
    assert 0 < k < np.unique(window).size - 1
    originals = [int(np.unique(window[kept == i])[0]) for i in range(1, k + 1)]
    assert originals == sorted(originals)
    for i, orig in enumerate(originals, start=1):
        assert np.array_equal(kept == i, window == orig)  # whole objects, nothing else
        cy, cx = ndi.center_of_mass(window == orig)
        cy, cx = cy + box.window[0], cx + box.window[2]
        assert box.core[0] - 0.5 <= cy < box.core[1] - 0.5 and box.core[2] - 0.5 <= cx < box.core[3] - 0.5


def test_centroid_on_a_core_boundary_goes_to_exactly_one_tile():
    # an object over rows 9 and 10 has its centroid at 9.5, exactly between the cores [0, 10) and [10, 20)
    labels = np.zeros((20, 6), np.int32)
    labels[9:11, 2:4] = 7
    top, bottom = TileBox(0, (0, 10, 0, 6), (0, 20, 0, 6)), TileBox(1, (10, 20, 0, 6), (0, 20, 0, 6))
    assert keep_core(labels, top).max() == 0
    assert keep_core(labels, bottom).max() == 1
    with pytest.raises(ValueError, match="segment exactly the window"):
        keep_core(labels[:10], top)


def test_stitcher_writes_a_memmap_one_window_at_a_time(truth, tmp_path):
    touched = []

    class Recording:
        """A memmap that records every index used to read or write it."""

        def __init__(self, arr):
            self.arr, self.shape, self.dtype, self.ndim = arr, arr.shape, arr.dtype, arr.ndim

        def __getitem__(self, key):
            touched.append(key)
            return self.arr[key]

        def __setitem__(self, key, value):
            touched.append(key)
            self.arr[key] = value

    mm = np.lib.format.open_memmap(tmp_path / "labels.npy", mode="w+", dtype=np.int32, shape=truth.shape)
    stitcher, _ = stitch_truth(truth, 100, 24, out=Recording(mm))
    mm.flush()
    windows = [b.window_slices for b in plan_tiles(truth.shape, 100, 24)]
    assert touched and all(key in windows for key in touched)
    assert same_objects(truth, np.load(tmp_path / "labels.npy"))
    with pytest.raises(ValueError, match="2D int32"):
        Stitcher(np.zeros(truth.shape, np.uint16))


def test_first_tile_wins_and_half_covered_objects_are_dropped(truth):
    h, w = truth.shape
    stitcher = Stitcher(np.zeros(truth.shape, np.int32))
    left = np.where(np.arange(w) < 128, truth, 0)
    whole = TileBox(0, (0, h, 0, w), (0, h, 0, w))
    first = stitcher.add(whole, keep_core(left, whole))
    second = stitcher.add(whole, keep_core(truth, whole))
    # expected: an object loses its pixels left of column 128; dropped if that is half or more of it
    ids = np.arange(1, 66)
    area = ndi.sum(np.ones_like(truth), truth, ids)
    lost = ndi.sum(np.ones_like(truth), left, ids)
    dropped = ids[2 * lost >= area]
    assert second.dropped == dropped.tolist()
    assert second.conflict_px == int((left > 0).sum())
    assert stitcher.n_objects == len(first.id_map) + 65 - dropped.size
    out = stitcher.out
    assert np.array_equal(out[:, :128], keep_core(left, whole)[:, :128])  # first wins
    for local, glob in second.id_map.items():
        assert np.array_equal(out == glob, (truth == local) & (left == 0))
    # the same tile added twice: everything is a duplicate
    again = stitcher.add(whole, keep_core(truth, whole))
    assert again.id_map == {} and again.dropped == list(range(1, 66))


def test_objects_wider_than_the_overlap_are_reported(truth, caplog):
    _, reports = stitch_truth(truth, 32, 4)
    assert sum(r.truncated for r in reports) > 0
    with caplog.at_level(logging.WARNING, logger="opsef_opt.batch.tiles"):
        segment_tiled(truth, "YX", lambda window: window, 32, 4)
    assert "increase the overlap" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="opsef_opt.batch.tiles"):
        assert same_objects(truth, segment_tiled(truth, "YX", lambda window: window, 64, 20))
    assert caplog.text == ""


def test_segment_tiled_finds_y_and_x_by_axis_name():
    def label_bright(plane):
        return ndi.label(plane > 60)[0]

    cyx = tifffile.imread(shared("raw", "fluorescence_multichannel_example.tif"))
    rgb = tifffile.imread(shared("raw", "he_example.tif"))[:500, :600]
    seen = []

    def first_channel(window):
        seen.append(window.shape)
        return label_bright(window[0])

    plain = segment_tiled(cyx[0], "YX", label_bright, 128, 32)
    assert np.array_equal(segment_tiled(cyx, "CYX", first_channel, 128, 32), plain)
    assert all(s[0] == 2 and max(s[1:]) <= 128 for s in seen)
    grey = 255 - rgb.mean(axis=-1)
    tiled = segment_tiled(rgb, "YXC", lambda win: label_bright(255 - win.mean(axis=-1)), 200, 40)
    assert np.array_equal(tiled, segment_tiled(grey, "YX", label_bright, 200, 40))
    with pytest.raises(ValueError, match="does not match axes"):
        segment_tiled(rgb, "YX", label_bright, 200, 40)


# ------------------------------------------------------------------ tiled vs untiled with real models


def f1_at_iou_half(untiled: np.ndarray, tiled: np.ndarray) -> float:
    from stardist.matching import matching

    return float(matching(untiled, tiled, thresh=0.5).f1)


def test_classical_pipeline_tiled_matches_untiled():
    pytest.importorskip("stardist")
    image = tifffile.imread(shared("raw", "nuclei_plk1.tif"))  # 682 x 682, nuclei ~100-120 px across
    model = load_segmenter("classical")

    def segment(window):  # per-window preprocessing, as a tiled run does it
        pre, axes = run_chain(window, "YX", [])
        return model(pre, axes, threshold="otsu", smooth_sigma=4.0, min_distance=40, min_size=200).labels

    untiled = segment(image)
    assert np.array_equal(segment_tiled(image, "YX", segment, 1024, 48), untiled)  # one tile = untiled path
    tiled = segment_tiled(image, "YX", segment, 256, 48)
    f1 = f1_at_iou_half(untiled, tiled)
    print(f"classical, plk1 682x682, tiles 256/48: {untiled.max()} vs {tiled.max()} objects, F1@0.5 = {f1:.3f}")
    assert untiled.max() >= 10
    assert f1 >= 0.95, f1


@pytest.mark.slow
def test_bioimageio_unet_tiled_matches_untiled():
    """The U-Net normalises its input per image (zero mean, unit variance); per window that drifts.

    Normalising the whole image once and running the network on windows of it agrees with the
    untiled result; per-window normalisation agrees less (recorded, loosely bounded).
    """
    from stardist.data import test_image_nuclei_2d

    from opsef_opt.segment.bioimageio_unet import apply_processing
    from opsef_opt.segment.instances import instances_from_probability

    image = test_image_nuclei_2d()  # 512 x 512
    model = load_segmenter("bioimageio_unet", package="unet2d_nuclei_broad")
    pkg = model.package
    pre, axes = run_chain(image, "YX", [])
    untiled = model(pre, axes).labels

    per_window = segment_tiled(image, "YX", lambda win: model(*run_chain(win, "YX", [])).labels, 256, 48)

    normalised = apply_processing(pre[None, None], pkg.preprocessing, pkg.in_axes)[0, 0]
    th, tw = pkg.tile

    def network_on_normalised(window):  # the model's own steps, minus its per-image normalisation
        h, w = window.shape
        x = np.pad(window, ((0, th - h), (0, tw - w)), mode="reflect")[None, None].astype(np.float32)
        prob = apply_processing(model.predict(x), pkg.postprocessing, pkg.out_axes)[0, 0, :h, :w]
        return instances_from_probability(prob, 0.5, 5, 20)

    assert pkg.tile == (512, 512)
    assert np.array_equal(network_on_normalised(normalised), untiled)  # same steps as the model
    global_norm = segment_tiled(normalised, "YX", network_on_normalised, 256, 48)
    f1_global, f1_window = f1_at_iou_half(untiled, global_norm), f1_at_iou_half(untiled, per_window)
    print(f"bioimageio U-Net, 512x512, tiles 256/48: F1@0.5 global normalisation {f1_global:.3f}, "
          f"per-window normalisation {f1_window:.3f} ({untiled.max()} untiled objects)")
    assert f1_global >= 0.95, f1_global
    assert f1_window >= 0.85, f1_window


def test_local_dask_workers_get_their_share_of_cores_and_glibcs_adaptive_malloc(monkeypatch):
    """Dask's MALLOC_TRIM_THRESHOLD_ made every tile ~15-40 % slower: our local workers run without it."""
    import os
    from types import SimpleNamespace

    from opsef_opt.batch.run import _Executor
    from opsef_opt.segment.device import THREAD_VARS

    for var in THREAD_VARS:  # share_cpus sets them in this process; restored afterwards
        monkeypatch.setenv(var, "0")
    executor = _Executor(SimpleNamespace(dask_scheduler=None, n_workers=2))
    try:
        env = executor.client.run(lambda: {v: os.environ.get(v) for v in ("MALLOC_TRIM_THRESHOLD_",) + THREAD_VARS})
    finally:
        executor.close()
    expected = str(max(1, (os.cpu_count() or 1) // 2))
    assert len(env) == 2
    for worker_env in env.values():
        assert worker_env["MALLOC_TRIM_THRESHOLD_"] is None
        assert all(worker_env[v] == expected for v in THREAD_VARS), worker_env
