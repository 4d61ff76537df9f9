"""What one worker does for one tile: read it, run the pipeline, keep the objects it owns, measure them.

Runs in-process (one worker) or in Dask worker processes; each process loads
each model once (``load_segmenter`` caches them) and reads lazily-readable
images window by window.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pandas as pd

from opsef_opt.batch.source import Source
from opsef_opt.batch.tiles import TileBox, keep_core
from opsef_opt.pipeline import Pipeline
from opsef_opt.post.props import raw_intensity, region_properties

__all__ = ["TileResult", "ImageStats", "WindowStats", "segment_window", "segment_labels", "window_stats", "warm_up",
           "merge_stats", "raw_intensity"]


@dataclass
class TileResult:
    """The objects a tile owns (tile-local ids 1..k in ``kept``) and their measurements."""

    image: str
    box: TileBox
    kept: np.ndarray
    table: pd.DataFrame
    seconds: float


@dataclass
class ImageStats:
    """What a tile must know about its whole image to be processed like it.

    ``ranges``: the value range of each normalisation of the preprocessing
    chain (input, then after each step) over the whole image; ``model``: the
    model's image-wide statistics (e.g. the U-Net's mean/std, a threshold).
    """

    ranges: list[tuple[float, float]]
    model: dict[str, float]


@dataclass
class WindowStats:
    """One tile's contribution to its image's :class:`ImageStats`."""

    image: str
    ranges: list[tuple[float, float]]
    sample: np.ndarray  # stats-input pixels of the core, on the scale of the whole image's last range


def _model_and_params(pipeline: Pipeline):
    model = pipeline.segmenter()
    return model, model.full_params(pipeline.model_params)


def warm_up(pipeline: Pipeline, source: Source | None = None) -> str:
    """Load the pipeline's model in this process and pay every first-call cost once (once per worker).

    With ``source``, a small corner of it is read and segmented, so the
    reader (tifffile's Zarr view), the steps' lazily imported modules and the
    model's first run are ready before the first tile; throughput is then
    what a long run sustains, and the start-up is reported on its own.
    """
    model, _ = _model_and_params(pipeline)
    if source is not None:
        h, w = source.shape_yx
        segment_window(source, pipeline, TileBox(0, (0, min(h, 128), 0, min(w, 128)),
                                                 (0, min(h, 128), 0, min(w, 128))))
    return type(model).__name__


def segment_labels(pipeline: Pipeline, data: np.ndarray, axes: str, stats: ImageStats | None = None) -> np.ndarray:
    """Preprocess ``data`` and segment it with the pipeline's model: 2D int32 labels.

    ``data`` is a window of a :class:`Source`, which is read already binned and
    scaled (the pipeline's reshape), so only :meth:`Pipeline.preprocess` and
    :meth:`Pipeline.segment` run here. With ``stats`` (a tile of a larger image)
    the chain and the model use the whole image's ranges and statistics
    instead of the tile's own.
    """
    image, out_axes = pipeline.preprocess(data, axes, ranges=stats.ranges if stats else None)
    labels = np.asarray(pipeline.segment(image, out_axes, stats=stats.model if stats else None).labels)
    if labels.ndim != 2:
        raise ValueError(f"the pipeline gives {labels.ndim}D labels; the apply mode tiles and stitches 2D label "
                         f"images (add a projection step for stacks)")
    return labels.astype(np.int32, copy=False)


def window_stats(source: Source, pipeline: Pipeline, box: TileBox, raw_range: tuple[float, float],
                 n_sample: int) -> WindowStats:
    """Preprocess one tile with the image's input range; record its ranges and a pixel sample."""
    data = source.read_window(box.window)
    record: list[tuple[float, float]] = []
    image, axes = pipeline.preprocess(data, source.axes, ranges=[raw_range], record=record)
    model, params = _model_and_params(pipeline)
    values = np.asarray(model.stats_input(image, **params), np.float32)
    y0, y1, x0, x1 = box.core
    wy, wx = box.window[0], box.window[2]
    core = values[..., y0 - wy: y1 - wy, x0 - wx: x1 - wx].ravel()
    step = max(1, core.size // max(1, n_sample))
    sample = core[::step].astype(np.float32)
    # back to unscaled values: this tile's own last scaling (affine, so it commutes with stats_input)
    lo, hi = record[-1] if pipeline.steps else raw_range
    sample = sample * (hi - lo) + lo
    return WindowStats(source.name, record, sample)


def merge_stats(pipeline: Pipeline, parts: list[WindowStats], raw_range: tuple[float, float]) -> ImageStats:
    """The whole image's :class:`ImageStats` from its tiles' contributions."""
    n = len(pipeline.steps)
    ranges = [raw_range] + [(min(p.ranges[i][0] for p in parts), max(p.ranges[i][1] for p in parts))
                            for i in range(1, n + 1)]
    lo, hi = ranges[-1]
    sample = np.concatenate([p.sample for p in parts])
    sample = np.clip((sample - lo) / (hi - lo), 0, 1) if hi > lo else np.zeros_like(sample)
    model, params = _model_and_params(pipeline)
    return ImageStats(ranges, model.image_stats(sample.astype(np.float32), **params))


def segment_window(source: Source, pipeline: Pipeline, box: TileBox, quantify: tuple[int, ...] = (),
                   stats: ImageStats | None = None) -> TileResult:
    """Segment ``box.window`` of ``source``; keep and measure the objects whose centroid is in ``box.core``."""
    t0 = time.perf_counter()
    data = source.read_window(box.window)
    labels = segment_labels(pipeline, data, source.axes, stats)
    h, w = box.window[1] - box.window[0], box.window[3] - box.window[2]
    if labels.shape != (h, w):
        raise ValueError(f"the pipeline changed the image size ({(h, w)} -> {labels.shape}); "
                         f"the apply mode needs labels on the input grid")
    kept = keep_core(labels, box)
    channels = {f"ch{c}": raw_intensity(source.with_channel(c).read_window(box.window),
                                        source.with_channel(c).axes) for c in quantify}
    table = region_properties(kept, raw=raw_intensity(data, source.axes), channels=channels or None,
                              offset=(box.window[0], box.window[2]), pixel_size=source.pixel_size_um)
    return TileResult(source.name, box, kept, table, time.perf_counter() - t0)
