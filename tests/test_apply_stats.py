"""Image-wide statistics: tiles of a large image are preprocessed and segmented like the whole image."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from opsef_opt.batch.source import list_sources
from opsef_opt.batch.tiles import plan_tiles
from opsef_opt.batch.worker import ImageStats, merge_stats, segment_labels, window_stats
from opsef_opt.config import ImagesSpec, ModelSpec, ReshapeSpec
from opsef_opt.preprocess import run_chain
from opsef_opt.preprocess.normalize import value_range
from opsef_opt.search.space import Pipeline

from conftest import shared

SPEC = ImagesSpec(None, "*.tif", (), "auto", None, None, None, None, 0, None, None, "{stem}.tif", None)


def _pipeline(steps, family="classical", init=None, params=None) -> Pipeline:
    model = ModelSpec(family, family, dict(init or {}), dict(params or {}), {}, {})
    return Pipeline(tuple(steps), tuple((s[0], s[1]) for s in steps), model, dict(params or {}))


def _source(path: Path):
    (source,), problems = list_sources(SPEC, ReshapeSpec(), [path])
    assert not problems
    return source


def test_fixed_ranges_make_a_crop_match_the_whole_chain():
    """With the whole image's ranges, a crop's preprocessing equals the crop of the whole preprocessing."""
    rgb = _source(shared("raw", "he_example.tif")).read()
    steps = [("color", "stain", {"stain": "hematoxylin"})]
    record: list = []
    whole, _ = run_chain(rgb, "YXC", steps, record=record)
    crop = rgb[300:700, 200:650]
    alone, _ = run_chain(crop, "YXC", steps)
    fixed, _ = run_chain(crop, "YXC", steps, ranges=record)
    np.testing.assert_allclose(fixed, whole[300:700, 200:650], atol=1e-6)
    assert np.abs(alone - whole[300:700, 200:650]).max() > 0.05  # what per-tile scaling would have done
    assert record[0] == value_range(rgb)


def test_merged_tile_statistics_reproduce_the_whole_image_threshold():
    source = _source(shared("raw", "nuclei_plk1.tif"))
    pipe = _pipeline([("filter", "gaussian", {"sigma": 1.0})], params={"threshold": "otsu", "min_distance": 20})
    boxes = plan_tiles(source.shape_yx, 256, 48)
    raw = value_range(source.read())
    # every core pixel sampled: the merged statistics are those of the whole image
    parts = [window_stats(source, pipe, b, raw, n_sample=10 ** 7) for b in boxes]
    stats = merge_stats(pipe, parts, raw)
    record: list = []
    whole, _ = run_chain(source.read(), "YX", pipe.steps, record=record)
    assert stats.ranges[0] == record[0]
    assert stats.ranges[1] == pytest.approx(record[1], rel=1e-3, abs=1e-3)  # filter edge effects only
    from skimage.filters import gaussian, threshold_otsu

    expected = threshold_otsu(gaussian(whole, sigma=1.0, preserve_range=True))
    assert stats.model["threshold"] == pytest.approx(expected, abs=0.01)
    # the whole image segmented with its own statistics is the plain untiled result
    plain = segment_labels(pipe, source.read(), "YX")
    same = segment_labels(pipe, source.read(), "YX", ImageStats(record, stats.model))
    assert plain.max() > 5
    from stardist.matching import matching

    assert matching(plain, same, thresh=0.5).f1 > 0.98


@pytest.mark.slow
def test_unet_uses_the_whole_image_mean_and_std():
    from stardist.data import test_image_nuclei_2d

    from opsef_opt.segment import load_segmenter

    img = run_chain(test_image_nuclei_2d(), "YX", [])[0]
    model = load_segmenter("bioimageio_unet", package="unet2d_nuclei_broad")
    stats = model.image_stats(img.ravel())
    assert stats == pytest.approx({"mean": float(img.mean()), "std": float(img.std())}, rel=1e-5)
    np.testing.assert_allclose(model.probability(img, stats), model.probability(img), atol=1e-4)
    crop = img[:256, :256]  # a tile: its own statistics differ from the image's
    assert not np.allclose(model.probability(crop, stats), model.probability(crop), atol=1e-2)
