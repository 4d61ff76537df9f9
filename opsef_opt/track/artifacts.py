"""Files a user keeps for each segmented image: overlay PNG, label TIFF, region table.

Pure functions (array in, array/table out) plus thin writers, so the apply
mode and notebooks produce exactly what the study logged.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import tifffile
from PIL import Image as PILImage
from skimage.measure import regionprops_table
from skimage.segmentation import find_boundaries

from opsef_opt.measure import eccentricity

__all__ = ["overlay_rgb", "region_table", "eccentricity", "write_image_artifacts", "OUTLINE_RGB"]

#: outline colour: saturated yellow, visible on grey, fluorescence and H&E backgrounds
OUTLINE_RGB = (255, 255, 0)

_PROPS = ("label", "area", "centroid", "perimeter", "solidity",
          "intensity_mean", "intensity_min", "intensity_max")
_RENAME = {"centroid-0": "centroid_y", "centroid-1": "centroid_x"}


def _to_uint8(image: np.ndarray) -> np.ndarray:
    img = np.asarray(image, dtype=np.float32)
    lo, hi = float(np.nanmin(img)), float(np.nanmax(img))
    if hi <= lo:
        return np.zeros(img.shape, np.uint8)
    return np.round((img - lo) / (hi - lo) * 255).astype(np.uint8)


def overlay_rgb(image: np.ndarray, labels: np.ndarray, color: tuple[int, int, int] = OUTLINE_RGB) -> np.ndarray:
    """8-bit RGB image (full resolution) with object outlines drawn in ``color``.

    ``image`` is (Y, X) or (Y, X, 3); it is rescaled to the full 8-bit range
    (min-max), never clipped by a cast.
    """
    rgb = _to_uint8(image)
    if rgb.ndim == 2:
        rgb = np.stack([rgb] * 3, axis=-1)
    rgb = rgb[..., :3].copy()
    edges = find_boundaries(labels, mode="inner")
    rgb[edges] = color
    return rgb


def region_table(labels: np.ndarray, intensity: np.ndarray) -> pd.DataFrame:
    """One row per object: label, area, centroid, perimeter, eccentricity, solidity, intensities.

    Intensities are measured on ``intensity`` (the raw image when it is 2D,
    so values are in the original units, else the preprocessed image).
    """
    if labels.max() == 0:
        return pd.DataFrame(columns=[_RENAME.get(c, c) for c in
                                     ("label", "area", "centroid-0", "centroid-1", "perimeter",
                                      "eccentricity", "solidity", "intensity_mean", "intensity_min",
                                      "intensity_max")])
    table = pd.DataFrame(regionprops_table(labels, intensity_image=intensity, properties=_PROPS))
    table.insert(5, "eccentricity", eccentricity(labels, table["label"].to_numpy()))
    return table.rename(columns=_RENAME)


def write_image_artifacts(folder: Path, labels: np.ndarray, shown: np.ndarray, table: pd.DataFrame) -> None:
    """Write ``overlay.png``, ``labels.tif`` (int32, zlib, lossless) and ``regions.csv``."""
    folder.mkdir(parents=True, exist_ok=True)
    PILImage.fromarray(overlay_rgb(shown, labels)).save(folder / "overlay.png", compress_level=1)
    tifffile.imwrite(folder / "labels.tif", labels.astype(np.int32), compression="zlib")
    table.to_csv(folder / "regions.csv", index=False)
