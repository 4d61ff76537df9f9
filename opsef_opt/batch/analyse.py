"""From one image's label image and object table to the files a biologist uses.

Shared by the apply mode (labels from the pipeline) and the re-import of
edited labels, so both give the same outputs: filtering (kept and removed
objects both reported), classification by a mask, overlays, the OME-TIFF
label image, and the ImageJ / AnnotatorJ / QuPath exports.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from opsef_opt.batch.config import ApplySpec, MaskSpec
from opsef_opt.batch.naming import safe_name
from opsef_opt.batch.outputs import preview_step, write_labels, write_overlay, write_table
from opsef_opt.batch.source import Source

__all__ = ["DONE", "analyse_image", "image_dir", "is_done", "object_mask"]

#: written last in an image's folder: its outputs are complete (a re-run skips the image)
DONE = "done.json"


def image_dir(run_dir: Path, name: str) -> Path:
    return run_dir / "images" / safe_name(name)


def is_done(run_dir: Path, name: str) -> bool:
    return (image_dir(run_dir, name) / DONE).is_file()


def object_mask(source: Source, spec: MaskSpec) -> np.ndarray:
    """The classification mask of one image: the user's mask file, or one made from another channel."""
    from opsef_opt.batch.worker import raw_intensity
    from opsef_opt.post.classify import mask_from_channel

    if spec.folder is not None:
        from opsef_opt.io import read_image

        path = spec.folder / spec.pattern.format(stem=Path(source.path).stem)
        if not path.is_file():
            raise FileNotFoundError(f"mask {path} not found (study.apply.classify.mask.folder/pattern)")
        (img,) = read_image(path)
        mask = img.data
        if mask.ndim != 2 or mask.shape != source.shape_yx:
            raise ValueError(f"mask {path}: shape {mask.shape} does not match the image's {source.shape_yx}")
        return mask != 0
    other = source.with_channel(spec.channel)
    return mask_from_channel(raw_intensity(other.read(), other.axes), sigma=spec.sigma,
                             otsu_factor=spec.otsu_factor, opening=spec.opening, closing=spec.closing,
                             fill_holes=spec.fill_holes, min_size=spec.min_size)


def _kept_labels(labels: np.ndarray, keep: np.ndarray) -> np.ndarray:
    lut = np.zeros(int(labels.max()) + 1 if labels.size else 1, np.int32)
    lut[keep] = keep
    return lut[labels]


def analyse_image(source: Source, labels: np.ndarray, table: pd.DataFrame, spec: ApplySpec, out: Path,
                  provenance: Mapping[str, Any]) -> dict[str, Any]:
    """Filter, classify, write and export one image's objects under ``out``; return its summary.

    ``table`` has one row per object of ``labels`` (from
    :func:`opsef_opt.post.props.region_properties`). Written: ``labels.ome.tif``
    (every object), ``labels_kept.ome.tif`` (when a filter removed some),
    ``regions.csv`` (kept), ``removed.csv``, ``overlay.png`` and the exports.
    """
    from opsef_opt.batch.worker import raw_intensity
    from opsef_opt.post.filter import filter_objects

    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    table = table.sort_values("label").reset_index(drop=True)
    table.insert(0, "image", source.name)
    if spec.filter:
        missing = [p for p in spec.filter if p not in table.columns]
        if missing:
            raise ValueError(f"study.apply.filter: the object table has no column {missing} "
                             f"(quantified channels are named ch<N>.<property>)")
        kept, removed = filter_objects(table, spec.filter)
    else:
        kept, removed = table, table.iloc[0:0].assign(removed_by=pd.Series(dtype=str))
    kept_labels = labels if len(removed) == 0 else _kept_labels(np.asarray(labels), kept["label"].to_numpy())
    classes: dict[int, str] = {}
    if spec.classify is not None:
        from opsef_opt.post.classify import classify_objects

        mask = object_mask(source, spec.classify.mask)
        found = classify_objects(np.asarray(kept_labels), mask, rule=spec.classify.rule,
                                 min_overlap=spec.classify.min_overlap, names=spec.classify.names)
        kept = kept.merge(found, on="label", how="left")
        classes = dict(zip(kept["label"].astype(int), kept["class"].astype(str)))
        for name, part in kept.groupby("class"):
            write_table(out / f"regions_{safe_name(str(name))}.csv", part)
    write_table(out / "regions.csv", kept)
    write_table(out / "removed.csv", removed)

    pixel = source.pixel_size_um
    write_labels(out / "labels.ome.tif", labels, pixel, provenance)
    if len(removed):
        write_labels(out / "labels_kept.ome.tif", kept_labels, pixel, {**provenance, "filter": spec.filter})
    step = preview_step(source.shape_yx)
    h, w = source.shape_yx
    preview = raw_intensity(source.read_window((0, h, 0, w)), source.axes)[::step, ::step]
    write_overlay(out / "overlay.png", preview, np.asarray(kept_labels[::step, ::step]), classes or None)

    exports = spec.export
    if exports.imagej or exports.qupath or exports.annotatorj:
        kept_arr = np.asarray(kept_labels)
        if exports.imagej:
            from opsef_opt.export.imagej import write_roi_zip

            write_roi_zip(kept_arr, out / "rois.zip")
        if exports.qupath:
            from opsef_opt.export.qupath import write_geojson

            write_geojson(out / "objects.geojson", kept_arr, table=kept, classes=classes or None)
        if exports.annotatorj:
            from opsef_opt.export.imagej import write_annotatorj

            image = source.read()
            # AnnotatorJ opens one folder as one ImageJ stack: one folder per image size and type
            group = "x".join(map(str, image.shape)) + f"_{image.dtype}"
            write_annotatorj(out.parent.parent / "annotatorj" / group, source.name, image, kept_arr)
    summary = {"image": source.name, "source": source.path, "shape": list(source.shape_yx),
               "n_objects": int(len(table)), "n_kept": int(len(kept)), "n_removed": int(len(removed)),
               "classes": {str(k): int(v) for k, v in pd.Series(list(classes.values())).value_counts().items()},
               "seconds_outputs": round(time.perf_counter() - t0, 3), **{k: v for k, v in provenance.items()
                                                                         if k in ("tiles", "conflict_px", "truncated",
                                                                                  "seconds_segment")}}
    return summary


def mark_done(out: Path, summary: Mapping[str, Any]) -> None:
    (out / DONE).write_text(json.dumps(dict(summary), indent=1, default=str))
