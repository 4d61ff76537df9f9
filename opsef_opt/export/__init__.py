"""Files other tools read (ImageJ / AnnotatorJ ROI zips, QuPath GeoJSON), and reading edits back.

* :mod:`.outlines`  pixel-edge outline polygons of a label image (shared by the exports)
* :mod:`.imagej`    ImageJ ROI zips; the AnnotatorJ (OpSeF import) folder layout
* :mod:`.qupath`    QuPath GeoJSON FeatureCollections with classes and measurements
* :mod:`.reimport`  edited label TIFFs / ROI zips back to label images (untrusted input)
"""
from __future__ import annotations

from opsef_opt.export.imagej import roi_name, write_annotatorj, write_roi_zip
from opsef_opt.export.outlines import label_polygons
from opsef_opt.export.qupath import to_geojson, write_geojson
from opsef_opt.export.reimport import (
    ReimportError,
    import_edited,
    read_label_image,
    read_roi_zip,
)

__all__ = [
    "label_polygons",
    "roi_name",
    "write_roi_zip",
    "write_annotatorj",
    "to_geojson",
    "write_geojson",
    "ReimportError",
    "read_roi_zip",
    "read_label_image",
    "import_edited",
]
