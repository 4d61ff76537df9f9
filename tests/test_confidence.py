"""Model-native confidence: NaN end to end for models without one, per object where the model gives one.

* classical (no confidence): ``proxy.confidence`` is NaN in the image metrics, in
  ``Objective.trial_metrics``, after the segmentation cache's round trip, in
  what MLflow returns for the logged run, and in the tag model's features; the
  combined score is the same whatever the confidence weight (NaN is left out);
* shipped U-Net: a confidence in [0, 1] for every object, clearly lower on a
  real image whose nuclei were destroyed (heavy blur, inverted polarity) than
  on the image itself, and the labels are exactly the model's threshold +
  watershed of its probability map;
* Cellpose's flow error per object (``cellpose.metrics.flow_error``) on flows
  built from masks: 0 for flows that match the masks, large for flows that do
  not; the labels are not touched. (The tiny trained StarDist/Cellpose models'
  per-object confidences are checked in test_stardist_model.py and
  test_cellpose_model.py, which train them.)
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import tifffile
from scipy import ndimage as ndi

from opsef_opt.config import ModelSpec, ProxySetting, ScoreSpec
from opsef_opt.io.dataset import Item
from opsef_opt.preprocess import run_chain
from opsef_opt.preprocess.cache import PreprocessCache
from opsef_opt.score import PROXIES
from opsef_opt.score.objective import Objective
from opsef_opt.score.proxies import combine, mean_confidence
from opsef_opt.score.tag_model import tag_features
from opsef_opt.search.segcache import SegmentCache
from opsef_opt.search.space import Pipeline
from opsef_opt.search.trial import TrialContext, evaluate, record_trial
from opsef_opt.segment import load_segmenter
from opsef_opt.segment.instances import instances_from_probability
from opsef_opt.track import Tracker

from conftest import shared


def _spec(confidence_weight: float | None = None) -> ScoreSpec:
    """The default proxies and weights (optionally another confidence weight), objective ``proxy``."""
    proxies = tuple(ProxySetting(name, p.weight if name != "confidence" or confidence_weight is None
                                 else confidence_weight) for name, p in PROXIES.items())
    return ScoreSpec("proxy", proxies=proxies, combination="mean")  # weights of its own: the weighted mean


def _pipeline(family: str, params: dict) -> Pipeline:
    return Pipeline((), (), ModelSpec(family, family, {}, dict(params), {}, {}), dict(params))


@pytest.fixture(scope="module")
def dsb():
    image = tifffile.imread(shared("gt", "dsb2018_256", "image.tif"))
    truth = tifffile.imread(shared("gt", "dsb2018_256", "labels.tif"))
    return image, truth


def _context(tmp_path, dsb, spec: ScoreSpec, tracker=None) -> TrialContext:
    image, _ = dsb  # no ground truth: a proxy study (and its GT metrics take seconds)
    item = Item("dsb2018_256", "dsb2018_256", image, "YX", None, "image.tif", "dsb2018_256-fingerprint")
    return TrialContext("conf/search", None, [item], Objective(spec, "proxy"), PreprocessCache(None),
                        tracker, "", None, None, pool=None, segments=SegmentCache(tmp_path / "segment"))


def test_classical_confidence_is_nan_end_to_end(tmp_path, dsb):
    pipeline = _pipeline("classical", {"threshold": "otsu", "min_distance": 3})
    tracker = Tracker(f"sqlite:///{tmp_path}/mlflow.db", tmp_path / "artifacts", "confidence")
    ctx = _context(tmp_path, dsb, _spec(), tracker)

    value, metrics, outputs = evaluate(ctx, pipeline)
    assert outputs[0].labels.max() > 20
    assert math.isnan(outputs[0].metrics["proxy.confidence"])  # the image's value
    assert math.isnan(metrics["proxy.confidence"])  # Objective.trial_metrics' mean over images
    assert math.isfinite(metrics["proxy"]) and value == metrics["score"]

    # a later stage reuses the labels from the segmentation cache: still no confidence
    again_value, again, _ = evaluate(ctx, pipeline)
    assert again["segment_reused"] == 1
    assert math.isnan(again["proxy.confidence"]) and again_value == pytest.approx(value)

    # what is logged: MLflow keeps NaN (its SQL table stores value 0.0 with is_nan=1; the API gives NaN)
    parent = tracker.open_parent(None, "stage", {})
    run_id = tracker.start_trial(parent, 0, "conf/search", pipeline.flat, tags={})
    record_trial(tracker, run_id, [], metrics)
    logged = tracker.client.get_run(run_id).data.metrics
    assert "proxy.confidence" in logged and math.isnan(logged["proxy.confidence"])
    assert logged["proxy"] == pytest.approx(metrics["proxy"])
    exp = tracker.experiment_id
    assert not tracker.client.search_runs([exp], "metrics.`proxy.confidence` <= 0")  # not a 0.0
    (run,) = tracker.client.search_runs([exp], "metrics.proxy > 0")
    assert math.isnan(run.data.metrics["proxy.confidence"])
    assert math.isnan(tag_features(logged)["proxy.confidence"])  # the tag model imputes it

    # the combination uses confidence only where it is defined: any weight gives the same score
    weighted = evaluate(_context(tmp_path / "w", dsb, _spec(confidence_weight=2.0)), pipeline)[1]
    assert weighted["proxy"] == pytest.approx(metrics["proxy"])


def test_combine_uses_confidence_only_where_defined():
    weights = {"shape": 2.0, "confidence": 1.0}
    assert combine({"shape": 0.6, "confidence": math.nan}, weights, None) == pytest.approx(0.6)
    assert combine({"shape": 0.6, "confidence": 0.9}, weights, None) == pytest.approx((2 * 0.6 + 0.9) / 3)
    assert combine({"shape": 0.6, "confidence": 0.9}, {"shape": 2.0, "confidence": 0.0}, None) == pytest.approx(0.6)
    assert PROXIES.get("confidence").weight == 0.0  # logged, not weighted, by default


def test_no_confidence_and_no_objects():
    empty = np.zeros((8, 8), np.int32)
    assert math.isnan(mean_confidence(empty, None))
    assert math.isnan(mean_confidence(empty, {}))  # a confident model that found nothing: no value
    assert mean_confidence(empty, {1: 0.9}) == 0.0  # objects with confidences that are not there: empty scores 0
    lab = empty.copy()
    lab[2:4, 2:4] = 1
    assert mean_confidence(lab, {1: 0.8}) == pytest.approx(0.8)


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return (x - x.min()) / (x.max() - x.min())


def test_unet_confidence_per_object_and_lower_on_destroyed_nuclei(dsb):
    image, _ = dsb
    good = run_chain(image, "YX", [])[0]
    model = load_segmenter("bioimageio_unet")
    seg = model(good, "YX", threshold=0.5)
    ids = set(np.unique(seg.labels).tolist()) - {0}
    assert len(ids) > 30 and set(seg.confidence) == ids
    assert all(0.0 <= c <= 1.0 for c in seg.confidence.values())
    # confidence never changes the segmentation: the labels are the threshold + watershed of the map
    expected = instances_from_probability(seg.extra["probability"], 0.5, 5, 20)
    assert np.array_equal(seg.labels, expected)

    conf = mean_confidence(seg.labels, seg.confidence)
    blurred = model(_unit(ndi.gaussian_filter(good, 8)), "YX", threshold=0.5)  # nuclei destroyed (GT F1 0.02)
    inverted = model(_unit(1 - good), "YX", threshold=0.5)  # wrong polarity (GT F1 0)
    conf_blurred = mean_confidence(blurred.labels, blurred.confidence)
    conf_inverted = mean_confidence(inverted.labels, inverted.confidence)
    # measured 0.947 / 0.894 / 0.630
    assert conf > conf_blurred + 0.03, (conf, conf_blurred)
    assert conf > conf_inverted + 0.2, (conf, conf_inverted)


def test_unet_confidence_through_a_trial_and_the_weighted_combination(tmp_path, dsb):
    pipeline = _pipeline("bioimageio_unet", {"threshold": 0.5})
    ctx = _context(tmp_path, dsb, _spec())
    _, metrics, _ = evaluate(ctx, pipeline)
    assert 0.5 < metrics["proxy.confidence"] <= 1.0
    weighted = evaluate(_context(tmp_path / "w", dsb, _spec(confidence_weight=2.0)), pipeline)[1]
    assert weighted["proxy"] != pytest.approx(metrics["proxy"])  # defined: it counts


def test_cellpose_flow_error_per_object():
    pytest.importorskip("cellpose")
    from cellpose import dynamics

    from opsef_opt.segment.cellpose_model import _cell_probability, _confidence, _flow_error

    labels = tifffile.imread(shared("gt", "dsb2018_256", "labels.tif")).astype(np.int32)[:128, :128]
    labels = np.unique(labels, return_inverse=True)[1].reshape(labels.shape).astype(np.int32)
    ids = set(np.unique(labels).tolist()) - {0}
    mu = dynamics.masks_to_flows(labels)  # the flows these masks imply (unit vectors)
    before = labels.copy()
    cellprob = np.where(labels > 0, 4.0, -4.0).astype(np.float32)
    matching = [None, 5.0 * mu, cellprob]  # what Cellpose returns: flows[1] = 5 x unit flows, flows[2] = logits
    errors = _flow_error(labels, matching)
    assert set(errors) == ids and max(errors.values()) < 1e-3
    rotated = _flow_error(labels, [None, 5.0 * np.stack([mu[1], -mu[0]]), cellprob])  # 90 degrees off
    assert set(rotated) == ids and min(rotated.values()) > 0.5
    assert np.array_equal(labels, before)  # only read

    prob = _cell_probability(labels, matching)
    assert set(prob) == ids and all(c == pytest.approx(1 / (1 + math.exp(-4))) for c in prob.values())
    good, bad = _confidence(prob, errors), _confidence(prob, rotated)
    assert set(good) == set(bad) == ids
    assert all(0.0 <= c <= 1.0 for c in (*good.values(), *bad.values()))
    assert all(good[i] >= bad[i] for i in ids)
    assert _flow_error(np.zeros((16, 16), np.int32), [None, np.zeros((2, 16, 16), np.float32)]) == {}
    assert _flow_error(labels, [None, np.zeros((2, 8, 8), np.float32)]) is None  # flows of another size
    assert _confidence(None, None) is None
