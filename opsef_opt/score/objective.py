"""From one trial's per-image results to its logged metrics and the value the search maximises.

Whatever the objective, every trial logs every registered proxy (so proxies
can be checked against ground truth, and the learned tag model has features)
and, when the images have labels, the ground-truth metrics. Metric names:

- ``proxy`` (the combined proxy), ``proxy.<name>``, ``proxy.<name>.<detail>``:
  means over the images;
- ``gt.<metric>``: mean over images (per-image aggregation, the DSB 2018
  convention); ``gt.pooled.<metric>``: true/false positives summed over all
  images first (images with many objects weigh more);
- ``score``: the objective's value.
"""
from __future__ import annotations

import math
import weakref
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from opsef_opt.config import ScoreSpec
from opsef_opt.score import PROXIES, ImageResult
from opsef_opt.score import gt
from opsef_opt.score.proxies import combine

__all__ = ["Objective", "ObjectiveNotApplicable", "resolve_objective"]


class ObjectiveNotApplicable(ValueError):
    """The objective has no value for this trial (e.g. model confidence of a model that gives none)."""


def resolve_objective(objective: str, all_have_truth: bool) -> str:
    """``auto`` means ground truth (F1) when every image has labels, else the combined proxy."""
    if objective == "auto":
        return "gt_f1" if all_have_truth else "proxy"
    return objective


@dataclass
class Objective:
    """Scores trials for one stage.

    ``name`` is a resolved objective (never ``auto``); ``tag_model`` is the
    fitted model of the analyst's tags for the ``tags`` and ``tag_model``
    objectives.
    """

    spec: ScoreSpec
    name: str
    sparse: bool = False
    tag_model: Any = None
    #: each image's ground-truth matching counts since the last trial_metrics, keyed by its result
    #: (identity, weakly held), so the pooled metrics do not match every image a second time
    _counts: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def needs_truth(self) -> bool:
        return self.name.startswith("gt_")

    @property
    def uses_tags(self) -> bool:
        return self.name in ("tags", "tag_model")

    def image_metrics(self, result: ImageResult) -> dict[str, float]:
        """Every proxy, the combined proxy and (with labels) the ground-truth metrics of one image."""
        out: dict[str, float] = {}
        values: dict[str, float] = {}
        for setting in self.spec.proxies:
            got = PROXIES.get(setting.name).func(result, **setting.options)
            values[setting.name] = float(got.get(setting.name, math.nan))
            out.update({f"proxy.{k}": float(v) for k, v in got.items()})
        out["proxy"] = combine(values, self.spec.weights, self.spec.gate)
        if result.truth is not None:
            counts = gt.image_counts(result.truth, result.labels, self.spec.iou, self.sparse)
            self._counts[id(result)] = (weakref.ref(result), counts)
            while len(self._counts) > 256:  # image_metrics without trial_metrics (a pruned trial, a bench)
                del self._counts[next(iter(self._counts))]
            out.update({f"gt.{k}": v for k, v in gt.image_metrics_from_counts(counts, self.spec.iou).items()})
        return out

    def trial_metrics(self, per_image: Sequence[Mapping[str, float]], results: Sequence[ImageResult]) -> dict[str, float]:
        """Aggregate the images: means of proxies, per-image mean and pooled ground-truth metrics."""
        keys = sorted({k for m in per_image for k in m})
        out: dict[str, float] = {}
        for k in keys:
            if k.startswith("gt."):
                continue
            vals = np.array([m.get(k, math.nan) for m in per_image], float)
            out[k] = float(np.nanmean(vals)) if np.isfinite(vals).any() else math.nan
        truths = [r.truth for r in results]
        if truths and all(t is not None for t in truths):
            gts = [{k[3:]: v for k, v in m.items() if k.startswith("gt.")} for m in per_image]
            out.update({f"gt.{k}": v for k, v in gt.mean_metrics(gts).items()})
            counts = []
            for i, r in enumerate(results):
                kept = self._counts.get(id(r))
                counts.append(kept[1] if kept is not None and kept[0]() is r else
                              gt.image_counts(r.truth, r.labels, self.spec.iou, self.sparse, where=f" (image {i})"))
            pooled = gt.pooled_from_counts(counts, self.spec.iou)
            out.update({f"gt.pooled.{k}": v for k, v in pooled.items()})
        self._counts.clear()
        return out

    def partial(self, per_image: Sequence[Mapping[str, float]]) -> float | None:
        """The objective over the images scored so far (for pruning); None when it has no such value."""
        if self.uses_tags:
            return None
        key = f"gt.{self.name[3:]}" if self.needs_truth else self.name
        vals = np.array([m.get(key, math.nan) for m in per_image], float)
        return float(np.nanmean(vals)) if np.isfinite(vals).any() else None

    def value(self, metrics: Mapping[str, float]) -> float:
        """The number the search maximises, from the trial's metrics."""
        if self.needs_truth:
            metric = self.name[3:]
            key = f"gt.{metric}" if self.spec.aggregate == "per_image" else f"gt.pooled.{metric}"
            v = metrics.get(key, math.nan)
        elif self.uses_tags:
            from opsef_opt.score.tag_model import tag_features
            import pandas as pd

            if self.tag_model is None:
                raise ObjectiveNotApplicable(f"objective {self.name}: no tag model fitted")
            v = float(self.tag_model.predict_value(pd.DataFrame([tag_features(metrics)]))[0])
        else:
            v = metrics.get(self.name, math.nan)
        if not math.isfinite(v):
            raise ObjectiveNotApplicable(
                f"objective {self.name} has no value for this pipeline (e.g. a model without confidences); "
                f"choose another study.score.objective")
        return float(v)
