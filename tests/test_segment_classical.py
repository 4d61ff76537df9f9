"""The classical segmenter on real nuclei images."""
from __future__ import annotations

import numpy as np
import pytest
import tifffile

from opsef_opt.preprocess import run_chain
from opsef_opt.score.gt import instance_metrics
from opsef_opt.segment import SEGMENTERS, load_segmenter, model_cache_info, threshold_watershed

from conftest import DEMO, shared


def test_f1_on_dsb256_with_reasonable_setting():
    image = tifffile.imread(shared("gt", "dsb2018_256", "image.tif"))
    truth = tifffile.imread(shared("gt", "dsb2018_256", "labels.tif"))
    pre, axes = run_chain(image, "YX", [])
    labels = load_segmenter("classical")(pre, axes, threshold="otsu", min_distance=5)
    assert labels.labels.dtype == np.int32
    f1 = instance_metrics(truth, labels.labels)["f1"]
    assert f1 >= 0.6, f1


def test_seed_distance_controls_splitting():
    image = tifffile.imread(DEMO / "images" / "dsb2018_256.tif") / 255.0
    few = threshold_watershed(image, min_distance=15).max()
    many = threshold_watershed(image, min_distance=2).max()
    no_split = threshold_watershed(image, split=False).max()
    assert no_split <= few < many


def test_blank_and_constant_images_give_no_objects():
    assert threshold_watershed(np.zeros((64, 64), np.float32)).max() == 0
    assert threshold_watershed(np.full((64, 64), 0.5, np.float32)).max() == 0


def test_model_loaded_once_per_process():
    before = model_cache_info()
    a = load_segmenter("classical")
    b = load_segmenter("classical")
    after = model_cache_info()
    assert a is b
    assert after["hits"] >= before["hits"] + 1


def test_wrong_axes_give_clear_message():
    model = SEGMENTERS.get("classical")()
    with pytest.raises(ValueError, match="add a projection step"):
        model(np.zeros((3, 32, 32), np.float32), "ZYX")
