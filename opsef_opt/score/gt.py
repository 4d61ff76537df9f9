"""Ground-truth metrics, computed with :func:`stardist.matching.matching`.

StarDist's matching is the maintained reference implementation of the
DSB 2018-style instance matching (optimal one-to-one assignment at an IoU
threshold), so we do not hand-write it.
"""
from __future__ import annotations

import numpy as np

from opsef_opt.score.registry import ImageResult, register_score

__all__ = ["instance_metrics", "gt_f1"]


def instance_metrics(truth: np.ndarray, pred: np.ndarray, iou: float = 0.5) -> dict[str, float]:
    """Precision, recall, F1, accuracy, mean matched IoU and panoptic quality at ``iou``.

    ``mean_matched_iou`` is the mean IoU of the matched pairs (StarDist's
    ``mean_matched_score``): how well the found objects are delineated,
    independent of how many were found.
    """
    from stardist.matching import matching

    truth = np.asarray(truth)
    pred = np.asarray(pred)
    if truth.shape != pred.shape:
        raise ValueError(f"ground truth shape {truth.shape} differs from prediction shape {pred.shape}")
    if truth.max() == 0 and pred.max() == 0:
        return dict(precision=1.0, recall=1.0, f1=1.0, accuracy=1.0, mean_matched_iou=1.0,
                    panoptic_quality=1.0, n_true=0.0, n_pred=0.0, tp=0.0)
    m = matching(truth.astype(np.int32), pred.astype(np.int32), thresh=iou)
    return dict(
        precision=float(m.precision),
        recall=float(m.recall),
        f1=float(m.f1),
        accuracy=float(m.accuracy),
        mean_matched_iou=float(m.mean_matched_score),
        panoptic_quality=float(m.panoptic_quality),
        n_true=float(m.n_true),
        n_pred=float(m.n_pred),
        tp=float(m.tp),
    )


@register_score("gt_f1", key="f1", needs_truth=True)
def gt_f1(result: ImageResult, iou: float = 0.5) -> dict[str, float]:
    """F1 at the IoU threshold against ground-truth labels (per image; the trial averages images)."""
    return instance_metrics(result.truth, result.labels, iou=iou)
