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

from opsef_opt.apply.source import Source
from opsef_opt.apply.tiles import TileBox, keep_core
from opsef_opt.search.space import Pipeline

__all__ = ["TileResult", "segment_window", "segment_labels"]


@dataclass
class TileResult:
    """The objects a tile owns (tile-local ids 1..k in ``kept``) and their measurements."""

    image: str
    box: TileBox
    kept: np.ndarray
    table: pd.DataFrame
    seconds: float


def segment_labels(pipeline: Pipeline, data: np.ndarray, axes: str) -> np.ndarray:
    """Preprocess ``data`` and segment it with the pipeline's model: 2D int32 labels."""
    from opsef_opt.preprocess import run_chain
    from opsef_opt.segment import load_segmenter

    image, out_axes = run_chain(data, axes, pipeline.steps)
    model = load_segmenter(pipeline.model.family, **pipeline.model.init)
    labels = np.asarray(model(image, out_axes, **pipeline.model_params).labels)
    if labels.ndim != 2:
        raise ValueError(f"the pipeline gives {labels.ndim}D labels; the apply mode tiles and stitches 2D label "
                         f"images (add a projection step for stacks)")
    return labels.astype(np.int32, copy=False)


def raw_intensity(data: np.ndarray, axes: str) -> np.ndarray:
    """The raw pixels objects are measured on: colours averaged, Z planes averaged (2D, float32)."""
    data = np.asarray(data, np.float32)
    if "C" in axes:
        data = data.mean(axis=axes.index("C"))
        axes = axes.replace("C", "")
    if "Z" in axes:
        data = data.mean(axis=axes.index("Z"))
    return data


def segment_window(source: Source, pipeline: Pipeline, box: TileBox, quantify: tuple[int, ...] = ()) -> TileResult:
    """Segment ``box.window`` of ``source``; keep and measure the objects whose centroid is in ``box.core``."""
    from opsef_opt.post.props import region_properties

    t0 = time.perf_counter()
    data = source.read_window(box.window)
    labels = segment_labels(pipeline, data, source.axes)
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
