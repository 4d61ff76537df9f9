"""One trial, top to bottom: sample → preprocess (cached) → segment (model cached) → score → log."""
from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

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
from opsef_opt.track.recorder import Recorder

__all__ = ["TrialFailed", "TrialContext", "ImageOutput", "evaluate", "record_trial", "run_trial"]


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
    recorder: Recorder
    log_artifacts: bool = True
    #: raises KeyboardInterrupt when the user asked to stop (checked between images)
    check_stop: Callable[[], None] = lambda: None
    last: dict[str, Any] = field(default_factory=dict)  # outcome of the latest trial, for progress lines


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


@dataclass
class ImageOutput:
    """What a trial produced for one item, kept until it is recorded."""

    name: str
    labels: np.ndarray
    shown: np.ndarray  # the preprocessed image the model saw (overlay background)
    raw: np.ndarray  # the image intensities are measured on


def evaluate(ctx: TrialContext, pipeline: Pipeline) -> tuple[float, dict[str, float], list[ImageOutput]]:
    """Run the pipeline on every item; return the trial score, its metrics and the outputs."""
    model = load_segmenter(pipeline.model.family, **pipeline.model.init)
    t = dict(time_preprocess_s=0.0, time_segment_s=0.0, time_score_s=0.0)
    metrics: dict[str, float] = {}
    outputs: list[ImageOutput] = []
    scores, counts, areas = [], [], []
    for item in ctx.items:
        ctx.check_stop()
        t0 = time.perf_counter()
        key = cache_key(item.fingerprint, pipeline.steps)
        image, axes = ctx.cache.get(key, lambda: run_chain(item.data, item.axes, pipeline.steps))
        t1 = time.perf_counter()
        seg = model(image, axes, **pipeline.model_params)
        t2 = time.perf_counter()
        values = ctx.score.func(ImageResult(seg.labels, image, item.truth), **ctx.score_options)
        t3 = time.perf_counter()
        for k, dt in zip(t, (t1 - t0, t2 - t1, t3 - t2)):
            t[k] += dt
        n = int(seg.labels.max())
        scores.append(float(values[ctx.score.key]))
        counts.append(n)
        areas.append(float(np.count_nonzero(seg.labels)) / max(n, 1))
        metrics.update({f"{k}.{item.name}": v for k, v in values.items()})
        metrics[f"n_objects.{item.name}"] = n
        raw = item.data if item.axes == "YX" and item.data.shape == seg.labels.shape else image
        outputs.append(ImageOutput(item.name, seg.labels, image, raw))
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
    return value, metrics, outputs


def record_trial(tracker: Tracker, run_id: str, outputs: list[ImageOutput], metrics: dict[str, float]) -> None:
    """Write each image's overlay, labels and region table, log them with the metrics, close the run."""
    t0 = time.perf_counter()
    if outputs:
        with tempfile.TemporaryDirectory(prefix="opsef-trial-") as tmp:
            for o in outputs:
                write_image_artifacts(Path(tmp) / _safe(o.name), o.labels, o.shown, region_table(o.labels, o.raw))
            tracker.log_folder(run_id, Path(tmp), "images")
    metrics = {**metrics, "time_log_s": time.perf_counter() - t0}
    tracker.log(run_id, metrics=metrics, tags={"opsef.status": "complete"})
    tracker.finish(run_id, "FINISHED")


def run_trial(trial: optuna.Trial, ctx: TrialContext) -> float:
    """Optuna objective: evaluate one sampled pipeline; its recording is handed to the recorder."""
    started = time.perf_counter()
    pipeline = suggest_pipeline(trial, ctx.space)
    run_id = ctx.tracker.start_trial(
        ctx.parent_run_id, trial.number, ctx.study_name, pipeline.flat,
        tags={"pipeline": pipeline.label},
    )
    trial.set_user_attr("mlflow_run_id", run_id)
    ctx.last = {"number": trial.number, "pipeline": pipeline.label}
    try:
        value, metrics, outputs = evaluate(ctx, pipeline)
    except KeyboardInterrupt:
        trial.set_user_attr("interrupted", True)
        ctx.tracker.finish(run_id, "KILLED", tags={"opsef.status": "interrupted"})
        raise
    except Exception as e:  # any failure of this pipeline: record it, let the study go on
        reason = f"{type(e).__name__}: {e}"
        trial.set_user_attr("error", reason)
        trial.set_user_attr("summary", {"pipeline": pipeline.label, "model": pipeline.model.label})
        ctx.last["error"] = reason
        ctx.tracker.finish(run_id, "FAILED", tags={"opsef.status": "failed", "opsef.error": reason})
        raise TrialFailed(reason) from e
    metrics["time_trial_s"] = time.perf_counter() - started
    # one storage write for everything the leaderboard shows
    trial.set_user_attr("summary", {"pipeline": pipeline.label, "model": pipeline.model.label, **{
        k: metrics[k] for k in ("n_objects_mean", "time_preprocess_s", "time_segment_s", "time_trial_s")}})
    ctx.recorder.submit(f"trial {trial.number}", record_trial, ctx.tracker, run_id,
                        outputs if ctx.log_artifacts else [], metrics)
    ctx.last["value"] = value
    return value
