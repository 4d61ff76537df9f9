"""One trial, top to bottom: sample → preprocess (cached) → segment (model cached) → score → log."""
from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import optuna

from opsef_opt.io.dataset import Item
from opsef_opt.preprocess import run_chain
from opsef_opt.preprocess.cache import PreprocessCache, cache_key
from opsef_opt.score import ImageResult, ScoreFn
from opsef_opt.search.space import Pipeline, suggest_pipeline
from opsef_opt.config import SearchSpec
from opsef_opt.segment import load_segmenter, model_cache_info
from opsef_opt.track import Tracker, region_table, write_image_artifacts

__all__ = ["TrialFailed", "TrialContext", "run_trial"]


class TrialFailed(Exception):
    """A trial could not be evaluated; the reason is stored with the trial and its MLflow run."""


@dataclass
class TrialContext:
    """What every trial of a study shares (built once per process)."""

    study_name: str
    space: SearchSpec
    items: list[Item]
    score: ScoreFn
    score_options: dict[str, Any]
    cache: PreprocessCache
    tracker: Tracker
    parent_run_id: str
    log_artifacts: bool = True
    timings: list[dict[str, float]] = field(default_factory=list)


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def _evaluate(ctx: TrialContext, pipeline: Pipeline, art_dir: Path) -> tuple[float, dict[str, float]]:
    """Run the pipeline on every item; return the trial score and its metrics."""
    model = load_segmenter(pipeline.model.family, **pipeline.model.init)
    t = dict(time_preprocess_s=0.0, time_segment_s=0.0, time_score_s=0.0, time_artifacts_s=0.0)
    metrics: dict[str, float] = {}
    scores, counts, areas = [], [], []
    for item in ctx.items:
        t0 = time.perf_counter()
        key = cache_key(item.fingerprint, pipeline.steps)
        image, axes = ctx.cache.get(key, lambda: run_chain(item.data, item.axes, pipeline.steps))
        t1 = time.perf_counter()
        seg = model(image, axes, **pipeline.model_params)
        t2 = time.perf_counter()
        result = ImageResult(seg.labels, image, item.truth)
        values = ctx.score.func(result, **ctx.score_options)
        t3 = time.perf_counter()
        score = float(values[ctx.score.key])
        n = int(seg.labels.max())
        scores.append(score)
        counts.append(n)
        areas.append(float(np.count_nonzero(seg.labels)) / max(n, 1))
        metrics.update({f"{k}.{item.name}": v for k, v in values.items()})
        metrics[f"n_objects.{item.name}"] = n
        if ctx.log_artifacts:
            raw = item.data if item.axes == "YX" and item.data.shape == seg.labels.shape else image
            write_image_artifacts(art_dir / _safe(item.name), seg.labels, image, region_table(seg.labels, raw))
        t4 = time.perf_counter()
        for k, dt in zip(t, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
            t[k] += dt
    value = float(np.mean(scores))
    metrics.update(t)
    metrics.update(
        score=value,
        n_objects_mean=float(np.mean(counts)),
        mean_object_area=float(np.mean(areas)),
        cache_hits=ctx.cache.hits,
        cache_computed=ctx.cache.stats["computed"],
        model_loads=model_cache_info()["loads"],
    )
    return value, metrics


def run_trial(trial: optuna.Trial, ctx: TrialContext) -> float:
    """Optuna objective: evaluate one sampled pipeline and record everything about it."""
    started = time.perf_counter()
    pipeline = suggest_pipeline(trial, ctx.space)
    run_id = ctx.tracker.start_trial(
        ctx.parent_run_id, trial.number, ctx.study_name, pipeline.flat,
        tags={"pipeline": pipeline.label},
    )
    trial.set_user_attr("mlflow_run_id", run_id)
    trial.set_user_attr("pipeline", pipeline.label)
    try:
        with tempfile.TemporaryDirectory(prefix="opsef-trial-") as tmp:
            value, metrics = _evaluate(ctx, pipeline, Path(tmp))
            t0 = time.perf_counter()
            if ctx.log_artifacts:
                ctx.tracker.log_folder(run_id, Path(tmp), "images")
            metrics["time_log_s"] = time.perf_counter() - t0
    except KeyboardInterrupt:
        trial.set_user_attr("interrupted", True)
        ctx.tracker.finish(run_id, "KILLED", tags={"opsef.status": "interrupted"})
        raise
    except Exception as e:  # any failure of this pipeline: record it, let the study go on
        reason = f"{type(e).__name__}: {e}"
        trial.set_user_attr("error", reason)
        ctx.tracker.finish(run_id, "FAILED", tags={"opsef.status": "failed", "opsef.error": reason})
        raise TrialFailed(reason) from e
    metrics["time_trial_s"] = time.perf_counter() - started
    ctx.tracker.log(run_id, metrics=metrics)
    ctx.tracker.finish(run_id, "FINISHED", tags={"opsef.status": "complete"})
    for key in ("n_objects_mean", "time_preprocess_s", "time_segment_s", "time_trial_s"):
        trial.set_user_attr(key, metrics[key])
    ctx.timings.append({k: v for k, v in metrics.items() if k.startswith("time_")})
    return value
