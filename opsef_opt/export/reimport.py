"""Read label images and ImageJ ROI zips edited by a person back into label images.

These files come from outside (another program, another person), so they are treated as
untrusted:

* ROI zips are never extracted to disk; entries are read into memory and decoded with
  ``roifile.ImagejRoi.frombytes``;
* entry names that could escape a folder if extracted (absolute paths, drive letters, ``..``
  components, backslashes, NUL) make the whole archive rejected;
* the number of entries and the total uncompressed size declared in the zip directory are checked
  against limits *before* anything is decompressed, and every entry is read with a cap of its
  declared size (plus one byte to notice a header that lies), so a zip bomb cannot blow up memory;
* a ROI that cannot be decoded raises :class:`ReimportError` naming the entry and the archive;
* entries that are not ``.roi`` files (and macOS ``__MACOSX``/``._`` resource forks) are skipped
  and reported in ``notes``.

Rasterisation follows ImageJ: ROI coordinates have (0, 0) at the top-left corner of the first
pixel, and a pixel belongs to a ROI when its centre is inside the outline (``skimage.draw.polygon``
on the coordinates shifted by half a pixel). Polygon, freehand, traced, rectangle and oval ROIs are
filled (ovals as roifile's 33-point polygon); composite (shape) ROIs are filled with the even-odd
rule over their sub-paths, so holes stay holes. Lines, points, angles and text are not areas and
are skipped (reported). Parts outside the image are clipped. Objects are numbered 1, 2, ... in
archive order; where ROIs overlap, **the later ROI wins** the shared pixels (an earlier ROI fully
covered by later ones disappears; this is reported).
"""
from __future__ import annotations

import logging
import os
import re
import zipfile
import zlib
from pathlib import Path

import numpy as np
import roifile
import tifffile
from skimage import draw

from opsef_opt.apply.naming import safe_name

__all__ = ["ReimportError", "read_roi_zip", "read_label_image", "import_edited",
           "MAX_BYTES", "MAX_ENTRIES"]

log = logging.getLogger(__name__)

MAX_BYTES = 200 * 1024 * 1024
MAX_ENTRIES = 100_000

_AREA_TYPES = {roifile.ROI_TYPE.POLYGON, roifile.ROI_TYPE.RECT, roifile.ROI_TYPE.OVAL,
               roifile.ROI_TYPE.FREEHAND, roifile.ROI_TYPE.TRACED}
_NOT_AREA_SUBTYPES = {roifile.ROI_SUBTYPE.TEXT, roifile.ROI_SUBTYPE.IMAGE,
                      roifile.ROI_SUBTYPE.ARROW}
_DRIVE = re.compile(r"^[A-Za-z]:")


class ReimportError(ValueError):
    """An edited file that cannot be read back; the message names the file and what to do."""


def _check_shape(shape) -> tuple[int, int]:
    shape = tuple(int(s) for s in shape)
    if len(shape) != 2 or min(shape) <= 0:
        raise ValueError(f"shape must be (height, width) of the image, got {shape}")
    return shape


def _unsafe_reason(name: str) -> str | None:
    """Why a zip entry name is unsafe to have in an archive we read, or None."""
    if not name:
        return "empty name"
    if "\x00" in name:
        return "contains a NUL character"
    if "\\" in name:
        return "contains a backslash"
    if name.startswith("/"):
        return "is an absolute path"
    if _DRIVE.match(name):
        return "starts with a drive letter"
    if ".." in name.split("/"):
        return "contains a '..' component"
    return None


def _read_entry(zf: zipfile.ZipFile, info: zipfile.ZipInfo, budget: int, archive: Path) -> bytes:
    """Entry bytes, reading at most its declared size + 1 (and never more than ``budget``)."""
    cap = min(info.file_size, budget)
    try:
        with zf.open(info) as fh:
            data = fh.read(cap + 1)
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, RuntimeError,
            NotImplementedError) as exc:
        raise ReimportError(f"{archive}: entry {info.filename!r} cannot be read ({exc}); "
                            "re-save the ROIs from ImageJ's ROI Manager") from exc
    if len(data) > cap:
        raise ReimportError(f"{archive}: entry {info.filename!r} holds more data than its zip "
                            f"header declares ({info.file_size} bytes) or than the size limit; "
                            "refusing to read this archive")
    return data


def _decode(data: bytes, name: str, archive: Path) -> tuple[roifile.ImagejRoi, list[np.ndarray]]:
    """The ROI and its outline(s) as (N, 2) float (x, y) arrays; ReimportError when malformed."""
    try:
        roi = roifile.ImagejRoi.frombytes(data)
        if roi.composite and roi.roitype == roifile.ROI_TYPE.RECT:
            paths = roi.coordinates(multi=True)
        else:
            paths = [roi.coordinates()]
        paths = [np.asarray(p, dtype=np.float64).reshape(-1, 2) for p in paths]
    except Exception as exc:  # roifile raises struct.error, ValueError, TypeError, ... on garbage
        raise ReimportError(f"{archive}: entry {name!r} is not a valid ImageJ ROI ({exc}); "
                            "remove it or re-save the ROIs from ImageJ's ROI Manager") from exc
    if roi.roitype == roifile.ROI_TYPE.UNKNOWN:
        raise ReimportError(f"{archive}: entry {name!r} is not a valid ImageJ ROI (unknown ROI "
                            "type); remove it or re-save the ROIs from ImageJ's ROI Manager")
    if any(not np.all(np.isfinite(p)) for p in paths):
        raise ReimportError(f"{archive}: entry {name!r} has non-finite coordinates")
    return roi, paths


def _fill(paths: list[np.ndarray], shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols) of the pixels whose centres are inside the outline(s).

    Several sub-paths (composite ROIs) are combined with the even-odd rule inside their bounding
    box, so the work stays proportional to the ROI, not to the image.
    """
    paths = [p for p in paths if len(p) >= 3]
    if len(paths) == 1:
        return draw.polygon(paths[0][:, 1] - 0.5, paths[0][:, 0] - 0.5, shape)
    if not paths:
        return np.empty(0, np.intp), np.empty(0, np.intp)
    points = np.vstack(paths)
    y0, x0 = (max(0, int(np.floor(v))) for v in points[:, ::-1].min(axis=0))
    y1, x1 = (min(s, int(np.ceil(v)) + 1) for s, v in zip(shape, points[:, ::-1].max(axis=0)))
    if y0 >= y1 or x0 >= x1:
        return np.empty(0, np.intp), np.empty(0, np.intp)
    crop = np.zeros((y1 - y0, x1 - x0), dtype=bool)
    for path in paths:
        part = np.zeros_like(crop)
        rr, cc = draw.polygon(path[:, 1] - 0.5 - y0, path[:, 0] - 0.5 - x0, crop.shape)
        part[rr, cc] = True
        crop ^= part
    rr, cc = np.nonzero(crop)
    return rr + y0, cc + x0


def read_roi_zip(path: str | os.PathLike, shape: tuple[int, int], max_bytes: int = MAX_BYTES,
                 max_entries: int = MAX_ENTRIES, *, notes: list[str] | None = None) -> np.ndarray:
    """Rasterise the area ROIs of an ImageJ ROI zip into an int32 label image of ``shape``.

    See the module docstring for the safety checks, the rasterisation rule and overlaps.
    ``notes``, when given, receives one line per skipped entry or ROI.
    """
    archive = Path(path)
    shape = _check_shape(shape)
    own: list[str] = []  # this archive's notes, appended to ``notes`` at the end
    if not archive.is_file():
        raise ReimportError(f"{archive}: no such ROI archive")
    if archive.stat().st_size > max_bytes:
        raise ReimportError(f"{archive}: {archive.stat().st_size} bytes, more than the limit of "
                            f"{max_bytes} bytes for a ROI archive")
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ReimportError(f"{archive}: not a readable zip archive ({exc}); save the ROIs with "
                            "ImageJ's ROI Manager (More > Save...)") from exc
    with zf:
        infos = zf.infolist()
        if len(infos) > max_entries:
            raise ReimportError(f"{archive}: {len(infos)} entries, more than the limit of "
                                f"{max_entries}; refusing to read it")
        for info in infos:
            reason = _unsafe_reason(info.filename)
            if reason:
                raise ReimportError(f"{archive}: unsafe entry name {info.filename!r} ({reason}); "
                                    "refusing to read this archive")
        declared = sum(info.file_size for info in infos)
        if declared > max_bytes:
            raise ReimportError(f"{archive}: entries declare {declared} bytes uncompressed, more "
                                f"than the limit of {max_bytes} bytes; refusing to read it")
        labels = np.zeros(shape, dtype=np.int32)
        painted: dict[int, str] = {}
        budget = max_bytes
        for info in infos:
            name = info.filename
            if info.is_dir():
                continue
            base = name.rsplit("/", 1)[-1]
            if name.startswith("__MACOSX/") or base.startswith("._"):
                own.append(f"{archive}: skipped macOS metadata entry {name!r}")
                continue
            if not base.lower().endswith(".roi"):
                own.append(f"{archive}: skipped {name!r} (not a .roi file)")
                continue
            data = _read_entry(zf, info, budget, archive)
            budget -= len(data)
            roi, paths = _decode(data, name, archive)
            if roi.roitype not in _AREA_TYPES or roi.subtype in _NOT_AREA_SUBTYPES:
                own.append(f"{archive}: skipped {name!r} ({roi.roitype.name.lower()} ROI, "
                             "not an area)")
                continue
            rows, cols = _fill(paths, shape)
            if not len(rows):
                own.append(f"{archive}: {name!r} covers no pixel of the {shape} image")
                continue
            label = len(painted) + 1
            labels[rows, cols] = label
            painted[label] = name
    present = set(np.unique(labels).tolist())
    for label, name in painted.items():
        if label not in present:
            own.append(f"{archive}: {name!r} is entirely covered by later ROIs")
    for line in own:
        log.info(line)
    if notes is not None:
        notes.extend(own)
    return labels


def read_label_image(path: str | os.PathLike, shape: tuple[int, int]) -> np.ndarray:
    """An edited label TIFF as int32 labels, checked for ``shape`` and an integer dtype.

    Shape and dtype are read from the TIFF header before any pixel is decoded; singleton axes
    (e.g. a 1-slice stack) are ignored.
    """
    path = Path(path)
    shape = _check_shape(shape)
    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            found = tuple(s for s in series.shape if s != 1)
            if found != shape:
                raise ReimportError(f"{path}: label image is {tuple(series.shape)}, the image is "
                                    f"{shape}; save the edited labels at the image's size")
            if series.dtype.kind not in "iu":
                raise ReimportError(
                    f"{path}: label image has dtype {series.dtype}; labels must be integers "
                    "(in ImageJ: Image > Type > 16-bit before saving)")
            data = series.asarray()
    except ReimportError:
        raise
    except Exception as exc:  # tifffile raises TiffFileError, ValueError, OSError, ...
        raise ReimportError(f"{path}: cannot be read as a TIFF label image ({exc})") from exc
    data = data.reshape(shape)
    if data.size and data.min() < 0:
        raise ReimportError(f"{path}: label image has negative values")
    if data.size and int(data.max()) > np.iinfo(np.int32).max:
        raise ReimportError(f"{path}: labels exceed the int32 range")
    return data.astype(np.int32)


#: file name patterns matched to an image's safe stem, and how each is read
_PATTERNS = (("{}.tif", "tif"), ("{}.tiff", "tif"), ("{}_labels.tif", "tif"),
             ("{}_labels.tiff", "tif"), ("{}.zip", "zip"), ("{}_ROIs.zip", "zip"))


def import_edited(folder: str | os.PathLike, names: list[str],
                  shapes: dict[str, tuple[int, int]],
                  ) -> tuple[dict[str, np.ndarray], list[str]]:
    """Read the edited label images / ROI zips in ``folder`` back, matched to image ``names``.

    A file belongs to image ``name`` when it is called ``<stem>.tif``, ``<stem>.tiff``,
    ``<stem>_labels.tif(f)``, ``<stem>.zip`` or ``<stem>_ROIs.zip`` (AnnotatorJ's name), where
    ``<stem>`` is ``safe_name(name)`` (names may hold '/'); matching ignores case. For AnnotatorJ,
    pass its ``12_TmpRoisFromFiji`` (saved ROIs) or ``11_SegMasksFromFiji`` (exported masks)
    folder. ``shapes`` gives each image's (height, width).

    Returns ``(labels by name, problems)``: a file that cannot be read, a file that matches no
    image, two images with the same file stem, several files for one image (the most recently
    modified one is used), and ROIs skipped inside a zip (see :func:`read_roi_zip` ``notes``)
    each add one line to ``problems`` instead of stopping the import.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ReimportError(f"{folder}: no such folder of edited labels")
    problems: list[str] = []
    expected: dict[str, list[tuple[str, str]]] = {}
    for name in names:
        stem = safe_name(name)
        for pattern, kind in _PATTERNS:
            expected.setdefault(pattern.format(stem).lower(), []).append((name, kind))
    candidates: dict[str, list[tuple[Path, str]]] = {}
    for file in sorted(p for p in folder.iterdir() if p.is_file()):
        if file.suffix.lower() not in (".tif", ".tiff", ".zip"):
            continue
        owners = expected.get(file.name.lower())
        if not owners:
            problems.append(f"{file}: matches no image name (expected <image>.tif, "
                            "<image>_labels.tif, <image>.zip or <image>_ROIs.zip, with '/' in "
                            "image names written as '__')")
            continue
        if len({owner for owner, _ in owners}) > 1:
            problems.append(f"{file}: ambiguous, it could belong to any of "
                            f"{sorted({owner for owner, _ in owners})}; rename it")
            continue
        name, kind = owners[0]
        candidates.setdefault(name, []).append((file, kind))

    edited: dict[str, np.ndarray] = {}
    for name in names:
        found = candidates.get(name)
        if not found:
            continue
        found.sort(key=lambda fk: fk[0].stat().st_mtime, reverse=True)
        file, kind = found[0]
        if len(found) > 1:
            others = ", ".join(f.name for f, _ in found[1:])
            problems.append(f"{name!r}: several edited files ({file.name}, {others}); used the "
                            f"most recently modified, {file.name}")
        if name not in shapes:
            problems.append(f"{file}: no image shape known for {name!r}; skipped")
            continue
        try:
            if kind == "zip":
                edited[name] = read_roi_zip(file, shapes[name], notes=problems)
            else:
                edited[name] = read_label_image(file, shapes[name])
        except ReimportError as exc:
            problems.append(str(exc))
    return edited, problems
