"""Ground-truth instance metrics (opsef_opt.score.gt) on real labelled images."""
from __future__ import annotations

import numpy as np
import pytest
import tifffile
from skimage.filters import threshold_otsu
from skimage.measure import label
from skimage.morphology import dilation, disk
from skimage.segmentation import find_boundaries

from opsef_opt.score.gt import (
    GT_METRICS, THRESHOLDS, image_metrics, instance_metrics, mean_metrics, pooled_metrics,
    restrict_to_labelled,
)

from conftest import shared

QUALITY = ("precision", "recall", "f1", "accuracy", "mean_matched_iou", "panoptic_quality",
           "ap", "f1_75", "f1_90")
COUNTS = ("n_true", "n_pred", "tp", "fp", "fn")


def mitocheck(name: str = "labels") -> np.ndarray:
    return tifffile.imread(shared("gt", "mitocheck", f"{name}.tif"))


def erode(labels: np.ndarray, layers: int) -> np.ndarray:
    """Peel ``layers`` one-pixel layers off every object (touching objects stay apart)."""
    out = labels.copy()
    for _ in range(layers):
        out[find_boundaries(out, mode="inner")] = 0
    return out


def sparse_items():
    images = sorted(shared("gt", "bbbc007_sparse", "images").glob("*.tif"))
    assert len(images) >= 5
    return [(tifffile.imread(p), tifffile.imread(p.parent.parent / "labels" / p.name)) for p in images]


def test_api_constants_and_keys():
    assert THRESHOLDS == (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)
    m = image_metrics(mitocheck(), mitocheck())
    assert set(m) == set(QUALITY + COUNTS)
    assert set(GT_METRICS) <= set(m)
    assert all(isinstance(v, float) for v in m.values())
    assert instance_metrics is image_metrics


def test_identical_labels_score_one():
    truth = mitocheck()
    m = image_metrics(truth, truth)
    assert all(m[k] == 1.0 for k in QUALITY), m
    assert (m["n_true"], m["n_pred"], m["tp"], m["fp"], m["fn"]) == (7, 7, 7, 0, 0)


def test_identical_3d_labels_score_one_and_3d_iou_is_volumetric():
    """4 identical slices make 7 volumes; dropping one slice of the prediction gives IoU 3/4 each."""
    truth = np.stack([mitocheck()] * 4)
    m = image_metrics(truth, truth)
    assert all(m[k] == 1.0 for k in QUALITY) and m["n_true"] == 7
    pred = truth.copy()
    pred[0] = 0
    m = image_metrics(truth, pred)
    assert m["f1"] == 1.0 and m["f1_75"] == 1.0 and m["f1_90"] == 0.0
    assert m["mean_matched_iou"] == pytest.approx(0.75)
    assert m["ap"] == pytest.approx(6 / 10)  # matched at 0.50, ..., 0.75; none above


def test_relabelled_prediction_is_still_perfect():
    """Permuted, non-sequential, huge ids in another dtype change nothing."""
    truth = mitocheck()  # uint8
    ids = np.zeros(truth.max() + 1, np.int64)
    ids[1:] = np.random.default_rng(0).permutation(np.arange(1, truth.max() + 1)) * 10**11 + 7
    m = image_metrics(truth, ids[truth])
    assert all(m[k] == 1.0 for k in QUALITY), m
    assert image_metrics(truth.astype(np.uint16) * 3, truth.astype(np.int32))["ap"] == 1.0


def test_empty_cases():
    truth = mitocheck()
    empty = np.zeros_like(truth)
    missed = image_metrics(truth, empty)
    assert all(missed[k] == 0.0 for k in QUALITY) and missed["fn"] == 7 and missed["n_pred"] == 0
    # Truth empty, prediction not: nothing right (StarDist: no TP -> all 0).
    invented = image_metrics(empty, truth)
    assert all(invented[k] == 0.0 for k in QUALITY) and invented["fp"] == 7 and invented["n_true"] == 0
    # Nothing to find, nothing found: perfect, image and pooled.
    none = image_metrics(empty, empty)
    assert all(none[k] == 1.0 for k in QUALITY) and all(none[k] == 0.0 for k in COUNTS)
    assert pooled_metrics([empty, empty], [empty, empty]) == none
    # An empty pair weighs nothing in the pooled metrics.
    assert pooled_metrics([empty, truth], [empty, truth]) == image_metrics(truth, truth)


def test_mitocheck_high_threshold_beats_low_threshold():
    """Both imperfect; the high-threshold segmentation is the better one.

    Looking at the image and labels: the low threshold finds foreground for all
    7 nuclei but merges the two touching nuclei at the top into one object
    (6 objects) and draws every outline a little too wide; the high threshold
    misses the two dim nuclei in the middle altogether (5 objects) and draws
    the others a little too tight. At IoU 0.5 both match 5 of 7 nuclei
    (recall 5/7), but the low threshold's merged object matches neither nucleus,
    so it is a false positive on top of the two misses: precision 5/6 against
    1, F1 10/13 against 10/12. A merge is the worse error here: it is wrong
    about two objects and invents a third, while missing a dim nucleus is only
    a miss. The AP (mean over IoU 0.5-0.95 of TP/(TP+FP+FN)) keeps the order,
    because the merge's false positive counts at every threshold.
    """
    truth = mitocheck()
    low = image_metrics(truth, mitocheck("labels_low_threshold"))
    high = image_metrics(truth, mitocheck("labels_high_threshold"))
    assert (low["n_pred"], low["tp"], low["fp"], low["fn"]) == (6, 5, 1, 2)
    assert (high["n_pred"], high["tp"], high["fp"], high["fn"]) == (5, 5, 0, 2)
    assert low["recall"] == high["recall"] == pytest.approx(5 / 7)
    assert low["f1"] == pytest.approx(10 / 13) and high["f1"] == pytest.approx(10 / 12)
    for m in (low, high):
        assert all(m[k] < 1.0 for k in GT_METRICS if k != "precision")
    assert low["precision"] == pytest.approx(5 / 6) and high["precision"] == 1.0
    assert high["f1"] > low["f1"]
    assert high["ap"] > low["ap"]
    assert low["ap"] <= low["f1"] and high["ap"] <= high["f1"]


def test_ap_penalises_worse_delineation_where_f1_at_half_does_not():
    """Peeling pixel layers off the MitoCheck nuclei keeps every one matched at IoU 0.5 but lowers AP."""
    truth = mitocheck()
    ms = [image_metrics(truth, erode(truth, k)) for k in range(4)]
    assert [m["f1"] for m in ms] == [1.0] * 4
    aps = [m["ap"] for m in ms]
    assert aps[0] == 1.0 and all(a > b for a, b in zip(aps, aps[1:])), aps
    ious = [m["mean_matched_iou"] for m in ms]
    assert all(a > b for a, b in zip(ious, ious[1:])), ious
    # ap <= f1 at 0.5 in general: accuracy <= f1 at each threshold, and TP only falls as it rises.
    dsb = tifffile.imread(shared("gt", "dsb2018_256", "labels.tif"))
    for m in ms + [image_metrics(dsb, erode(dsb, k)) for k in range(3)]:
        assert m["ap"] <= m["f1"]


def test_pooled_differs_from_per_image_mean():
    """DSB image (65 nuclei) predicted perfectly, MitoCheck (7 nuclei) predicted empty.

    Pooled: TP 65, FP 0, FN 7, so recall = accuracy = AP = 65/72 and
    F1 = PQ = 130/137, matched IoU 1. Per image: 1 and 0, mean 0.5 throughout.
    """
    dsb = tifffile.imread(shared("gt", "dsb2018_256", "labels.tif"))
    mito = mitocheck()
    truths, preds = [dsb, mito], [dsb, np.zeros_like(mito)]
    pooled = pooled_metrics(truths, preds)
    assert (pooled["tp"], pooled["fp"], pooled["fn"], pooled["n_true"]) == (65, 0, 7, 72)
    assert pooled["precision"] == 1.0 and pooled["mean_matched_iou"] == 1.0
    for k in ("recall", "accuracy", "ap"):
        assert pooled[k] == pytest.approx(65 / 72)
    for k in ("f1", "panoptic_quality", "f1_75", "f1_90"):
        assert pooled[k] == pytest.approx(130 / 137)
    per_image = mean_metrics([image_metrics(t, p) for t, p in zip(truths, preds)])
    assert all(per_image[k] == 0.5 for k in QUALITY), per_image
    assert (per_image["tp"], per_image["fn"], per_image["n_true"]) == (65, 7, 72)
    # One image: pooled and per-image agree.
    low = mitocheck("labels_low_threshold")
    assert pooled_metrics([mito], [low]) == pytest.approx(image_metrics(mito, low))


def test_sparse_ignores_predictions_on_unlabelled_nuclei():
    """Truth + Otsu components away from labelled nuclei: perfect when sparse, false positives when dense."""
    for image, truth in sparse_items():
        components = label(image > threshold_otsu(image))
        touching = np.unique(components[dilation(truth > 0, disk(2))])
        extra = label(np.isin(components, touching, invert=True) & (components > 0))
        assert extra.max() >= 10  # most nuclei in these images are unlabelled
        pred = np.where(truth > 0, truth, np.where(extra > 0, extra + truth.max(), 0))
        sparse = image_metrics(truth, pred, sparse=True)
        dense = image_metrics(truth, pred)
        assert sparse["f1"] == 1.0 and sparse["ap"] == 1.0 and sparse["n_pred"] == sparse["n_true"]
        assert dense["f1"] < 1.0 and dense["recall"] == 1.0 and dense["fp"] == extra.max()
        assert pooled_metrics([truth], [pred], sparse=True)["f1"] == 1.0


def test_sparse_still_counts_fragments_of_labelled_nuclei():
    """Splitting a labelled nucleus into two halves leaves both halves on labelled foreground: FP."""
    for _, truth in sparse_items():
        ids, areas = np.unique(truth[truth > 0], return_counts=True)
        big = ids[np.argmax(areas)]
        rows = np.nonzero(truth == big)[0]
        pred = truth.copy()
        pred[(truth == big) & (np.arange(truth.shape[0])[:, None] >= np.median(rows))] = truth.max() + 1
        m = image_metrics(truth, pred, sparse=True)
        assert m["n_pred"] == m["n_true"] + 1
        assert m["fp"] >= 1 and m["precision"] < 1.0 and m["f1"] < 1.0


def test_restrict_to_labelled_keeps_objects_at_least_half_on_labels():
    """Kept iff >= min_overlap of the object's own area is labelled foreground (a 50/50 merge is kept)."""
    truth = np.zeros((10, 40), np.int32)
    truth[:, 0:10] = 5
    truth[:, 20:30] = 9
    pred = np.zeros((10, 40), np.uint16)
    pred[:, 0:4] = 1     # fragment of a labelled object: all on labels, kept
    pred[:, 6:14] = 2    # merge with unlabelled ground: exactly half on labels, kept
    pred[:, 16:21] = 3   # 1/5 on labels: dropped
    pred[:, 32:38] = 4   # on unlabelled ground only: dropped
    out = restrict_to_labelled(truth, pred)
    assert out.dtype == pred.dtype
    assert sorted(np.unique(out)) == [0, 1, 2]
    np.testing.assert_array_equal(out[out > 0], pred[out > 0])
    assert sorted(np.unique(restrict_to_labelled(truth, pred, min_overlap=0.6))) == [0, 1]
    assert sorted(np.unique(restrict_to_labelled(truth, pred, min_overlap=0.2))) == [0, 1, 2, 3]


def test_invalid_inputs():
    truth = mitocheck()
    with pytest.raises(ValueError) as err:
        image_metrics(truth, truth[:-1])
    assert "(364, 260)" in str(err.value) and "(363, 260)" in str(err.value)
    with pytest.raises(ValueError, match=r"\(364, 260\).*\(364, 259\)"):
        pooled_metrics([truth, truth], [truth, truth[:, 1:]])
    with pytest.raises(ValueError, match=r"\(364, 260\).*\(2, 2\)"):
        restrict_to_labelled(truth, np.zeros((2, 2), np.int32))
    with pytest.raises(ValueError, match="dtype float"):
        image_metrics(truth, truth.astype(np.float32))
    with pytest.raises(ValueError, match="negative"):
        image_metrics(truth.astype(np.int16) - 1, truth)
    with pytest.raises(ValueError, match="iou"):
        image_metrics(truth, truth, iou=0.0)
    with pytest.raises(ValueError):
        pooled_metrics([truth], [])


def _variants(truth: np.ndarray) -> dict[str, np.ndarray]:
    """Predictions that differ from the truth in the ways segmentations do."""
    rng = np.random.default_rng(0)
    merged = truth.copy()
    merged[dilation(truth, disk(2)) > 0] = 1  # everything touching merges into few big objects
    merged = label(merged > 0)
    split = truth.copy()
    split[:, ::7] = 0
    split = label(split > 0)
    noise = label(rng.random(truth.shape) > 0.7)
    return {"same": truth, "eroded": erode(truth, 1), "eroded3": erode(truth, 3),
            "dilated": dilation(truth, disk(2)), "shifted": np.roll(truth, 3, axis=1),
            "merged": merged, "split": split, "noise": noise, "empty": np.zeros_like(truth)}


@pytest.mark.parametrize("iou", [0.5, 0.3, 0.7])
def test_metrics_equal_stardists_matching(iou):
    """Our one-pass matching gives StarDist's numbers, per image and pooled, on real labels."""
    from stardist.matching import matching, matching_dataset

    from opsef_opt.score.gt import _summarise, _thresholds

    truth = mitocheck().astype(np.int32)
    preds = _variants(truth)
    thresholds = _thresholds(iou)
    for name, pred in preds.items():
        ours = image_metrics(truth, pred, iou=iou)
        ref = _summarise(dict(zip(thresholds, matching(truth, pred.astype(np.int32), thresh=thresholds))), iou)
        assert ours.keys() == ref.keys()
        for k in ref:
            assert ours[k] == (ref[k] if k in COUNTS else pytest.approx(ref[k], rel=1e-6)), (name, k)
    ours = pooled_metrics([truth] * len(preds), list(preds.values()), iou=iou)
    ref = _summarise(dict(zip(thresholds, matching_dataset([truth] * len(preds),
                                                           [p.astype(np.int32) for p in preds.values()],
                                                           thresh=thresholds, by_image=False,
                                                           show_progress=False))), iou)
    for k in ref:
        assert ours[k] == (ref[k] if k in COUNTS else pytest.approx(ref[k], rel=1e-6)), ("pooled", k)
    assert 0 < ours["tp"] < ours["n_true"]  # the variants include partial matches


def test_a_trial_matches_each_image_once_for_both_aggregations(monkeypatch):
    """The objective's per-image and pooled ground-truth metrics come from one matching per image, and equal
    what gt.image_metrics / gt.pooled_metrics give on their own."""
    from opsef_opt.config import score_spec
    from opsef_opt.score import ImageResult
    from opsef_opt.score import gt as gt_module
    from opsef_opt.score.objective import Objective

    rng = np.random.default_rng(0)
    truths, preds = [], []
    for shift in (0, 2, 5):
        truth = np.zeros((64, 64), np.int32)
        for i, (y, x) in enumerate(rng.integers(4, 56, (6, 2)), 1):
            truth[y - 3:y + 4, x - 3:x + 4] = i
        truths.append(truth)
        preds.append(np.roll(truth, shift, axis=1))
    calls = []
    real = gt_module.match_counts
    monkeypatch.setattr(gt_module, "match_counts", lambda *a, **k: calls.append(1) or real(*a, **k))
    objective = Objective(score_spec({}), "gt_f1")
    results = [ImageResult(p, p.astype(np.float32), truth=t) for t, p in zip(truths, preds)]
    per_image = [objective.image_metrics(r) for r in results]
    metrics = objective.trial_metrics(per_image, results)
    assert len(calls) == 3
    monkeypatch.setattr(gt_module, "match_counts", real)
    pooled = gt_module.pooled_metrics(truths, preds)
    assert {k: metrics[f"gt.pooled.{k}"] for k in pooled} == pooled
    for m, t, p in zip(per_image, truths, preds):
        assert {k: m[f"gt.{k}"] for k in gt_module.image_metrics(t, p)} == gt_module.image_metrics(t, p)
    assert 0 < pooled["f1"] < 1
