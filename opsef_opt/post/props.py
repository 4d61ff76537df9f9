"""Per-object measurements of a label image: shape, raw intensity, second channels.

One row per object, in the label order, with global coordinates (a tile's
``offset`` is added) so tables of tiles and whole images can be concatenated.

2D labels (Y, X) get every column. 3D labels (Z, Y, X) are measured too:
``area`` counts voxels, centroids and boxes gain a z coordinate
(``centroid_z``, ``bbox_z0``, ``bbox_z1``), and the properties that are
defined only for a plane (perimeter, circularity, eccentricity) are NaN
rather than a misleading number; measure a projection or a slice for those.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from skimage.measure import regionprops_table

from opsef_opt.measure import area_convex, axis_lengths, eccentricity, inertia_eigvals, perimeter_crofton

__all__ = ["region_properties", "raw_intensity", "PROPERTY_NAMES", "SHAPE_NAMES", "INTENSITY_NAMES"]

#: shape measurements (pixel units); the default features of the analysis plots
SHAPE_NAMES = ("area", "perimeter", "circularity", "eccentricity", "solidity",
               "major_axis_length", "minor_axis_length")
#: intensity measurements on the raw image (NaN when no raw image is given)
INTENSITY_NAMES = ("mean_intensity", "min_intensity", "max_intensity")
#: columns ``filter_objects`` accepts by default (besides any second-channel
#: ``<name>.mean_intensity`` / ``<name>.integrated_intensity`` and ``*_um*`` columns)
PROPERTY_NAMES = ("centroid_y", "centroid_x", *SHAPE_NAMES, *INTENSITY_NAMES)

_GEOMETRY = ("label", "centroid", "bbox", "area", "solidity", "axis_major_length", "axis_minor_length")
_RENAME = {"axis_major_length": "major_axis_length", "axis_minor_length": "minor_axis_length"}


def _columns(ndim: int, channels: Sequence[str], pixel_size: bool) -> list[str]:
    axes = ("z", "y", "x") if ndim == 3 else ("y", "x")
    cols = ["label", *(f"centroid_{a}" for a in axes), *(f"bbox_{a}0" for a in axes),
            *(f"bbox_{a}1" for a in axes), *SHAPE_NAMES, *INTENSITY_NAMES]
    for name in channels:
        cols += [f"{name}.mean_intensity", f"{name}.integrated_intensity"]
    if pixel_size:
        cols += ["volume_um3"] if ndim == 3 else ["area_um2", "perimeter_um"]
    return cols


def _check_labels(labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim not in (2, 3):
        raise ValueError(f"labels must be 2D (Y, X) or 3D (Z, Y, X); got shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        if labels.dtype == bool or not np.all(np.mod(labels, 1) == 0):
            raise ValueError(f"labels must hold integer object ids; got dtype {labels.dtype}")
        labels = labels.astype(np.int64)
    if labels.size and labels.min() < 0:
        raise ValueError("labels must be >= 0 (0 = background); found negative ids")
    if labels.dtype == np.uint64:  # numpy's bincount (used for the vectorised measures) needs int64
        labels = labels.astype(np.int64)
    return labels


def raw_intensity(data: np.ndarray, axes: str, shape: Sequence[int] | None = None,
                  planes: bool = True) -> np.ndarray | None:
    """The raw pixels objects are measured on: float32 in the image's own units, colours averaged.

    The one "raw image of a result" of the package: the apply mode measures
    on it, a trial's ``regions.csv`` too, and the search's intensity proxies
    on it normalised (:func:`opsef_opt.search.trial.reference_intensities`).

    ``shape`` is the labels' shape (None: 2D labels). With ``planes``, a stack
    measured with 2D labels (a projection pipeline) is measured on the mean
    of its Z planes; 3D labels keep Z. Returns None when the result is not on
    the labels' grid (a step changed the geometry).

    >>> raw_intensity(np.ones((2, 4, 4, 3), np.uint8), "ZYXC").shape
    (4, 4)
    """
    data = np.asarray(data)
    if "C" in axes:
        data = data.mean(axis=axes.index("C"))  # numpy's own precision (float64 for integers), then float32
        axes = axes.replace("C", "")
    if planes and "Z" in axes and (shape is None or len(shape) == data.ndim - 1):
        data = data.mean(axis=axes.index("Z"))
    if shape is not None and data.shape != tuple(shape):
        return None
    return np.asarray(data, np.float32)


def _intensity_image(raw: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """The raw image as float, one value per pixel (RGB / YXC averaged over channels)."""
    raw = np.asarray(raw)
    if raw.shape == shape:
        return raw.astype(np.float64, copy=False)
    if raw.ndim == len(shape) + 1 and raw.shape[:-1] == shape:
        return raw.astype(np.float64).mean(axis=-1)
    raise ValueError(f"raw image shape {raw.shape} does not match the labels {shape} "
                     "(expected the same shape, or the same plus a trailing channel axis)")


def _offset(offset: Sequence[int], ndim: int) -> np.ndarray:
    off = np.asarray(tuple(offset), dtype=float)
    if off.size == ndim:
        return off
    if off.size == 2 and ndim == 3:  # a (y, x) tile offset of a stack
        return np.concatenate([[0.0], off])
    raise ValueError(f"offset {tuple(offset)} must have {ndim} values (one per label axis)")


def region_properties(
    labels: np.ndarray,
    raw: np.ndarray | None = None,
    channels: Mapping[str, np.ndarray] | None = None,
    offset: Sequence[int] = (0, 0),
    pixel_size: float | Sequence[float] | None = None,
) -> pd.DataFrame:
    """One row per object of ``labels``: position, shape and intensity measurements.

    Columns: ``label``; ``centroid_y``, ``centroid_x`` and the bounding box
    ``bbox_y0, bbox_x0`` (inclusive) / ``bbox_y1, bbox_x1`` (exclusive), all in
    global pixel coordinates (``offset`` added); ``area`` (pixels),
    ``perimeter``, ``circularity``, ``eccentricity``, ``solidity``,
    ``major_axis_length``, ``minor_axis_length``; ``mean_intensity``,
    ``min_intensity``, ``max_intensity`` on ``raw``; per second channel
    ``<name>.mean_intensity`` and ``<name>.integrated_intensity`` (sum over the
    object); with ``pixel_size`` (um per pixel) ``area_um2`` and ``perimeter_um``.

    * ``perimeter`` is scikit-image's Crofton estimate (``perimeter_crofton``,
      4 directions), which is close to the true length of the outline for
      round and straight shapes alike; the default ``perimeter`` of
      scikit-image counts boundary-pixel steps and over-estimates circles by
      ~4-8 % (a disc of radius 50 px would get circularity 0.92).
    * ``circularity`` = 4 * pi * area / perimeter**2: 1 for a disc, towards 0
      for thin or ragged objects. It is clipped to <= 1 because on a pixel
      grid small objects (a few pixels) have a perimeter estimate short
      enough to give values above 1, which no shape can truly have.
    * ``eccentricity`` as scikit-image defines it (from the inertia tensor),
      computed for all objects at once (``opsef_opt.measure.eccentricity``).
    * Intensities are measured on ``raw`` -- pass the raw image, not the
      preprocessed one, so values are in the instrument's units. A (Y, X, C)
      image (e.g. RGB) is averaged over its channels first. Without ``raw``
      the intensity columns are NaN.
    * 3D labels (Z, Y, X): see the module docstring; ``pixel_size`` is then
      one number (isotropic voxel) or (z, y, x) and adds ``volume_um3``.

    Empty labels give an empty table with the same columns.
    """
    labels = _check_labels(labels)
    ndim = labels.ndim
    off = _offset(offset, ndim)
    channels = dict(channels or {})
    intensity = None if raw is None else _intensity_image(raw, labels.shape)
    chans = {}
    for name, arr in channels.items():
        arr = np.asarray(arr)
        if arr.shape != labels.shape:
            raise ValueError(f"channel {name!r} has shape {arr.shape}, labels have {labels.shape}: "
                             "second channels must be registered to the labels (same shape)")
        chans[str(name)] = arr.astype(np.float64, copy=False)
    columns = _columns(ndim, list(chans), pixel_size is not None)
    if labels.max(initial=0) == 0:
        return pd.DataFrame({c: pd.Series(dtype=np.int64 if c == "label" or c.startswith("bbox_") else float) for c in columns})

    if ndim == 2:  # every measurement vectorised over the objects
        props = regionprops_table(labels, properties=("label", "bbox", "area"))
        ids = props.pop("label").astype(np.int64)
        with np.errstate(divide="ignore", invalid="ignore"):  # scikit-image's solidity, for all objects at once
            props["solidity"] = props["area"] / area_convex(labels, ids)
        props["perimeter_crofton"] = perimeter_crofton(labels, ids)
        yy, xx = np.nonzero(labels)
        lab = labels[yy, xx]
        n = int(labels.max()) + 1
        count = np.maximum(np.bincount(lab, minlength=n), 1)
        props["centroid-0"] = (np.bincount(lab, yy, n) / count)[ids]
        props["centroid-1"] = (np.bincount(lab, xx, n) / count)[ids]
        eigvals = inertia_eigvals(labels)  # once for the axes and the eccentricity
        props["axis_major_length"], props["axis_minor_length"] = axis_lengths(labels, ids, eigvals)
    else:
        props = regionprops_table(labels, properties=_GEOMETRY)
        ids = props.pop("label").astype(np.int64)
    axes = ("z", "y", "x") if ndim == 3 else ("y", "x")
    table = pd.DataFrame({"label": ids})
    for i, a in enumerate(axes):
        table[f"centroid_{a}"] = props[f"centroid-{i}"] + off[i]
    for i, a in enumerate(axes):
        table[f"bbox_{a}0"] = (props[f"bbox-{i}"] + off[i]).astype(np.int64)
    for i, a in enumerate(axes):
        table[f"bbox_{a}1"] = (props[f"bbox-{i + ndim}"] + off[i]).astype(np.int64)
    area = props["area"].astype(float)
    table["area"] = area
    if ndim == 2:
        perim = props["perimeter_crofton"]
        table["perimeter"] = perim
        with np.errstate(divide="ignore", invalid="ignore"):
            circ = np.where(perim > 0, 4 * np.pi * area / perim**2, np.nan)
        table["circularity"] = np.minimum(circ, 1.0)
        table["eccentricity"] = eccentricity(labels, ids, eigvals)
    else:
        table["perimeter"] = table["circularity"] = table["eccentricity"] = np.nan
    table["solidity"] = props["solidity"]
    table["major_axis_length"] = props["axis_major_length"]
    table["minor_axis_length"] = props["axis_minor_length"]

    mask = labels > 0
    n = int(labels.max()) + 1
    lab = labels[mask]
    if intensity is None:
        for c in INTENSITY_NAMES:
            table[c] = np.nan
    else:  # for all objects at once (scipy.ndimage's per-label minimum/maximum sort every pixel)
        values = intensity[mask]
        low, high = np.full(n, np.inf), np.full(n, -np.inf)
        np.minimum.at(low, lab, values)
        np.maximum.at(high, lab, values)
        table["mean_intensity"] = np.bincount(lab, weights=values, minlength=n)[ids] / area
        table["min_intensity"] = low[ids]
        table["max_intensity"] = high[ids]
    for name, arr in chans.items():
        total = np.bincount(lab, weights=arr[mask], minlength=n)[ids]
        table[f"{name}.mean_intensity"] = total / area
        table[f"{name}.integrated_intensity"] = total
    if pixel_size is not None:
        size = np.broadcast_to(np.asarray(pixel_size, dtype=float), (ndim,)) \
            if np.ndim(pixel_size) == 0 else np.asarray(tuple(pixel_size), dtype=float)
        if size.size != ndim or np.any(size <= 0):
            raise ValueError(f"pixel_size {pixel_size!r} must be > 0: one number "
                             f"or one per axis ({ndim})")
        if ndim == 3:
            table["volume_um3"] = area * float(np.prod(size))
        else:
            if not np.isclose(size[0], size[1]):
                raise ValueError(f"pixel_size {tuple(size)} is anisotropic: perimeter_um needs square pixels")
            table["area_um2"] = area * size[0] * size[1]
            table["perimeter_um"] = table["perimeter"] * size[0]
    return table[columns]
