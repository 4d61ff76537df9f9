"""Confidence proxy: how sure the model itself is about the objects it reports.

Why it tracks quality: models that score their detections (StarDist's object
probability, Cellpose's cell probability) are calibrated on their training
data, so low confidence flags images or settings outside what the model
knows (wrong scale, wrong contrast, wrong modality). It cannot see errors the
model is confidently wrong about, and it does not apply to models that give
no confidence (classical thresholding): NaN then, so the combined score
ignores it (:func:`~opsef_opt.score.proxies.combine.combine` leaves NaN
proxies out and renormalises the other weights).

Per-object confidence by model family (``Segmentation.confidence``, each in
[0, 1]; see each segmenter's docstring for why):

* ``bioimageio_unet``: mean foreground probability inside the object;
* ``cp_unet``: mean P(interior) inside the object;
* ``stardist``: the object's probability (``details["prob"]`` of its polygon);
* ``cellpose``: mean cell probability x flow agreement
  ``clip(1 - flow_error / 0.4, 0, 1)`` (Cellpose's own per-object flow error);
* ``classical``: none (NaN).

NaN is logged as NaN: MLflow's client and REST API return NaN, only its SQL
tables hold ``value = 0.0`` with ``is_nan = 1`` (read metrics through MLflow).
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

from opsef_opt.score.registry import ImageResult, register_proxy

__all__ = ["mean_confidence", "confidence_score"]


def mean_confidence(labels: np.ndarray, confidence: Mapping[int, float] | None) -> float:
    """Area-weighted mean confidence of the objects present in ``labels``.

    NaN when ``confidence`` is None or empty, or when no object in
    ``labels`` has a confidence; 0 when ``labels`` has no objects but
    ``confidence`` is given (every proxy scores an empty result 0; a model
    with confidence that finds nothing gives ``{}``, hence NaN). Area
    weighting: a confident large object and an unsure speck are not worth
    the same. Works for any dimension.
    """
    if not confidence:
        return float("nan")
    labels = np.asarray(labels)
    counts = np.bincount(labels.ravel())
    counts[0] = 0
    present = np.flatnonzero(counts)
    if present.size == 0:
        return 0.0
    ids = np.array([i for i in present if int(i) in confidence], dtype=np.intp)
    if ids.size == 0:
        return float("nan")
    values = np.clip(np.array([float(confidence[int(i)]) for i in ids]), 0.0, 1.0)
    return float(np.average(values, weights=counts[ids]))


@register_proxy("confidence", weight=0.0)  # logged, not weighted: see "Default weights" in __init__
def confidence_score(result: ImageResult) -> dict[str, float]:
    """Area-weighted mean per-object model confidence (NaN for models that give none)."""
    return {"confidence": mean_confidence(result.labels, result.confidence)}
