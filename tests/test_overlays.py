"""Overlays a user can read on any image: halo outlines, TP / FP / missed colours, label PNGs, MLflow images."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from opsef_opt.figures.overlay import (
    FN_RGB, FP_RGB, HALO_RGB, OUTLINE_RGB, TP_RGB, UNJUDGED_RGB, label_rgb, match_objects,
)
from opsef_opt.post.props import region_properties
from opsef_opt.track.artifacts import gt_overlay_rgb, overlay_rgb, write_image_artifacts


def _case():
    """Truth: 3 squares. Prediction: square 1 exact (TP), square 2 missed, square 3 shifted far
    (IoU < 0.5: a false positive and a miss), and one object where nothing is (FP)."""
    truth = np.zeros((64, 64), np.int32)
    truth[5:15, 5:15] = 1
    truth[5:15, 30:40] = 2
    truth[35:45, 5:15] = 3
    pred = np.zeros_like(truth)
    pred[5:15, 5:15] = 7  # TP
    pred[41:51, 11:21] = 8  # overlaps truth 3 by 4 x 4 = 16 px: IoU 16 / 184, not a match
    pred[40:50, 40:50] = 9  # on background
    image = np.full((64, 64), 100, np.uint16)
    return image, truth, pred


def _rgb_at(rgb, y, x):
    return tuple(int(v) for v in rgb[y, x])


def test_match_sorts_objects_into_tp_fp_and_misses():
    _, truth, pred = _case()
    m = match_objects(truth, pred)
    assert (m.tp, m.fp, m.fn) == ({7}, {8, 9}, {2, 3})
    # sparse ground truth: objects mostly on unlabelled background (9, and 8 with 16 of 100 px on
    # truth 3) are not judged; the misses stay misses
    sparse = match_objects(truth, pred, sparse=True)
    assert sparse.unjudged == {8, 9} and sparse.fp == set() and sparse.tp == {7} and sparse.fn == {2, 3}


def test_truth_overlay_colours_and_halo():
    image, truth, pred = _case()
    rgb = gt_overlay_rgb(image, pred, truth, legend=False)
    assert rgb.shape == (64, 64, 3)
    assert _rgb_at(rgb, 5, 10) == TP_RGB  # inner boundary of the matched object
    assert _rgb_at(rgb, 4, 10) == HALO_RGB  # the dark halo just outside it
    assert _rgb_at(rgb, 45, 50 - 1) == FP_RGB  # the object on background
    assert _rgb_at(rgb, 5, 35) == FN_RGB  # missed: its true outline
    assert _rgb_at(rgb, 41, 18) == FP_RGB and _rgb_at(rgb, 35, 10) == FN_RGB  # shifted: FP and a miss
    # false positives and misses are tinted, true positives are not
    grey = _rgb_at(overlay_rgb(image, np.zeros_like(pred)), 10, 35)
    assert _rgb_at(rgb, 10, 10) == grey and _rgb_at(rgb, 10, 35) != grey and _rgb_at(rgb, 45, 45) != grey
    # unjudged predictions (sparse ground truth) in grey
    sparse = gt_overlay_rgb(image, pred, truth, sparse=True, legend=False)
    assert _rgb_at(sparse, 40, 45) == UNJUDGED_RGB
    # with the legend, a strip below the image
    assert gt_overlay_rgb(image, pred, truth).shape == (64 + 24, 64, 3)


def test_outlines_have_a_dark_halo_and_scale_up():
    image = np.linspace(0, 1000, 40 * 60, dtype=np.float32).reshape(40, 60)
    labels = np.zeros((40, 60), np.int32)
    labels[10:20, 30:45] = 3
    rgb = overlay_rgb(image, labels)
    assert _rgb_at(rgb, 10, 35) == OUTLINE_RGB and _rgb_at(rgb, 9, 35) == HALO_RGB
    assert _rgb_at(rgb, 15, 37) != OUTLINE_RGB
    big = overlay_rgb(image, labels, scale=3)
    assert big.shape == (120, 180, 3)
    # 2 px wide lines at 3 x: both pixel rows inside the top edge are outline, the row above is halo
    assert _rgb_at(big, 30, 100) == _rgb_at(big, 31, 100) == OUTLINE_RGB and _rgb_at(big, 29, 100) == HALO_RGB


def test_label_png_colours_each_object():
    labels = np.zeros((20, 20), np.int32)
    labels[2:8, 2:8], labels[2:8, 10:16], labels[12:18, 2:8] = 1, 2, 3
    rgb = label_rgb(labels)
    assert rgb.shape == (20, 20, 3) and rgb.dtype == np.uint8
    assert _rgb_at(rgb, 0, 0) == (0, 0, 0)
    colours = {_rgb_at(rgb, 4, 4), _rgb_at(rgb, 4, 12), _rgb_at(rgb, 14, 4)}
    assert len(colours) == 3 and (0, 0, 0) not in colours
    assert label_rgb(labels * 1)[4, 4].tolist() == rgb[4, 4].tolist()  # same id, same colour


def test_written_artifacts_and_logged_mlflow_images(tmp_path):
    from mlflow import MlflowClient

    from opsef_opt.search.trial import ImageOutput, record_trial
    from opsef_opt.track import Tracker

    image, truth, pred = _case()
    figures = write_image_artifacts(tmp_path / "img", pred, image, region_properties(pred, raw=image), truth)
    for name in ("overlay.png", "labels.png", "labels.tif", "regions.csv"):
        assert (tmp_path / "img" / name).is_file(), name
    overlay = np.asarray(Image.open(tmp_path / "img" / "overlay.png"))
    assert overlay.shape == (64 * 4 + 24, 64 * 4, 3)  # a small image is enlarged 4 x, plus the legend
    np.testing.assert_array_equal(overlay, figures["overlay"])
    assert np.asarray(Image.open(tmp_path / "img" / "labels.png")).shape == (64, 64, 3)

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tracker = Tracker(uri, tmp_path / "artifacts", "overlays")
    parent = tracker.open_parent(None, "search", {})
    run_id = tracker.start_trial(parent, 0, "overlays/search", {}, {})
    outputs = [ImageOutput("cells #1", pred, image, image, {"n_objects": 3}, truth=truth)]
    record_trial(tracker, run_id, outputs, {"score": 0.5})
    client = MlflowClient(uri)
    files = {a.path for a in client.list_artifacts(run_id, "images")}
    assert {"images/cells__1", "images/metrics_per_image.csv"} <= files
    assert {a.path for a in client.list_artifacts(run_id, "images/cells__1")} >= {
        "images/cells__1/labels.png", "images/cells__1/overlay.png", "images/cells__1/labels.tif"}
    # keyed MLflow images (the image charts compare them across runs): each image's overlay
    keyed = sorted(p.split("/")[1].split("+")[0] for p in files if p.endswith(".png"))
    assert keyed == ["overlay~cells__1"]  # the artifact folder's name (safe_name)
    assert client.get_run(run_id).data.tags["mlflow.loggedImages"] == "True"


@pytest.mark.parametrize("scale", [1, 2])
def test_overlay_on_rgb_and_bright_images_keeps_outlines_visible(scale):
    rgb_image = np.zeros((30, 30, 3), np.uint8)
    rgb_image[..., 0] = 250
    rgb_image[..., 1] = 240  # yellow-ish, like the outline colour
    labels = np.zeros((30, 30), np.int32)
    labels[10:20, 10:20] = 1
    out = overlay_rgb(rgb_image, labels, scale=scale)
    line = out == np.asarray(OUTLINE_RGB, np.uint8)
    halo = out == np.asarray(HALO_RGB, np.uint8)
    assert line.all(-1).any() and halo.all(-1).any()  # the dark halo separates the line from the background


@pytest.mark.parametrize("width", [1, 2, 3])
def test_outline_pixels_equal_scikit_image_boundaries_and_scipy_dilation(width):
    """The array-shift outlines are exactly find_boundaries(inner) + binary_dilation, also enlarged and at borders."""
    from scipy import ndimage as ndi
    from skimage.segmentation import find_boundaries
    from stardist.data import test_image_nuclei_2d

    from opsef_opt.figures.overlay import _line_and_halo

    _, nuclei = test_image_nuclei_2d(return_mask=True)
    rng = np.random.default_rng(0)
    cases = [nuclei, nuclei[:100, :37], np.repeat(np.repeat(nuclei[:96, :96], 4, 0), 4, 1),
             (rng.random((50, 60)) > 0.5) * rng.integers(1, 5, (50, 60)), np.ones((9, 9), int)]
    for labels in cases:
        line = find_boundaries(labels, mode="inner")
        if width > 1:
            line = ndi.binary_dilation(line, iterations=width - 1) & (labels > 0)
        halo = ndi.binary_dilation(line, structure=np.ones((3, 3), bool)) & ~line
        ours = _line_and_halo(labels, width)
        assert line.any() or not labels.any() or labels.min() == labels.max()
        np.testing.assert_array_equal(ours[0], line)
        np.testing.assert_array_equal(ours[1], halo)
