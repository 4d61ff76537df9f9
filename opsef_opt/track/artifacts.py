"""Files a user keeps for each segmented image: overlay PNG, label TIFF and PNG, region table.

Pure functions (array in, array/table out) plus thin writers, so the apply
mode and notebooks produce exactly what the study logged. The region table is
the apply mode's (:func:`opsef_opt.post.props.region_properties`), so a
trial's ``regions.csv`` and an apply run's have the same columns and values. Outlines, their
halo and the ground-truth colours are described in :mod:`opsef_opt.figures.overlay`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import tifffile
from PIL import Image as PILImage

from opsef_opt.figures.overlay import (
    FN_RGB, FP_RGB, OUTLINE_RGB, TP_RGB, UNJUDGED_RGB, display_scale, label_rgb, legend_strip, outline_rgb,
    truth_overlay,
)
from opsef_opt.io.naming import safe_name

__all__ = ["overlay_rgb", "write_image_artifacts", "image_key", "OUTLINE_RGB", "gt_overlay_rgb"]


def overlay_rgb(image: np.ndarray, labels: np.ndarray, color: tuple[int, int, int] = OUTLINE_RGB,
                scale: int = 1) -> np.ndarray:
    """8-bit RGB image with object outlines in ``color`` on a dark halo (``scale`` times enlarged).

    ``image`` is (Y, X) or (Y, X, 3), stretched to 8 bits between its 0.5th
    and 99.8th percentiles; the outline is the objects' inner boundary, the
    halo the pixels next to it.
    """
    return outline_rgb(image, labels, color, scale=scale)


def gt_overlay_rgb(image: np.ndarray, labels: np.ndarray, truth: np.ndarray, sparse: bool = False,
                   scale: int = 1, legend: bool = True) -> np.ndarray:
    """Overlay with true positives, false positives and misses coloured (matched at IoU 0.5).

    With ``legend``, a strip under the image names the colours and counts.
    """
    rgb, match = truth_overlay(image, labels, truth, scale=scale, sparse=sparse)
    if not legend:
        return rgb
    c = match.counts
    entries = [(f"true positive {c['tp']}", TP_RGB), (f"false positive {c['fp']}", FP_RGB),
               (f"missed {c['fn']}", FN_RGB)]
    if match.unjudged:
        entries.append((f"not labelled {len(match.unjudged)}", UNJUDGED_RGB))
    entries.append(("(IoU >= 0.5)", (30, 30, 30)))
    return np.concatenate([rgb, legend_strip(rgb.shape[1], entries)], axis=0)


def _plane(shown: np.ndarray, labels: np.ndarray, truth: np.ndarray | None):
    """2D views of a 3D result (its middle z plane) for the PNGs; 2D results as they are."""
    if labels.ndim != 3:
        return shown, labels, truth
    z = labels.shape[0] // 2
    shown = shown[z] if shown.shape[:3] == labels.shape else np.asarray(shown).max(axis=0)
    return shown, labels[z], None if truth is None or truth.shape != labels.shape else truth[z]


def image_key(kind: str, name: str) -> str:
    """MLflow image key of one image's figure, e.g. ``overlay/dsb2018_256``: the image's :func:`safe_name`,
    as its artifact folder (characters MLflow allows)."""
    return f"{kind}/{safe_name(name)}"


def write_image_artifacts(folder: Path, labels: np.ndarray, shown: np.ndarray, table: pd.DataFrame,
                          truth: np.ndarray | None = None, sparse: bool = False) -> dict[str, np.ndarray]:
    """Write ``overlay.png``, ``labels.tif`` (int32, zlib, lossless), ``labels.png`` and ``regions.csv``.

    ``overlay.png`` is enlarged up to 4 times (nearest 768 px) so outlines
    show in a browser; with ``truth`` it colours true positives, false
    positives and misses, with a legend strip. ``labels.png`` colours each
    object. Returns the two RGB images by kind (``overlay``, ``labels``) for
    logging as MLflow images.
    """
    folder.mkdir(parents=True, exist_ok=True)
    labels = np.asarray(labels)
    shown2, labels2, truth2 = _plane(np.asarray(shown), labels, None if truth is None else np.asarray(truth))
    scale = display_scale(labels2.shape)
    if truth2 is not None and truth2.shape == labels2.shape:
        overlay = gt_overlay_rgb(shown2, labels2, truth2, sparse=sparse, scale=scale)
    else:
        overlay = overlay_rgb(shown2, labels2, scale=scale)
    colored = label_rgb(labels2)
    PILImage.fromarray(overlay).save(folder / "overlay.png", compress_level=1)
    PILImage.fromarray(colored).save(folder / "labels.png", compress_level=1)
    tifffile.imwrite(folder / "labels.tif", labels.astype(np.int32), compression="zlib")
    table.to_csv(folder / "regions.csv", index=False)
    return {"overlay": overlay, "labels": colored}
