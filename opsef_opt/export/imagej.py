"""ImageJ ROI zips of a label image, and the folder layout AnnotatorJ's OpSeF import reads.

ROI zip
-------
:func:`write_roi_zip` writes one polygon ROI per object (the pixel-edge outline of
:func:`label_polygons`, see :mod:`opsef_opt.export.outlines`) with ``roifile``, named
``"0001-label_17"``: a zero-padded running number, so the ROI Manager lists them in label order,
and the label id, so an edited ROI can be traced back to its object. Outlines with integer vertices
are stored as TRACED ROIs (what ImageJ's wand and "Create Selection" make); the rare outline with
a moved pinch vertex is stored with sub-pixel coordinates.

AnnotatorJ layout (``write_annotatorj``)
----------------------------------------
AnnotatorJ (Hollandi et al.; the OpSeF build ships the "AnnotatorJOpSef" plugin) opens OpSeF
results through a *FilePairList* text file. The layout below was taken from the plugin's source
(``ImportOpSef.java`` and ``Annotator_MainFrameNew.java`` in trasse/OpSeF-IV, ``annotatorj-opsef``)
and its README ("OpSeF import")::

    <folder>/                                 the "OpSeF root" (any name)
      10_ImportExport/FilePairList_opsef_opt.txt
      00_InputRaw/<stem>.tif                  the image (2-D grey or RGB)
      02_SegMasks/<stem>.tif                  16-bit label mask
      12_TmpRoisFromFiji/<stem>_ROIs.zip      ImageJ ROI zip of the same objects
    AnnotatorJ writes, after editing:
      12_TmpRoisFromFiji/<stem>_ROIs.zip      "Save" (overwrites the zip above)
      11_SegMasksFromFiji/, 13_ClassifiedSegMasksFromFiji/   "Export" (masks, class masks)

``<stem>`` is :func:`opsef_opt.batch.naming.safe_name` of the image name.

Confirmed from the source:

* the plugin asks for the FilePairList file and takes its folder's *parent* as the root;
* each line is ``<image path>;<mask path>`` relative to the root; the mask path must contain a
  ``/`` or ``\\``; a line starting with ``root;`` is treated as a header, but the reader sizes its
  arrays by the total line count, so a header line leaves an empty last entry that the loader then
  tries to open (it fails). The file is therefore written **without** a ``root;`` line;
* every image of one FilePairList is added to a single ImageJ stack, so all must have the same
  width, height and type (checked here when a second image is added);
* masks are converted to 16 bit and cut into one ROI per grey value (``ThresholdToSelection``),
  unless ``12_TmpRoisFromFiji/<mask file stem>_ROIs.zip`` exists: then that ROI zip is loaded
  instead, and "Save" writes the edited ROIs back to the same name.

Not confirmed: the file names AnnotatorJ's "Export" gives the masks in ``11_SegMasksFromFiji``
(they are derived from the original mask names), and whether the ``00_InputRaw`` / ``02_SegMasks``
folder names matter to the plugin (the paths in the list are followed as written; these names are
the ones OpSeF used). Outside the OpSeF import, plain AnnotatorJ saves annotations as
``<image folder>/<class>/<image stem>_ROIs.zip``; :func:`opsef_opt.export.reimport.import_edited`
accepts ``<stem>_ROIs.zip`` files from either.

A ROI zip already in ``12_TmpRoisFromFiji`` that this module did not write (i.e. one AnnotatorJ
saved with the user's edits) is never overwritten: it is moved to
``12_TmpRoisFromFiji/replaced/<stem>_ROIs.<time>.zip`` first (AnnotatorJ ignores that folder), and
a warning is logged. Zips written by this module are recognised by their SHA-256, recorded in
``12_TmpRoisFromFiji/.opsef_opt_written.json``.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import roifile
import tifffile

from opsef_opt.batch.naming import safe_name
from opsef_opt.export.outlines import check_labels, label_polygons

__all__ = ["label_polygons", "roi_name", "write_roi_zip", "write_annotatorj",
           "ANNOTATORJ_FOLDERS", "PAIR_LIST_NAME"]

log = logging.getLogger(__name__)

#: sub-folders of the AnnotatorJ (OpSeF import) layout
ANNOTATORJ_FOLDERS = {
    "pair_list": "10_ImportExport",
    "image": "00_InputRaw",
    "mask": "02_SegMasks",
    "rois": "12_TmpRoisFromFiji",
    "edited_masks": "11_SegMasksFromFiji",
    "edited_class_masks": "13_ClassifiedSegMasksFromFiji",
}
PAIR_LIST_NAME = "FilePairList_opsef_opt.txt"
_WRITTEN_RECORD = ".opsef_opt_written.json"


def roi_name(index: int, label: int, count: int) -> str:
    """ROI name ``"0001-label_17"``: 1-based running number (zero-padded to fit ``count``) + label."""
    width = max(4, len(str(count)))
    return f"{index:0{width}d}-label_{label}"


def _rois(labels: np.ndarray, offset: tuple[int, int],
          names: Mapping[int, str] | None) -> tuple[list[roifile.ImagejRoi], list[str]]:
    polygons = label_polygons(labels, offset)
    rois, entries = [], []
    for index, label in enumerate(sorted(polygons), start=1):
        ring = polygons[label]
        name = (names or {}).get(label) or roi_name(index, label, len(polygons))
        integral = bool(np.all(ring == np.round(ring)))
        roi = roifile.ImagejRoi.frompoints(
            ring.astype(np.int32) if integral else ring.astype(np.float32), name=name)
        if integral:
            roi.roitype = roifile.ROI_TYPE.TRACED
        rois.append(roi)
        entries.append(safe_name(name))
    if len(set(entries)) != len(entries):
        raise ValueError("ROI names must be unique (after making them file-system safe)")
    return rois, entries


def write_roi_zip(labels: np.ndarray, path: str | os.PathLike, offset: tuple[int, int] = (0, 0),
                  names: Mapping[int, str] | None = None) -> int:
    """Write one ImageJ polygon ROI per object of ``labels`` to the zip ``path``; return the count.

    ``offset`` is (y, x) of the label image in the full image (tiles). ``names`` optionally maps
    label -> ROI name (default ``roi_name``: ``"0001-label_17"``). An existing file is replaced
    atomically (roifile would otherwise append to it).
    """
    path = Path(path)
    rois, entries = _rois(check_labels(labels), offset, names)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.unlink(missing_ok=True)
    roifile.roiwrite(partial, rois, name=entries, mode="w")
    os.replace(partial, path)
    return len(rois)


def _image_for_imagej(image: np.ndarray) -> tuple[np.ndarray, str]:
    """The image as a TIFF ImageJ opens as one plane: 2-D grey or 8-bit RGB."""
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] == 3:
        if image.dtype != np.uint8:
            raise ValueError(f"RGB image for AnnotatorJ must be uint8, got {image.dtype}; "
                             "convert it (e.g. skimage.util.img_as_ubyte) or pass one channel")
        return image, "rgb"
    if image.ndim != 2:
        raise ValueError(f"AnnotatorJ shows one plane per image: pass a 2-D or (Y, X, 3) RGB "
                         f"image, got shape {image.shape}")
    if image.dtype == bool:
        return image.astype(np.uint8) * 255, "minisblack"
    if image.dtype in (np.uint8, np.uint16, np.int16, np.float32):
        return image, "minisblack"
    if image.dtype.kind in "iuf":  # 32/64-bit ints, float64: ImageJ shows them as 32-bit float
        return image.astype(np.float32), "minisblack"
    raise ValueError(f"image dtype {image.dtype} cannot be written for ImageJ")


def _read_pair_list(path: Path) -> list[str]:
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.startswith("root;")]


def _check_same_stack(root: Path, lines: list[str], own_line: str, image: np.ndarray) -> None:
    """AnnotatorJ stacks all images of a FilePairList: they must match in shape and dtype.

    Every entry was checked against the first one when it was added, so comparing with the first
    other existing image is enough (one TIFF header read per export).
    """
    for line in lines:
        if line == own_line:
            continue
        other = root / line.split(";")[0]
        if not other.exists():
            continue
        with tifffile.TiffFile(other) as tif:
            shape, dtype = tuple(tif.series[0].shape), tif.series[0].dtype
        if shape != image.shape or dtype != image.dtype:
            raise ValueError(
                f"AnnotatorJ loads every image of {root / ANNOTATORJ_FOLDERS['pair_list']} into one "
                f"ImageJ stack, so they must share size and type: {other.name} is {shape} {dtype}, "
                f"the new image is {image.shape} {image.dtype}; export it to another folder")
        return


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _protect_saved_rois(zip_path: Path, record_path: Path) -> Path | None:
    """Move a ROI zip AnnotatorJ saved (not written by us) aside; return where it went."""
    if not zip_path.exists():
        return None
    record = json.loads(record_path.read_text(encoding="utf-8")) if record_path.exists() else {}
    if record.get(zip_path.name) == _sha256(zip_path):
        return None  # our own earlier export: safe to replace
    backup_dir = zip_path.parent / "replaced"
    backup_dir.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    backup = backup_dir / f"{zip_path.stem}.{stamp}.zip"
    n = 1
    while backup.exists():
        backup = backup_dir / f"{zip_path.stem}.{stamp}-{n}.zip"
        n += 1
    os.replace(zip_path, backup)
    log.warning("%s holds ROIs saved in AnnotatorJ; moved it to %s before writing the new export",
                zip_path, backup)
    return backup


def _write_tiff(path: Path, data: np.ndarray, photometric: str) -> None:
    partial = path.with_name(path.name + ".partial")
    tifffile.imwrite(partial, data, photometric=photometric)
    os.replace(partial, path)


def write_annotatorj(folder: str | os.PathLike, image_name: str, image: np.ndarray,
                     labels: np.ndarray) -> dict[str, Path]:
    """Write ``image`` and its ``labels`` in the layout AnnotatorJ's OpSeF import opens.

    See the module docstring for the layout. Calling it for several images of one folder adds
    them to the same FilePairList (a second call for the same image replaces its entry). Returns
    the paths written: ``image``, ``mask``, ``rois``, ``pair_list`` and, when a ROI zip saved in
    AnnotatorJ had to be moved aside, ``replaced_rois``.
    """
    root = Path(folder)
    labels = check_labels(labels)
    pixels, photometric = _image_for_imagej(image)
    if labels.shape != pixels.shape[:2]:
        raise ValueError(f"labels {labels.shape} and image {pixels.shape[:2]} of {image_name!r} "
                         "differ in size")
    if labels.size and labels.max() > np.iinfo(np.uint16).max:
        raise ValueError(f"{image_name!r} has labels above 65535; AnnotatorJ reads masks as "
                         "16-bit images: relabel it first (skimage.segmentation.relabel_sequential)")
    stem = safe_name(image_name)
    dirs = {key: root / sub for key, sub in ANNOTATORJ_FOLDERS.items()
            if key in ("pair_list", "image", "mask", "rois")}
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    paths = {
        "image": dirs["image"] / f"{stem}.tif",
        "mask": dirs["mask"] / f"{stem}.tif",
        "rois": dirs["rois"] / f"{stem}_ROIs.zip",
        "pair_list": dirs["pair_list"] / PAIR_LIST_NAME,
    }
    own_line = (f"{ANNOTATORJ_FOLDERS['image']}/{paths['image'].name};"
                f"{ANNOTATORJ_FOLDERS['mask']}/{paths['mask'].name}")
    lines = _read_pair_list(paths["pair_list"])
    _check_same_stack(root, lines, own_line, pixels)

    _write_tiff(paths["image"], pixels, photometric)
    _write_tiff(paths["mask"], labels.astype(np.uint16), "minisblack")
    record_path = dirs["rois"] / _WRITTEN_RECORD
    replaced = _protect_saved_rois(paths["rois"], record_path)
    write_roi_zip(labels, paths["rois"])
    record = json.loads(record_path.read_text(encoding="utf-8")) if record_path.exists() else {}
    record[paths["rois"].name] = _sha256(paths["rois"])
    record_path.write_text(json.dumps(record, indent=1, sort_keys=True), encoding="utf-8")

    if own_line not in lines:
        lines.append(own_line)
    partial = paths["pair_list"].with_name(PAIR_LIST_NAME + ".partial")
    partial.write_text("\n".join(lines) + "\n", encoding="utf-8")
    os.replace(partial, paths["pair_list"])
    if replaced is not None:
        paths["replaced_rois"] = replaced
    return paths
