"""Ground-truth metrics and the basic proxy on known cases."""
from __future__ import annotations

import numpy as np
import tifffile

from opsef_opt.score import SCORES, ImageResult, instance_metrics

from conftest import shared


def test_perfect_match_is_one():
    truth = tifffile.imread(shared("gt", "mitocheck", "labels.tif"))
    m = instance_metrics(truth, truth)
    assert m["f1"] == 1.0 and m["mean_matched_iou"] == 1.0 and m["precision"] == 1.0


def test_relabelled_prediction_is_still_perfect():
    truth = tifffile.imread(shared("gt", "mitocheck", "labels.tif")).astype(np.int32)
    perm = np.zeros(truth.max() + 1, np.int32)
    perm[1:] = np.random.default_rng(0).permutation(np.arange(1, truth.max() + 1)) + 100
    assert instance_metrics(truth, perm[truth])["f1"] == 1.0


def test_mitocheck_threshold_variants_score_below_reference():
    d = shared("gt", "mitocheck")
    truth = tifffile.imread(d / "labels.tif")
    low = instance_metrics(truth, tifffile.imread(d / "labels_low_threshold.tif"))
    high = instance_metrics(truth, tifffile.imread(d / "labels_high_threshold.tif"))
    assert low["f1"] < 1.0 and high["f1"] < 1.0
    assert low["n_pred"] == 6 and high["n_pred"] == 5


def test_empty_prediction_scores_zero():
    truth = tifffile.imread(shared("gt", "mitocheck", "labels.tif"))
    assert instance_metrics(truth, np.zeros_like(truth))["f1"] == 0.0


def test_proxy_prefers_real_objects_over_nothing_and_noise():
    image = tifffile.imread(shared("gt", "dsb2018_256", "image.tif")).astype(np.float32) / 255
    truth = tifffile.imread(shared("gt", "dsb2018_256", "labels.tif"))
    proxy = SCORES.get("proxy_basic")
    good = proxy.func(ImageResult(truth, image))["proxy"]
    empty = proxy.func(ImageResult(np.zeros_like(truth), image))["proxy"]
    rng = np.random.default_rng(0)
    noise = (rng.random(truth.shape) < 0.05).astype(np.int32) * np.arange(truth.size).reshape(truth.shape)
    salt = proxy.func(ImageResult(noise.astype(np.int32), image))["proxy"]
    assert good > salt and good > empty == 0.0
