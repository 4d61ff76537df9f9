"""The apply mode: the chosen pipeline over a whole dataset, tile by tile, resumable.

``python -m opsef_opt study=NAME mode=apply`` reads ``studies/NAME/best.yaml``
(or ``pipeline=FILE``), segments every image of the study (or of
``input=FOLDER``) in overlapping tiles, stitches each image into one label
image and writes the per-image outputs, a combined object table, analysis
plots and an MLflow run under ``studies/NAME/apply/<run>/``.

Tiles run in this process (``n_workers=1``), on a local Dask cluster of
``n_workers`` processes, or on an existing Dask cluster
(``dask_scheduler=tcp://host:port``, e.g. started with dask-jobqueue on
SLURM). The driver stitches each image as its tiles arrive, in tile order, so
the result does not depend on which worker finished first. An image whose
folder holds ``done.json`` is skipped on a re-run; one that fails is
reported and the others finish.
"""
from __future__ import annotations

import hashlib
import logging
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pandas as pd

from opsef_opt.batch.analyse import analyse_image, image_dir, is_done, mark_done
from opsef_opt.batch.source import Source, list_sources
from opsef_opt.batch.tiles import Stitcher, TileBox, plan_tiles
from opsef_opt.config import ReshapeSpec, Settings
from opsef_opt.search.space import Pipeline

__all__ = ["ApplyError", "ApplyReport", "run_apply", "resolve_pipeline", "input_files", "finish_dataset"]

log = logging.getLogger("opsef_opt")

#: exit code when some images failed (the others were written)
EXIT_SOME_FAILED = 4


class ApplyError(Exception):
    """The apply mode cannot start (no pipeline, no images); the message says what to do."""


@dataclass
class ApplyReport:
    run_dir: Path
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    megapixels: float = 0.0
    seconds: float = 0.0
    n_tiles: int = 0
    mlflow_run_id: str = ""
    startup_seconds: float = 0.0
    #: where the loop's time went: statistics pass, tiles (segmentation), outputs written by the driver
    phases: dict[str, float] = field(default_factory=dict)


def resolve_pipeline(settings: Settings) -> tuple[Pipeline, ReshapeSpec, Path, str]:
    """The pipeline to apply: ``pipeline=FILE`` or the study's ``best.yaml``."""
    from opsef_opt.search.best import load_pipeline

    path = settings.pipeline or settings.study_dir / "best.yaml"
    if not path.is_file():
        raise ApplyError(f"{path} not found: run the search first (python -m opsef_opt study={settings.study.name}) "
                         f"or give a pipeline file with pipeline=path/to/best.yaml")
    pipeline, reshape = load_pipeline(path)
    return pipeline, reshape, path, path.read_text()


def input_files(settings: Settings) -> list[Path]:
    """``input=`` (a folder, read with the study's pattern, or one file), else the study's images."""
    from opsef_opt.io.dataset import list_files

    if settings.input is None:
        files = list_files(settings.study.images)
        where = settings.study.images.folder or "study.images.files"
    elif settings.input.is_dir():
        files = sorted(p for p in settings.input.glob(settings.study.images.pattern) if p.is_file())
        where = settings.input / settings.study.images.pattern
    else:
        files, where = [settings.input], settings.input
    if not files:
        raise ApplyError(f"no image found in {where}; check the folder and study.images.pattern")
    return files


def _run_name(settings: Settings, pipeline_text: str, files: list[Path]) -> str:
    if settings.apply_run:
        return settings.apply_run
    key = hashlib.sha1((pipeline_text + "\n".join(str(f.resolve()) for f in files)).encode()).hexdigest()[:8]
    stem = settings.pipeline.stem if settings.pipeline else "best"
    return f"{stem}-{key}"


# ---------------------------------------------------------------- execution


def worker_environ(threads: int) -> dict[str, Any]:
    """Environment of local Dask workers: Dask's own, less ``MALLOC_TRIM_THRESHOLD_``, with ``threads`` each.

    Dask sets that variable so idle workers hand memory back, but any
    ``MALLOC_*`` variable also turns off glibc's adaptive mmap threshold:
    every large numpy temporary is then mapped and page-faulted afresh.
    Measured on 56 tiles of 512 px (classical pipeline, 2 workers on 2
    cores): 22.7 s with it, 17.5 s without; one process slows by 15 % with it.
    Dask also caps every worker at one OpenMP/BLAS thread; each worker gets
    its share of the cores instead (:func:`~opsef_opt.segment.device.share_cpus`).
    """
    import dask

    from opsef_opt.segment.device import THREAD_VARS

    env = dict(dask.config.get("distributed.nanny.pre-spawn-environ", default={}) or {})
    env.pop("MALLOC_TRIM_THRESHOLD_", None)
    env.update({var: threads for var in THREAD_VARS})
    return env


class _Executor:
    """Runs calls in this process (one worker) or on a Dask cluster; yields (key, result or exception)."""

    def __init__(self, settings: Settings) -> None:
        self.client = self.cluster = None
        if settings.dask_scheduler:
            from distributed import Client

            self.client = Client(settings.dask_scheduler, timeout=30)
        elif settings.n_workers > 1:
            import dask
            from distributed import Client, LocalCluster

            from opsef_opt.segment.device import share_cpus

            threads = share_cpus(settings.n_workers)  # each worker gets its share of the cores
            with dask.config.set({"distributed.nanny.pre-spawn-environ": worker_environ(threads)}):
                self.cluster = LocalCluster(n_workers=settings.n_workers, threads_per_worker=1, processes=True,
                                            dashboard_address=None, silence_logs=logging.ERROR)
            self.client = Client(self.cluster)

    def warm_up(self, pipeline: Pipeline, source: Source | None = None) -> None:
        """Load the model in every worker before timing starts (a failure surfaces with the first tile)."""
        from opsef_opt.batch.worker import warm_up

        try:
            if self.client is None:
                warm_up(pipeline, source)
            else:
                self.client.run(warm_up, pipeline, source)
        except Exception as e:  # the tiles report it per image
            log.debug("warm-up failed: %s", e)

    def run(self, calls: list[tuple[Any, Callable, tuple]]) -> Iterator[tuple[Any, Any]]:
        if self.client is None:
            for key, fn, args in calls:
                try:
                    yield key, fn(*args)
                except Exception as e:  # reported per image; the others go on
                    yield key, e
            return
        from distributed import as_completed

        futures = {self.client.submit(fn, *args, pure=False, priority=-i): key
                   for i, (key, fn, args) in enumerate(calls)}
        for f in as_completed(futures):
            key = futures.pop(f)
            try:
                yield key, f.result()
            except Exception as e:
                yield key, e
            f.release()

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
        if self.cluster is not None:
            self.cluster.close()


def _raw_range(source: Source, boxes: list[TileBox]) -> tuple[float, float]:
    """The input's value range over the whole image, read tile core by tile core."""
    from opsef_opt.preprocess.normalize import value_range

    lo, hi = np.inf, -np.inf
    for b in boxes:
        y0, y1, x0, x1 = b.core
        a, c = value_range(source.read_window((y0, y1, x0, x1)))
        lo, hi = min(lo, a), max(hi, c)
    return float(lo), float(hi)


#: pixels sampled per image for image-wide statistics (thresholds, normalisation)
STATS_SAMPLE = 2_000_000


def _image_stats(executor: _Executor, pipeline: Pipeline, images: dict[str, "_Image"],
                 failed: dict[str, str]) -> dict[str, Any]:
    """Image-wide ranges and model statistics of every tiled image, so its tiles match the whole."""
    from opsef_opt.batch.worker import merge_stats, window_stats

    tiled = {name: img for name, img in images.items() if len(img.boxes) > 1}
    ranges, calls = {}, []
    for name, img in tiled.items():
        try:
            ranges[name] = _raw_range(img.source, img.boxes)
        except Exception as e:
            failed[name] = f"{name}: reading: {type(e).__name__}: {e}"
            continue
        n = max(1000, STATS_SAMPLE // len(img.boxes))
        calls += [(name, window_stats, (img.source, pipeline, b, ranges[name], n)) for b in img.boxes]
    parts: dict[str, list] = {}
    stats: dict[str, Any] = {}
    for name, result in executor.run(calls):
        if name in failed:
            continue
        if isinstance(result, Exception):
            failed[name] = f"{name}: image statistics: {type(result).__name__}: {result}"
            parts.pop(name, None)
            continue
        got = parts.setdefault(name, [])
        got.append(result)
        if len(got) == len(tiled[name].boxes):  # merged as soon as complete, so samples do not pile up
            del parts[name]
            ((_, merged),) = executor.run([(name, merge_stats, (pipeline, got, ranges[name]))])
            if isinstance(merged, Exception):
                failed[name] = f"{name}: image statistics: {type(merged).__name__}: {merged}"
            else:
                stats[name] = merged
    return stats


@dataclass
class _Image:
    """An image being stitched: tiles arrive in any order and are pasted in tile order.

    The label buffer is allocated when the first tile arrives, so a dataset of
    thousands of images holds only those in progress.
    """

    source: Source
    boxes: list[TileBox]
    folder: Path
    out: np.ndarray | None = None
    stitcher: Stitcher | None = None
    raw_path: Path | None = None
    pending: dict[int, Any] = field(default_factory=dict)
    tables: list[pd.DataFrame] = field(default_factory=list)
    next: int = 0
    conflicts: int = 0
    truncated: int = 0
    seconds: float = 0.0

    def allocate(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        if len(self.boxes) > 1:  # whole-slide images: the stitched labels live on disk, not in memory
            self.raw_path = self.folder / ".labels.int32"
            self.out = np.memmap(self.raw_path, dtype=np.int32, mode="w+", shape=self.source.shape_yx)
        else:
            self.out = np.zeros(self.source.shape_yx, np.int32)
        self.stitcher = Stitcher(self.out)


def _paste(img: _Image, result) -> None:
    if img.out is None:
        img.allocate()
    img.pending[result.box.index] = result
    while img.next in img.pending:
        r = img.pending.pop(img.next)
        report = img.stitcher.add(r.box, r.kept)
        img.conflicts += report.conflict_px
        img.truncated += getattr(report, "truncated", 0)
        table = r.table[r.table["label"].isin(report.id_map.keys())].copy()
        table["label"] = table["label"].map(report.id_map).astype(int)
        img.tables.append(table)
        img.seconds += r.seconds
        img.next += 1


def run_apply(settings: Settings) -> ApplyReport:
    """Segment every image not done yet, write its outputs, then the dataset's table, plots and MLflow run."""
    pipeline, reshape, path, text = resolve_pipeline(settings)
    files = input_files(settings)
    sources, problems = list_sources(settings.study.images, reshape, files)
    for p in problems:
        log.warning("%s", p)
    run_dir = settings.study_dir / "apply" / _run_name(settings, text, files)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "pipeline.yaml").write_text(text)
    report = ApplyReport(run_dir, failed={p.split(":")[0]: p for p in problems})
    spec = settings.study.apply
    todo = [s for s in sources if not is_done(run_dir, s.name)]
    report.skipped = [s.name for s in sources if is_done(run_dir, s.name)]
    if report.skipped:
        log.info("%d image(s) already done in %s are skipped", len(report.skipped), run_dir)
    tasks, images = [], {}
    for s in todo:
        boxes = plan_tiles(s.shape_yx, spec.tile.size, spec.tile.overlap)
        images[s.name] = _Image(s, boxes, image_dir(run_dir, s.name))
        tasks += [(s, b) for b in boxes]
    report.n_tiles = len(tasks)
    log.info("apply %s (%s) to %d image(s), %d tile(s), %d worker(s) -> %s", path, pipeline.label, len(todo),
             len(tasks), settings.n_workers, run_dir)
    from opsef_opt.batch.worker import segment_window
    from opsef_opt.progress import Progress

    t_start = time.perf_counter()
    # nothing left to do (a finished run re-run): no cluster to start
    executor = _Executor(settings if todo else replace(settings, n_workers=1, dask_scheduler=None))
    if todo:
        executor.warm_up(pipeline, todo[0])
    report.startup_seconds = time.perf_counter() - t_start
    t0 = time.perf_counter()  # throughput excludes starting the cluster (reported on its own)
    try:
        stats = _image_stats(executor, pipeline, images, report.failed)
        report.phases["statistics"] = time.perf_counter() - t0
        for name in [n for n in images if n in report.failed]:
            log.error("image %s failed: %s", name, report.failed[name])
            _drop(images.pop(name))
        calls = [(s.name, segment_window, (s, pipeline, b, spec.quantify, stats.get(s.name)))
                 for s, b in tasks if s.name in images]
        # a bar with the time left on a terminal (also for one image of one tile), plain lines otherwise
        bar = Progress(len(calls), "apply", "tile", stream=sys.stderr)
        with bar:
            for name, result in executor.run(calls):
                bar.update(1)
                img = images.get(name)
                if img is None:  # already failed
                    continue
                source = img.source
                if isinstance(result, Exception):
                    report.failed[name] = f"{name}: {type(result).__name__}: {result}"
                    log.error("image %s failed: %s", name, report.failed[name])
                    _drop(images.pop(name))
                    continue
                _paste(img, result)
                if img.next == len(img.boxes):
                    del images[name]
                    try:
                        t_out = time.perf_counter()
                        _finish(img, pipeline, path, settings, run_dir, stats.get(name))
                        report.phases["outputs"] = report.phases.get("outputs", 0.0) + time.perf_counter() - t_out
                        report.done.append(name)
                        report.megapixels += source.shape_yx[0] * source.shape_yx[1] / 1e6
                    except Exception as e:
                        report.failed[name] = f"{name}: writing outputs: {type(e).__name__}: {e}"
                        log.error("image %s failed: %s", name, report.failed[name])
                    finally:
                        _drop(img)
                bar.set_postfix(images=f"{len(report.done)}/{len(todo)}", failed=len(report.failed))
    finally:
        executor.close()
    report.seconds = time.perf_counter() - t0
    report.phases["tiles"] = report.seconds - sum(report.phases.values())
    finish_dataset(settings, run_dir, report, {"pipeline": pipeline.label, "pipeline_file": str(path),
                                               "mode": "apply"})
    return report


def _drop(img: _Image) -> None:
    img.stitcher = img.out = None
    img.pending.clear()
    if img.raw_path is not None:
        img.raw_path.unlink(missing_ok=True)


def _finish(img: _Image, pipeline: Pipeline, path: Path, settings: Settings, run_dir: Path, stats) -> None:
    from opsef_opt.post.props import region_properties

    source = img.source
    if isinstance(img.out, np.memmap):
        img.out.flush()
    tables = [t for t in img.tables if len(t)]
    table = pd.concat(tables, ignore_index=True) if tables else region_properties(np.zeros((1, 1), np.int32))
    provenance = {"image": source.name, "source": source.path, "pipeline": pipeline.label,
                  "pipeline_file": str(path), "study": settings.study.name, "tool": "opsef-opt",
                  "tiles": len(img.boxes), "tile": [settings.study.apply.tile.size, settings.study.apply.tile.overlap],
                  "conflict_px": img.conflicts, "truncated": img.truncated, "seconds_segment": round(img.seconds, 3),
                  "pixel_size_um": source.pixel_size_um,
                  "image_stats": {"ranges": stats.ranges, "model": stats.model} if stats else "per image"}
    if img.truncated:
        log.warning("%s: %d object(s) touched an inner tile border; raise study.apply.tile.overlap above the "
                    "largest object's diameter", source.name, img.truncated)
    out = image_dir(run_dir, source.name)
    summary = analyse_image(source, img.out, table, settings.study.apply, out, provenance)
    mark_done(out, summary)


def finish_dataset(settings: Settings, run_dir: Path, report: ApplyReport, tags: dict[str, str]) -> None:
    """The dataset's object table (CSV + Parquet), analysis plots and the MLflow run with everything."""
    import json

    summaries, kept, removed = [], [], []
    for done in sorted((run_dir / "images").glob("*/done.json")):
        summaries.append(json.loads(done.read_text()))
        kept.append(pd.read_csv(done.parent / "regions.csv"))
        if (done.parent / "removed.csv").stat().st_size > 1:
            removed.append(pd.read_csv(done.parent / "removed.csv"))
    frames = [f for f in kept if len(f)]
    objects = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    objects.to_csv(run_dir / "objects.csv", index=False)
    objects.to_parquet(run_dir / "objects.parquet", index=False)
    frames = [f for f in removed if len(f)]
    if frames:
        pd.concat(frames, ignore_index=True).to_csv(run_dir / "removed.csv", index=False)
    pd.DataFrame(summaries).to_csv(run_dir / "images.csv", index=False)
    analysis = settings.study.apply.analysis
    if analysis is not None and len(objects):
        from opsef_opt.post.analysis import analysis_plots

        color_by = "class" if "class" in objects.columns else ("cluster" if analysis.cluster else None)
        _, clustered = analysis_plots(objects, run_dir / "plots", scatter=analysis.scatter, color_by=color_by,
                                      features=analysis.features, pca=analysis.pca, tsne=analysis.tsne,
                                      cluster=dict(analysis.cluster) if analysis.cluster else None, seed=settings.seed)
        if "cluster" in clustered.columns:
            clustered.to_csv(run_dir / "objects.csv", index=False)
            clustered.to_parquet(run_dir / "objects.parquet", index=False)
    if report.failed:
        (run_dir / "failed.txt").write_text("\n".join(report.failed.values()) + "\n")
    report.mlflow_run_id = _log_mlflow(settings, run_dir, report, tags, len(objects))


def _log_mlflow(settings: Settings, run_dir: Path, report: ApplyReport, tags: dict[str, str], n_objects: int) -> str:
    from opsef_opt.track import Tracker

    tracker = Tracker(settings.tracking_uri, settings.studies_dir / "mlartifacts", settings.study.name,
                      settings.study.description)
    run = tracker.client.create_run(tracker.experiment_id, run_name=f"{tags.get('mode', 'apply')} {run_dir.name}",
                                    tags={"opsef.mode": tags.get("mode", "apply"), "opsef.apply_run": run_dir.name})
    run_id = run.info.run_id
    metrics = {"n_images": len(report.done) + len(report.skipped), "n_failed": len(report.failed),
               "n_objects": n_objects, "n_tiles": report.n_tiles, "megapixels": report.megapixels,
               "seconds": report.seconds, "startup_seconds": report.startup_seconds,
               **{f"seconds_{k}": v for k, v in report.phases.items()}}
    if report.seconds > 0 and report.megapixels:
        metrics["megapixels_per_s"] = report.megapixels / report.seconds
    tracker.log(run_id, metrics=metrics, params={"n_workers": settings.n_workers, **tags},
                tags={"failed": "\n".join(report.failed.values()) or "none"})
    staging = [p for p in run_dir.iterdir() if not p.name.startswith(".")]
    for p in staging:
        if p.is_dir():
            tracker.client.log_artifacts(run_id, str(p), p.name)
        else:
            tracker.client.log_artifact(run_id, str(p))
    tracker.finish(run_id, "FINISHED" if not report.failed else "FAILED")
    return run_id

