"""One trial, top to bottom: sample → preprocess (cached) → segment (model cached) → score → log."""
from __future__ import annotations

import os
import socket
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import optuna
import pandas as pd

from opsef_opt.io.dataset import Item
from opsef_opt.io.naming import safe_name
from opsef_opt.pipeline import Pipeline
from opsef_opt.post.props import raw_intensity, region_properties
from opsef_opt.preprocess import normalize01
from opsef_opt.preprocess.cache import PreprocessCache, cache_key
from opsef_opt.score import PROXIES, ImageResult
from opsef_opt.score.objective import Objective
from opsef_opt.search.budget import over_budget
from opsef_opt.search.pool import ConsensusPool, LabelStore
from opsef_opt.search.segcache import SegmentCache, segment_key
from opsef_opt.search.infercache import InferenceCache, inference_key
from opsef_opt.search.space import suggest_pipeline
from opsef_opt.config import SearchSpec
from opsef_opt.segment import model_cache_info
from opsef_opt.track import Tracker, write_image_artifacts
from opsef_opt.track.record_process import ProcessRecorder
from opsef_opt.track.recorder import Recorder
from opsef_opt.search import attrs as A

__all__ = ["TrialFailed", "TrialContext", "ImageOutput", "evaluate", "record_trial", "run_trial"]


class TrialFailed(Exception):
    """A trial could not be evaluated; the reason is stored with the trial and its MLflow run."""


@dataclass
class TrialContext:
    """What every trial of a stage shares (built once per process)."""

    study_name: str
    space: SearchSpec
    items: list[Item]
    objective: Objective
    cache: PreprocessCache
    tracker: Tracker
    parent_run_id: str
    recorder: Recorder | ProcessRecorder  # a recording process (a thread where that cannot run)
    store: LabelStore
    pool: ConsensusPool | None = None
    log_artifacts: bool = True
    #: raises KeyboardInterrupt when the user asked to stop (checked between images)
    check_stop: Callable[[], None] = lambda: None
    last: dict[str, Any] = field(default_factory=dict)  # outcome of the latest trial, for progress lines
    references: dict[str, np.ndarray] = field(default_factory=dict)
    #: the stage's trial budget (checked again when a trial starts: several workers share it)
    budget: int | None = None
    #: segmentations already computed (by any stage or worker), reused instead of running the model again
    segments: SegmentCache | None = None
    #: raw network outputs per inference key (forward passes shared by post-processing settings); None: off
    inference: InferenceCache | None = None


@dataclass
class ImageOutput:
    """What a trial produced for one item, kept until it is recorded."""

    name: str
    labels: np.ndarray
    shown: np.ndarray  # the preprocessed image the model saw (overlay background)
    raw: np.ndarray | None  # the image intensities are measured on (raw_intensity; None: not on the labels' grid)
    metrics: dict[str, float] = field(default_factory=dict)
    #: the item's ground-truth labels, when it has them (overlays then colour TP / FP / misses)
    truth: np.ndarray | None = None
    #: the ground truth labels only some objects (predictions elsewhere are not judged)
    sparse: bool = False


def reference_intensities(item: Item, shape: tuple[int, ...], shown: np.ndarray) -> np.ndarray:
    """The raw image as float32 in [0, 1], channels averaged, on the labels' grid.

    :func:`~opsef_opt.post.props.raw_intensity` normalised. Intensity proxies
    (boundary contrast) measure every candidate on this same image, so a
    preprocessing that boosts contrast does not score itself. When the
    pipeline changes the geometry (a projection), the preprocessed image is
    the only one on the labels' grid and is used instead.
    """
    data = raw_intensity(item.data, item.axes, shape, planes=False)
    if data is None:
        data = shown.mean(axis=-1) if shown.ndim == len(shape) + 1 else shown
    return normalize01(np.asarray(data, np.float32))


def _lookup(ctx: TrialContext, model, pipeline: Pipeline, preprocess_key: str, counts: dict[str, int],
            perturbation: str | None = None):
    """``lookup(inference_params, compute)`` for :meth:`Segmenter.cached_call`: raw outputs via the cache."""

    def lookup(inference: dict, compute: Callable[[], dict]) -> dict:
        if ctx.inference is None:
            raw, how = compute(), "computed"
        else:
            key = inference_key(preprocess_key, pipeline.model.family, pipeline.model.init, inference,
                                model.raw_version, perturbation)
            raw, how = ctx.inference.get(key, compute)
        counts["forward_passes"] += how == "computed"
        counts["inference_reused"] += how != "computed"
        return raw

    return lookup


class _Resegment:
    """The trial's whole pipeline as a function of the input array (for proxies of cost ``"model"``: stability).

    The input is shaped like the item's data (prepared: reshaped at load), so it runs
    :meth:`Pipeline.preprocess` and :meth:`Pipeline.segment`. Called with
    ``perturbation=<name and settings>`` (the stability proxy does), the forward pass on that
    perturbed input is cached under the image's inference key plus the perturbation.
    """

    accepts_perturbation = True

    def __init__(self, ctx: TrialContext, model, pipeline: Pipeline, axes: str, preprocess_key: str,
                 counts: dict[str, int]) -> None:
        self.ctx, self.model, self.pipeline, self.axes = ctx, model, pipeline, axes
        self.preprocess_key, self.counts = preprocess_key, counts

    def __call__(self, source: np.ndarray, perturbation: str | None = None) -> np.ndarray:
        image, out_axes = self.pipeline.preprocess(source, self.axes)
        if perturbation is None:
            if self.model.has_network:
                self.counts["forward_passes"] += 1
            return self.pipeline.segment(image, out_axes).labels
        lookup = _lookup(self.ctx, self.model, self.pipeline, self.preprocess_key, self.counts, perturbation)
        return self.pipeline.segment(image, out_axes, lookup=lookup).labels


def _needs_model_runs(objective: Objective) -> bool:
    """Whether an enabled score uses a proxy that runs the pipeline again (cost ``"model"``, e.g. stability).

    Else the trial gives no re-segmenter and those proxies are NaN: their extra model runs are
    skipped. Enabled: a non-zero weight, the gate, an objective of ``proxy.<name>``, or an
    objective scored by tags (the tag model takes every proxy as a feature).
    """
    spec = objective.spec
    rerunning = [p.name for p in spec.proxies if PROXIES.get(p.name).cost == "model"]
    return any(bool(spec.weights.get(name)) or spec.gate == name or objective.name.startswith(f"proxy.{name}")
               or objective.uses_tags for name in rerunning)


def evaluate(ctx: TrialContext, pipeline: Pipeline, number: int | None = None,
             report: Callable[[int, float], None] | None = None) -> tuple[float, dict[str, float], list[ImageOutput]]:
    """Run the pipeline on every item; return the trial score, its metrics and the outputs.

    ``number``: the trial's number when it is evaluated again (its stored
    labels then do not vote in its own consensus). ``report(step, value)``
    receives the objective over the images done so far after each image but
    the last, and may stop the trial (pruning).
    """
    model = pipeline.segmenter()
    t = dict(time_preprocess_s=0.0, time_segment_s=0.0, time_score_s=0.0)
    outputs: list[ImageOutput] = []
    results: list[ImageResult] = []
    if ctx.pool is not None:
        ctx.pool.refresh()
    reused = 0
    counts = {"forward_passes": 0, "inference_reused": 0}
    rerun = _needs_model_runs(ctx.objective)
    for item in ctx.items:
        ctx.check_stop()
        t0 = time.perf_counter()
        key = cache_key(item.fingerprint, pipeline.steps)
        # items are prepared (reshaped) at load: the pipeline's reshape is not applied again here
        image, axes = ctx.cache.get(key, lambda: pipeline.preprocess(item.data, item.axes))
        t1 = time.perf_counter()
        lookup = _lookup(ctx, model, pipeline, key, counts)

        def run_model():
            if model.has_network and not model.splits:  # a family that only implements segment: run whole
                counts["forward_passes"] += 1
            return pipeline.segment(image, axes, lookup=lookup)

        if ctx.segments is not None:
            seg, was_reused = ctx.segments.get(
                segment_key(key, pipeline.model.family, pipeline.model.init, pipeline.model_params), run_model)
            reused += was_reused
        else:
            seg = run_model()
        t2 = time.perf_counter()
        if item.name not in ctx.references:
            ctx.references[item.name] = reference_intensities(item, seg.labels.shape, image)
        result = ImageResult(
            seg.labels, image, item.truth, raw=ctx.references[item.name], confidence=seg.confidence,
            consensus=ctx.pool.consensus(item.name, number) if ctx.pool is not None else None,
            source=item.data, source_axes=item.axes,
            segment=_Resegment(ctx, model, pipeline, item.axes, key, counts) if rerun else None,
        )
        values = ctx.objective.image_metrics(result)
        t3 = time.perf_counter()
        for k, dt in zip(t, (t1 - t0, t2 - t1, t3 - t2)):
            t[k] += dt
        n = int(seg.labels.max())
        values.update(n_objects=n, mean_object_area=float(np.count_nonzero(seg.labels)) / max(n, 1))
        results.append(result)
        raw = raw_intensity(item.data, item.axes, seg.labels.shape) if ctx.log_artifacts else None
        outputs.append(ImageOutput(item.name, seg.labels, image, raw, values, truth=item.truth,
                                   sparse=ctx.objective.sparse))
        if report is not None and len(outputs) < len(ctx.items):
            partial = ctx.objective.partial([o.metrics for o in outputs])
            if partial is not None:
                report(len(outputs) - 1, partial)
    metrics = ctx.objective.trial_metrics([o.metrics for o in outputs], results)
    metrics.update(t)
    metrics.update(
        n_objects_mean=metrics.pop("n_objects"),
        cache_hits=ctx.cache.hits,
        cache_computed=ctx.cache.stats["computed"],
        model_loads=model_cache_info()["loads"],
        segment_reused=reused,  # images whose labels an earlier identical evaluation gave (no model run)
        # forward passes this trial ran (stability's perturbed inputs included) and raw outputs it reused
        forward_passes=counts["forward_passes"],
        inference_reused=counts["inference_reused"],
    )
    for o in outputs:  # the headline numbers per image; the full table is an artifact
        for k in ("n_objects", "proxy", "gt.f1", "gt.ap"):
            if k in o.metrics:
                metrics[f"{o.name}/{k}"] = o.metrics[k]
    value = ctx.objective.value(metrics)
    metrics["score"] = value
    return value, metrics, outputs


def record_trial(tracker: Tracker, run_id: str, outputs: list[ImageOutput], metrics: dict[str, float]) -> None:
    """Write each image's overlay, labels and region table, log them with the metrics, close the run.

    The region table is the apply mode's (:func:`~opsef_opt.post.props.region_properties`, on the
    raw image); each image's files go to ``images/<safe_name(image)>/``.

    Each image's overlay is also logged as an MLflow image (key
    ``overlay/<image>``, step 0), which MLflow's image charts show side by side
    across runs; the colour-coded ``labels.png`` is a plain artifact (an MLflow
    image costs two more PNG encodings: ~30 ms per image in the recording process).
    """
    from opsef_opt.track.artifacts import image_key

    t0 = time.perf_counter()
    if outputs:
        with tempfile.TemporaryDirectory(prefix="opsef-trial-") as tmp:
            figures = {}
            for o in outputs:
                figures[o.name] = write_image_artifacts(Path(tmp) / safe_name(o.name), o.labels, o.shown,
                                                        region_properties(o.labels, raw=o.raw), o.truth, o.sparse)
            table = pd.DataFrame([{"image": o.name, **o.metrics} for o in outputs])
            table.to_csv(Path(tmp) / "metrics_per_image.csv", index=False)
            tracker.log_folder(run_id, Path(tmp), "images")
        try:  # a figure must never cost the run its metrics
            for name, rgbs in figures.items():
                tracker.log_image(run_id, rgbs["overlay"], key=image_key("overlay", name))
        except Exception as e:
            import logging

            logging.getLogger(__name__).warning("MLflow images of run %s not logged: %s: %s",
                                                run_id, type(e).__name__, e)
    metrics = {**metrics, "time_log_s": time.perf_counter() - t0}
    tracker.log(run_id, metrics=metrics, tags={"opsef.status": "complete"})
    tracker.finish(run_id, "FINISHED")


#: which process ran a trial (host:pid), stored with it
WORKER = f"{socket.gethostname()}:{os.getpid()}"


def _give_back(trial: optuna.Trial) -> None:
    """Mark a trial started after the budget was spent; queue again the grid point it took, if any."""
    trial.set_user_attr(A.OVER_BUDGET, True)
    storage = trial.study._storage
    fixed = storage.get_trial_system_attrs(trial._trial_id).get("fixed_params")
    if fixed:
        trial.study.enqueue_trial(fixed, user_attrs={A.REQUEUED_FROM: trial.number}, skip_if_exists=False)


def _labels(pipeline: Pipeline) -> dict[str, str]:
    from opsef_opt.preprocess import step_label

    return {"pipeline": pipeline.label, "model": pipeline.model.label, "preprocess": pipeline.preprocess_label,
            "setting": step_label(pipeline.model.label, pipeline.model_params)}


def run_trial(trial: optuna.Trial, ctx: TrialContext) -> float:
    """Optuna objective: evaluate one sampled pipeline; its recording is handed to the recorder."""
    started = time.perf_counter()
    if ctx.budget is not None and over_budget(trial, ctx.budget):
        _give_back(trial)
        ctx.last = {"number": trial.number, "over_budget": True}
        raise TrialFailed("the budget was filled by other workers meanwhile")
    trial.set_user_attr(A.WORKER, WORKER)
    pipeline = suggest_pipeline(trial, ctx.space)
    run_id = ctx.tracker.start_trial(
        ctx.parent_run_id, trial.number, ctx.study_name, pipeline.flat,
        tags={"pipeline": pipeline.label},
    )
    trial.set_user_attr(A.MLFLOW_RUN_ID, run_id)
    ctx.last = {"number": trial.number, "pipeline": pipeline.label}
    done: list[int] = []

    def report(step: int, value: float) -> None:
        trial.report(value, step)
        done.append(step)
        if trial.should_prune():
            raise optuna.TrialPruned(f"pruned after {step + 1} image(s): {value:.4f}")

    try:
        value, metrics, outputs = evaluate(ctx, pipeline, report=report)
        ctx.store.save(trial.number, {o.name: o.labels for o in outputs}, {o.name: o.metrics for o in outputs})
    except optuna.TrialPruned as e:
        trial.set_user_attr(A.SUMMARY, _labels(pipeline))
        ctx.last["pruned"] = str(e)
        ctx.tracker.log(run_id, metrics={"pruned_after_images": len(done)},
                        tags={"opsef.status": "pruned", "opsef.pruned": str(e)})
        ctx.tracker.finish(run_id, "FINISHED")
        raise
    except KeyboardInterrupt:
        trial.set_user_attr(A.INTERRUPTED, True)
        ctx.tracker.finish(run_id, "KILLED", tags={"opsef.status": "interrupted"})
        raise
    except Exception as e:  # any failure of this pipeline: record it, let the study go on
        reason = f"{type(e).__name__}: {e}"
        trial.set_user_attr(A.ERROR, reason)
        trial.set_user_attr(A.SUMMARY, _labels(pipeline))
        ctx.last["error"] = reason
        ctx.tracker.finish(run_id, "FAILED", tags={"opsef.status": "failed", "opsef.error": reason})
        raise TrialFailed(reason) from e
    metrics["time_trial_s"] = time.perf_counter() - started
    if trial.user_attrs.get(A.SOURCE_SCORE) is not None:  # a pipeline handed over from an earlier stage
        metrics["score.source"] = trial.user_attrs[A.SOURCE_SCORE]
    # one storage write for everything the leaderboard shows
    trial.set_user_attr(A.SUMMARY, {**_labels(pipeline), **{
        k: metrics[k] for k in ("n_objects_mean", "time_preprocess_s", "time_segment_s", "time_trial_s",
                                "segment_reused")}, **{k: v for k, v in metrics.items() if k.startswith("gt.")}})
    ctx.recorder.submit(f"trial {trial.number}", record_trial, ctx.tracker, run_id,
                        outputs if ctx.log_artifacts else [], metrics)
    ctx.last["value"] = value
    return value
