"""QuPath GeoJSON of a label image: one Polygon feature per object, with class and measurements.

The format is the one QuPath (0.4 and later) writes and reads with File > Import objects / drag and
drop (checked against ``qupath.lib.io.PathObjectTypeAdapters``)::

    {"type": "FeatureCollection", "features": [
      {"type": "Feature",
       "id": "<UUID>",                        QuPath parses it with UUID.fromString
       "geometry": {"type": "Polygon", "coordinates": [[[x, y], ..., [x0, y0]]]},
       "properties": {"objectType": "detection" | "annotation",
                      "name": "label_17",
                      "classification": {"name": "inside", "color": [r, g, b]},  (when known)
                      "measurements": {"area": 152.0, ...}}}]}    (numbers only; QuPath stores doubles)

Coordinates are image pixels with (0, 0) the top-left corner of the first pixel (QuPath's
convention), the pixel-edge outline of :func:`opsef_opt.export.outlines.label_polygons` (largest
component, holes filled); the ring is closed, has at least 4 positions, and its signed area in
(x, y) is positive (counter-clockwise in the coordinates' own axes, as RFC 7946 prefers; it looks
clockwise on screen because image y points down). Feature ids are UUID-5 of (image name, label),
so the same object gets the same id on every export. Non-finite measurement values are dropped
(JSON has no NaN); non-numeric columns are not measurements.
"""
from __future__ import annotations

import json
import math
import os
import uuid
import zlib
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from opsef_opt.export.outlines import check_labels, label_polygons

__all__ = ["to_geojson", "write_geojson", "class_color", "OBJECT_TYPES"]

OBJECT_TYPES = ("detection", "annotation")
#: label -> class name: a mapping, a Series indexed by label, or a frame with label and class
Classes = Mapping[int, str] | pd.Series | pd.DataFrame | None
_ID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "opsef-opt/export/qupath")
# matplotlib's tab10, as 8-bit RGB: distinct colours for class names
_PALETTE = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
            (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207))


def class_color(name: str) -> list[int]:
    """A fixed colour for a class name (the same in every export and every run)."""
    return list(_PALETTE[zlib.crc32(name.encode("utf-8")) % len(_PALETTE)])


def _class_map(classes: Classes, table: pd.DataFrame | None) -> dict[int, str]:
    """label -> class name from a mapping, a Series indexed by label, or a (label, class) frame."""
    if classes is None and table is not None and "class" in table.columns:
        classes = table
    if classes is None:
        return {}
    if isinstance(classes, pd.DataFrame):
        missing = {"label", "class"} - set(classes.columns)
        if missing:
            raise ValueError(f"classes table needs columns 'label' and 'class' (missing {missing})")
        classes = dict(zip(classes["label"], classes["class"]))
    elif isinstance(classes, pd.Series):
        classes = classes.to_dict()
    return {int(k): str(v) for k, v in classes.items() if v is not None and not pd.isna(v)}


def _measurements(table: pd.DataFrame | None) -> dict[int, dict[str, float]]:
    """label -> {column: value} of the numeric columns, non-finite values dropped."""
    if table is None or len(table) == 0:
        return {}
    if "label" not in table.columns:
        raise ValueError("measurement table needs a 'label' column (see post.props.region_properties)")
    if table["label"].duplicated().any():
        raise ValueError("measurement table has duplicate labels; give one row per object")
    numeric = [c for c in table.columns
               if pd.api.types.is_numeric_dtype(table[c]) or pd.api.types.is_bool_dtype(table[c])]
    out: dict[int, dict[str, float]] = {}
    for row in table[numeric].itertuples(index=False, name=None):
        values = dict(zip(numeric, row))
        label = int(values["label"])
        out[label] = {str(k): float(v) for k, v in values.items()
                      if not pd.isna(v) and math.isfinite(float(v))}
    return out


def _ring(polygon: np.ndarray) -> list[list[float]]:
    closed = np.vstack([polygon, polygon[:1]])
    if np.all(closed == np.round(closed)):
        return closed.astype(np.int64).tolist()
    return closed.tolist()


def to_geojson(labels: np.ndarray, table: pd.DataFrame | None = None, classes: Classes = None,
               offset: tuple[int, int] = (0, 0), object_type: str = "detection", *,
               image_name: str = "", colors: Mapping[str, tuple[int, int, int]] | None = None,
               ) -> dict:
    """GeoJSON FeatureCollection (a dict) of the objects of ``labels`` for QuPath.

    ``table``: one row per object with a ``label`` column (e.g. ``region_properties``); its numeric
    columns become the measurements. ``classes``: label -> class name (mapping, Series, or a frame
    with ``label`` and ``class`` such as ``classify_objects`` returns); by default the table's
    ``class`` column if it has one. ``offset``: (y, x) of the label image in the full image.
    ``object_type``: "detection" (many small objects, fast in QuPath) or "annotation" (editable).
    ``image_name`` makes feature ids unique across images; ``colors`` overrides class colours.
    """
    if object_type not in OBJECT_TYPES:
        raise ValueError(f"object_type must be one of {OBJECT_TYPES}, got {object_type!r}")
    labels = check_labels(labels)
    class_of = _class_map(classes, table)
    measured = _measurements(table)
    features = []
    for label, polygon in sorted(label_polygons(labels, offset).items()):
        properties: dict = {"objectType": object_type, "name": f"label_{label}"}
        if label in class_of:
            name = class_of[label]
            color = (colors or {}).get(name) or class_color(name)
            properties["classification"] = {"name": name, "color": [int(c) for c in color]}
        properties["measurements"] = measured.get(label, {})
        features.append({
            "type": "Feature",
            "id": str(uuid.uuid5(_ID_NAMESPACE, f"{image_name}/{label}")),
            "geometry": {"type": "Polygon", "coordinates": [_ring(polygon)]},
            "properties": properties,
        })
    return {"type": "FeatureCollection", "features": features}


def write_geojson(path: str | os.PathLike, labels: np.ndarray, table: pd.DataFrame | None = None,
                  classes: Classes = None, offset: tuple[int, int] = (0, 0), object_type: str = "detection",
                  **kwargs) -> int:
    """Write :func:`to_geojson` to ``path`` (strict JSON, replaced atomically); return the count."""
    path = Path(path)
    collection = to_geojson(labels, table, classes, offset, object_type, **kwargs)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    with open(partial, "w", encoding="utf-8") as fh:
        json.dump(collection, fh, allow_nan=False, separators=(",", ":"))
    os.replace(partial, path)
    return len(collection["features"])
