"""Files the apply mode writes per image: OME-TIFF labels with provenance, overlays, tables."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import tifffile

__all__ = ["write_labels", "read_provenance", "preview_step", "write_overlay", "write_table"]

#: longest side of overlay PNGs; larger images are shown subsampled (the label TIFF keeps every pixel)
OVERLAY_MAX_PX = 4096


def write_labels(path: Path, labels: np.ndarray, pixel_size_um: float | None, provenance: Mapping[str, Any]) -> Path:
    """Write an int32 OME-TIFF (tiled, zlib) with the pixel size and the provenance (JSON) as its description.

    ``labels`` may be a memory map: tifffile writes it tile by tile, so a
    whole-slide label image never has to be in memory. Fiji (Bio-Formats),
    QuPath and napari read the file; ``read_provenance`` gives the JSON back.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    meta: dict[str, Any] = {"axes": "YX", "Name": str(provenance.get("image", path.stem)),
                            "Description": json.dumps(dict(provenance), default=str)}
    if pixel_size_um:
        meta.update(PhysicalSizeX=pixel_size_um, PhysicalSizeY=pixel_size_um,
                    PhysicalSizeXUnit="µm", PhysicalSizeYUnit="µm")
    tmp = path.with_name(path.name + ".part")
    big = labels.shape[0] * labels.shape[1] > 2 ** 24
    tifffile.imwrite(tmp, labels if labels.dtype == np.int32 else labels.astype(np.int32), ome=True,
                     metadata=meta, tile=(512, 512), compression="zlib", bigtiff=big)
    tmp.replace(path)  # a killed run never leaves a half-written label image under the final name
    return path


def read_provenance(path: Path) -> dict[str, Any]:
    """The provenance JSON stored by :func:`write_labels`."""
    import xml.etree.ElementTree as ET

    with tifffile.TiffFile(path) as tif:
        root = ET.fromstring(tif.ome_metadata)
    desc = next((el.text for el in root.iter() if el.tag.endswith("Description")), None)
    return json.loads(desc) if desc else {}


def preview_step(shape_yx: tuple[int, int], max_px: int = OVERLAY_MAX_PX) -> int:
    """Subsampling step that keeps the longest side of a preview within ``max_px``."""
    return max(1, -(-max(shape_yx) // max_px))


def write_overlay(path: Path, image: np.ndarray, labels: np.ndarray,
                  classes: Mapping[int, str] | None = None) -> Path:
    """Outlines of ``labels`` over ``image`` as PNG (one colour, or one per class)."""
    from PIL import Image as PILImage

    from opsef_opt.track.artifacts import overlay_rgb

    if classes:
        from opsef_opt.post.classify import class_overlay

        rgb = class_overlay(image, labels, classes)
    else:
        rgb = overlay_rgb(image, labels)
    path.parent.mkdir(parents=True, exist_ok=True)
    PILImage.fromarray(rgb).save(path, compress_level=1)
    return path


def write_table(path: Path, table) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(path, index=False)
    return path
