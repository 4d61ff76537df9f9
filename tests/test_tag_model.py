"""Tag model on runs built from real segmentations of dsb2018_256.

Each "run" is a derived segmentation of a random 128 x 128 crop of the real
ground truth: slightly eroded/dilated (correct), objects cut in two (over),
neighbours fused by a closing (under), empty / noise / one blob (failed).
Its metrics are simple real measurements named like the proxies a study logs.
"""
from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd
import pytest
import tifffile
from skimage.filters import gaussian
from skimage.measure import label, regionprops_table
from skimage.morphology import closing, disk, erosion
from skimage.segmentation import expand_labels

from opsef_opt.score.tag_model import (
    DEFAULT_VALUES, TAGS, NotEnoughTags, TagModel, fit_tag_model, tag_features,
)

from conftest import shared

PER_TAG = 14
CROP = 128


def _split(labels: np.ndarray, rng: np.random.Generator, fraction: float) -> np.ndarray:
    """Cut ``fraction`` of the objects in two along a random line through their centroid."""
    out = labels.copy()
    yy, xx = np.indices(labels.shape)
    nxt = labels.max() + 1
    for i in np.unique(labels)[1:]:
        if rng.random() > fraction:
            continue
        mask = labels == i
        angle = rng.uniform(0, np.pi)
        side = (yy - yy[mask].mean()) * np.cos(angle) + (xx - xx[mask].mean()) * np.sin(angle) > 0
        out[mask & side] = nxt
        nxt += 1
    return out


def _derive(gt: np.ndarray, tag: str, rng: np.random.Generator) -> np.ndarray:
    if tag == "correct":
        r = int(rng.integers(0, 3))
        return expand_labels(gt, r) if rng.random() < 0.5 else np.where(erosion(gt > 0, disk(r)), gt, 0)
    if tag == "over":
        return _split(gt, rng, rng.uniform(0.5, 1.0))
    if tag == "under":
        return label(closing(gt > 0, disk(int(rng.integers(6, 12)))))
    kind = rng.integers(3)  # failed
    if kind == 0:
        return np.zeros_like(gt)
    if kind == 1:
        noise = gaussian(rng.random(gt.shape), sigma=float(rng.uniform(1, 3)))
        return label(noise > np.quantile(noise, rng.uniform(0.4, 0.7)))
    return (expand_labels(gt, 40) > 0).astype(np.int32)  # everything one or few blobs


def _metrics(seg: np.ndarray, gt: np.ndarray, image: np.ndarray) -> dict[str, float]:
    """Real measurements, named like a study's trial-level metrics."""
    n, n_gt = int(len(np.unique(seg)) - 1), int(len(np.unique(gt)) - 1)
    fg = seg > 0
    metrics = {
        "proxy.consensus.count_ratio": math.log2((n + 1) / (n_gt + 1)),
        "proxy.sanity.fg_fraction": float(fg.mean()),
        "proxy.stability": math.nan,  # a proxy this study did not compute
        "n_objects_mean": float(n),
        "f1": 0.5,  # not a proxy: must be ignored by tag_features
    }
    if n:
        table = regionprops_table(seg, properties=("area", "solidity"))
        metrics["proxy.shape"] = float(np.mean(table["solidity"]))
        metrics["mean_object_area"] = float(np.mean(table["area"]))
        if (~fg).any():
            metrics["proxy.contrast"] = float((image[fg].mean() - image[~fg].mean()) / (image.std() + 1e-9))
    metrics["proxy"] = float(np.nanmean([metrics.get("proxy.shape", 0.0),
                                         1 - abs(metrics["proxy.consensus.count_ratio"]) / 4]))
    return metrics


@pytest.fixture(scope="module")
def runs() -> tuple[pd.DataFrame, list[str]]:
    image = tifffile.imread(shared("gt", "dsb2018_256", "image.tif")).astype(np.float32)
    gt_full = tifffile.imread(shared("gt", "dsb2018_256", "labels.tif")).astype(np.int32)
    rng = np.random.default_rng(7)
    rows, tags = [], []
    for i in range(PER_TAG):
        for tag in TAGS:
            y, x = rng.integers(0, gt_full.shape[0] - CROP + 1, size=2)
            gt = label(gt_full[y:y + CROP, x:x + CROP] > 0)
            seg = _derive(gt, tag, rng)
            feats = tag_features(_metrics(seg, gt, image[y:y + CROP, x:x + CROP]))
            rows.append({"run_name": f"run-{len(rows)}", **feats})
            tags.append(tag)
    return pd.DataFrame(rows), tags


def _first(tags: list[str], per_tag: dict[str, int]) -> np.ndarray:
    """Mask of the first ``per_tag[t]`` runs of each tag: what an analyst tagged."""
    seen = {t: 0 for t in per_tag}
    mask = []
    for t in tags:
        mask.append(seen[t] < per_tag[t])
        seen[t] += 1
    return np.array(mask)


def test_tag_features_from_run_metrics():
    feats = tag_features({"proxy": 0.7, "proxy.consensus": 0.8, "proxy.consensus.count_ratio": -0.5,
                          "proxy.shape": float("nan"), "proxy.contrast": float("inf"),
                          "n_objects_mean": 63.0, "f1": 0.9, "duration_s": 3.0})
    assert set(feats) == {"proxy", "proxy.consensus", "proxy.consensus.count_ratio", "proxy.shape",
                          "proxy.contrast", "log1p.n_objects_mean", "log1p.mean_object_area"}
    assert feats["proxy.consensus.count_ratio"] == -0.5
    assert feats["log1p.n_objects_mean"] == pytest.approx(math.log(64))
    assert math.isnan(feats["log1p.mean_object_area"]) and math.isnan(feats["proxy.shape"])
    assert math.isnan(feats["proxy.contrast"])


def test_few_tags_rank_many_runs(runs):
    """15 tags (imbalanced, as an analyst would give them) predict the other 41 runs."""
    X, tags = runs
    train = _first(tags, {"correct": 5, "over": 4, "under": 3, "failed": 3})
    y = np.array(tags, dtype=object)
    model = fit_tag_model(X[train], list(y[train]), seed=0)
    assert isinstance(model, TagModel) and model.n_train == 15
    assert model.classes == list(TAGS)
    assert "run_name" not in model.features and "proxy.stability" in model.features  # all-NaN kept, harmless
    assert model.baseline_accuracy == pytest.approx(5 / 15)
    assert model.cv_accuracy > model.baseline_accuracy + 0.2, model.describe()

    held_X, held_y = X[~train], y[~train]
    predicted = np.array(model.predict_tag(held_X), dtype=object)
    accuracy = float(np.mean(predicted == held_y))
    baseline = float(np.mean(held_y == "correct"))  # always the most frequent training tag
    assert accuracy > baseline + 0.3 and accuracy >= 0.7, (accuracy, baseline)

    value = model.predict_value(held_X)
    mean = {t: value[held_y == t].mean() for t in TAGS}
    assert mean["correct"] > max(mean["over"], mean["under"])
    assert min(mean["over"], mean["under"]) > mean["failed"]
    proba = model.predict_proba(held_X)
    assert proba.shape == (len(held_X), 4)
    np.testing.assert_allclose(proba.sum(axis=1), 1)
    # the classifier's expected tag value; predict_value is the value model (calibrated proxy + corrections)
    np.testing.assert_allclose(model.tag_value(held_X), proba @ [DEFAULT_VALUES[t] for t in model.classes])
    np.testing.assert_allclose(value, model.model_value(held_X))
    assert np.isfinite(value).all() and model.proxy_check is None and not model.use_proxy


def test_describe(runs):
    X, tags = runs
    train = _first(tags, {"correct": 6, "over": 4, "under": 0, "failed": 4})
    model = fit_tag_model(X[train], [t for t, m in zip(tags, train) if m])
    line = model.describe()
    assert re.fullmatch(r"tag model: 14 tagged runs \(correct 6, over 4, failed 4\); cross-validated accuracy "
                        r"\d\.\d\d \(always 'correct': 0\.43\)", line), line
    assert model.classes == ["correct", "over", "failed"]


def test_not_enough_tags(runs):
    X, _ = runs
    with pytest.raises(NotEnoughTags) as err:
        fit_tag_model(X[:5], ["correct", None, "failed", "", "correct"])
    assert str(err.value) == ("3 tagged runs (correct 2, failed 1); at least 10 with at least "
                              "2 different tags are needed")
    assert err.value.counts == {"correct": 2, "failed": 1}
    assert isinstance(err.value, ValueError)
    with pytest.raises(NotEnoughTags, match=r"^12 tagged runs \(correct 12\); at least 10 with at least 2"):
        fit_tag_model(X[:12], ["correct"] * 12)
    with pytest.raises(NotEnoughTags, match=r"^0 tagged runs; at least 4 "):
        fit_tag_model(X[:3], [None] * 3, min_tagged=4)
    with pytest.raises(ValueError, match="unknown tag"):
        fit_tag_model(X[:3], ["correct", "good", "over"])


def test_untagged_rows_unknown_and_missing_columns(runs):
    X, tags = runs
    train = _first(tags, {t: 4 for t in TAGS})
    partial = [t if m else None for t, m in zip(tags, train)]  # untagged rows are skipped
    model = fit_tag_model(X, partial)
    assert model.n_train == 16
    new = X[~train].drop(columns=["proxy.shape"]).assign(**{"proxy.new_model_metric": 1.0, "other": "x"})
    new = new[new.columns[::-1]]  # column order does not matter
    proba = model.predict_proba(new)
    assert proba.shape == (len(new), 4) and np.isfinite(proba).all()
    # a column of NaN at fit time and at prediction time
    empty = X.assign(**{"proxy.contrast": np.nan})
    model2 = fit_tag_model(empty, partial)
    assert np.isfinite(model2.predict_value(empty)).all()
    assert model.predict_proba(X.iloc[:0]).shape == (0, 4)


def test_deterministic_and_leave_one_out(runs):
    X, tags = runs
    train = _first(tags, {"correct": 5, "over": 4, "under": 3, "failed": 3})
    fit = [t for t, m in zip(tags, train) if m]
    a, b = fit_tag_model(X[train], fit, seed=3), fit_tag_model(X[train], fit, seed=3)
    assert a.cv_accuracy == b.cv_accuracy
    np.testing.assert_array_equal(a.predict_proba(X), b.predict_proba(X))
    # a tag used once: leave-one-out cross-validation
    once = _first(tags, {"correct": 6, "over": 4, "under": 0, "failed": 1})
    model = fit_tag_model(X[once], [t for t, m in zip(tags, once) if m], seed=0)
    assert model.n_train == 11 and 0 <= model.cv_accuracy <= 1
    assert "failed 1" in model.describe()
