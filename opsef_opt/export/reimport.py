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
* rasterising is budgeted: vertices + outline row crossings + painted pixels may be at most
  :data:`RASTER_WORK_FACTOR` (8) times the image's pixels or :data:`RASTER_WORK_MIN` (50 million),
  whichever is larger, so ROIs stacked thousands of times over the image cannot run for hours;
* entries that are not ``.roi`` files (and macOS ``__MACOSX``/``._`` resource forks) are skipped.

Every refusal is a :class:`ReimportError` whose message starts with the archive's path and says
what is wrong with it. What is merely worth knowing (skipped entries, ROIs clipped at the image
border, ROIs that cover no pixel, overlaps) is counted and summarised in one line per archive,
with a few example entry names, never one line per ROI.

Rasterisation follows ImageJ: ROI coordinates have (0, 0) at the top-left corner of the first
pixel, and a pixel belongs to a ROI when its centre is inside the outline; a centre exactly on the
outline is inside when the area just to its right (or, on a horizontal edge, just below it) is, as
in ``java.awt``, so ROIs sharing an edge never share a pixel. All ROIs of an archive are filled in
bulk by a vectorised scanline fill (100,000 small ROIs take seconds; the work grows with the
outlines' rows and the painted pixels, not with bounding box x vertices), with the even-odd rule:
polygon, freehand, traced, rectangle and oval ROIs are filled (ovals as roifile's 33-point
polygon); composite (shape) ROIs are filled over all their sub-paths, so holes stay holes. Lines,
points, angles and text are not areas and are skipped (reported). Parts outside the image are
clipped. Objects are numbered 1, 2, ... in archive order (a ROI that covers no pixel takes no
number); where ROIs overlap, **the later ROI wins** the shared pixels (an earlier ROI fully
covered by later ones disappears; this is reported).

The safety checks on a zip's entries are in :mod:`opsef_opt.export.roi_entries`, the
rasterisation in :mod:`opsef_opt.export.roi_raster`; this module reads whole archives and label
images and matches edited files to images.
"""
from __future__ import annotations

import logging
import os
import zipfile
from pathlib import Path

import numpy as np
import tifffile

from opsef_opt.batch.naming import safe_name
from opsef_opt.export.roi_entries import (  # noqa: F401  (re-exported)
    _AREA_TYPES, _NOT_AREA_SUBTYPES, ReimportError, _decode, _read_entry, _unsafe_reason,
)
from opsef_opt.export.roi_raster import _Raster

__all__ = ["ReimportError", "read_roi_zip", "read_label_image", "import_edited",
           "MAX_BYTES", "MAX_ENTRIES", "RASTER_WORK_FACTOR", "RASTER_WORK_MIN"]

log = logging.getLogger(__name__)

#: largest ROI archive (on disk, and uncompressed as declared by its entries), in bytes
MAX_BYTES = 200 * 1024 * 1024
#: most entries in a ROI archive
MAX_ENTRIES = 100_000
#: rasterisation budget of one archive: its ROIs' vertices + the pixel rows their outlines cross
#: + the pixels they paint may be at most RASTER_WORK_FACTOR times the image's pixels, or
#: RASTER_WORK_MIN, whichever is larger (about 1-2 s of work per 50 million); an archive over it
#: (ROIs stacked many times over the image, or outlines of millions of vertices) is refused
RASTER_WORK_FACTOR = 8
RASTER_WORK_MIN = 50_000_000
_EXAMPLES = 3  # entry names quoted per kind of finding in an archive's summary line


def _check_shape(shape: tuple[int, ...]) -> tuple[int, int]:
    shape = tuple(int(s) for s in shape)
    if len(shape) != 2 or min(shape) <= 0:
        raise ValueError(f"shape must be (height, width) of the image, got {shape}")
    return shape


def _summary(archive: Path, shape: tuple[int, int], n_objects: int,
             found: dict[str, list[str]]) -> str | None:
    """One line for everything worth knowing about an archive's ROIs, or None."""
    h, w = shape
    what = {
        "macos": "macOS metadata entries skipped",
        "not_roi": "entries skipped (not .roi files)",
        "not_area": "ROIs skipped (lines, points, angles or text are not areas)",
        "clipped": f"ROIs were partly outside the {h}x{w} image (clipped)",
        "empty": f"ROIs cover no pixel of the {h}x{w} image (outside it or too thin)",
        "overlapped": "ROIs overlap later ROIs, which win the shared pixels",
        "covered": "ROIs are entirely covered by later ROIs (dropped)",
    }
    parts = []
    for key, text in what.items():
        names = found.get(key) or []
        if names:
            examples = ", ".join(repr(n) for n in names[:_EXAMPLES])
            more = ", ..." if len(names) > _EXAMPLES else ""
            parts.append(f"{len(names)} {text}: {examples}{more}")
    if not parts:
        return None
    return f"{archive}: {n_objects} objects read; " + "; ".join(parts)


def read_roi_zip(path: str | os.PathLike, shape: tuple[int, int], max_bytes: int | None = None,
                 max_entries: int | None = None, *, notes: list[str] | None = None) -> np.ndarray:
    """Rasterise the area ROIs of an ImageJ ROI zip into an int32 label image of ``shape``.

    See the module docstring for the safety checks, the limits, the rasterisation rule and
    overlaps; ``max_bytes`` / ``max_entries`` default to :data:`MAX_BYTES` / :data:`MAX_ENTRIES`.
    Skipped entries, clipped, empty and overlapping ROIs are counted and summarised in
    **one** line per archive (with a few example entry names): appended to ``notes`` when given,
    else logged as a warning. Anything that makes the archive unusable raises
    :class:`ReimportError` naming the archive and the reason.
    """
    archive = Path(path)
    shape = _check_shape(shape)
    max_bytes = MAX_BYTES if max_bytes is None else max_bytes
    max_entries = MAX_ENTRIES if max_entries is None else max_entries
    if not archive.is_file():
        raise ReimportError(f"{archive}: no such ROI archive")
    if archive.stat().st_size > max_bytes:
        raise ReimportError(f"{archive}: {archive.stat().st_size} bytes, more than the limit of "
                            f"{max_bytes} bytes for a ROI archive; refusing to read it")
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ReimportError(f"{archive}: not a readable zip archive ({exc}); save the ROIs with "
                            "ImageJ's ROI Manager (More > Save...)") from exc
    skipped: dict[str, list[str]] = {"macos": [], "not_roi": [], "not_area": []}
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
        raster = _Raster(shape, archive, len(infos), RASTER_WORK_FACTOR, RASTER_WORK_MIN)
        budget = max_bytes
        for info in infos:
            name = info.filename
            if info.is_dir():
                continue
            base = name.rsplit("/", 1)[-1]
            if name.startswith("__MACOSX/") or base.startswith("._"):
                skipped["macos"].append(name)
                continue
            if not base.lower().endswith(".roi"):
                skipped["not_roi"].append(name)
                continue
            data = _read_entry(zf, info, budget, archive)
            budget -= len(data)
            roi, paths = _decode(data, name, archive)
            if roi.roitype not in _AREA_TYPES or roi.subtype in _NOT_AREA_SUBTYPES:
                kind = (roi.subtype if roi.subtype in _NOT_AREA_SUBTYPES else roi.roitype).name
                skipped["not_area"].append(f"{name} ({kind.lower()})")
                continue
            raster.add(name, paths)
    labels, found, n_objects = raster.finish()
    line = _summary(archive, shape, n_objects, {**skipped, **found})
    if line is not None:
        if notes is not None:
            notes.append(line)
        else:
            log.warning("%s", line)
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
                  shapes: dict[str, tuple[int, int]], *,
                  refused: dict[str, str] | None = None,
                  ) -> tuple[dict[str, np.ndarray], list[str]]:
    """Read the edited label images / ROI zips in ``folder`` back, matched to image ``names``.

    A file belongs to image ``name`` when it is called ``<stem>.tif``, ``<stem>.tiff``,
    ``<stem>_labels.tif(f)``, ``<stem>.zip`` or ``<stem>_ROIs.zip`` (AnnotatorJ's name), where
    ``<stem>`` is ``safe_name(name)`` (names may hold '/'); matching ignores case. For AnnotatorJ,
    pass its ``12_TmpRoisFromFiji`` (saved ROIs) or ``11_SegMasksFromFiji`` (exported masks)
    folder. ``shapes`` gives each image's (height, width).

    Returns ``(labels by name, problems)``: a matched file that cannot be read or is refused
    (its message names the file and the reason), the files that match no image (one line for
    all of them), two images with the same file stem, several files for one image (the most
    recently modified one is used), and the summary of a zip's skipped / clipped / overlapping
    ROIs (see :func:`read_roi_zip` ``notes``) each add one line to ``problems`` instead of
    stopping the import. ``refused``, when given, receives ``image name -> message`` for every
    image whose matched file could not be read back (these messages are in ``problems`` too).
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
    stray: list[str] = []
    for file in sorted(p for p in folder.iterdir() if p.is_file()):
        if file.suffix.lower() not in (".tif", ".tiff", ".zip"):
            continue
        owners = expected.get(file.name.lower())
        if not owners:
            stray.append(file.name)
            continue
        if len({owner for owner, _ in owners}) > 1:
            problems.append(f"{file}: ambiguous, it could belong to any of "
                            f"{sorted({owner for owner, _ in owners})}; rename it")
            continue
        name, kind = owners[0]
        candidates.setdefault(name, []).append((file, kind))
    if stray:  # one line for all of them
        shown = ", ".join(stray[:_EXAMPLES]) + (", ..." if len(stray) > _EXAMPLES else "")
        which = (f"{folder / stray[0]}" if len(stray) == 1
                 else f"{folder}: {len(stray)} files ({shown}), each")
        problems.append(f"{which}: matches no image name (expected <image>.tif, "
                        "<image>_labels.tif, <image>.zip or <image>_ROIs.zip, with '/' in image "
                        "names written as '__')")

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
        try:
            if name not in shapes:
                raise ReimportError(f"{file}: no image shape known for {name!r}; skipped")
            if kind == "zip":
                edited[name] = read_roi_zip(file, shapes[name], notes=problems)
            else:
                edited[name] = read_label_image(file, shapes[name])
        except ReimportError as exc:
            problems.append(str(exc))
            if refused is not None:
                refused[name] = str(exc)
    return edited, problems
