"""Read the entries of an untrusted ImageJ ROI zip into ROI outlines, refusing what could do harm.

ROI zips edited by a person come from outside (another program, another
person), so nothing in them is trusted: entry names that could escape a
folder if extracted, entries holding more data than their header declares
and ROIs that cannot be decoded or lie absurdly far out are refused, each
with a :class:`ReimportError` that names the archive and the entry.  The
entries are only ever read into memory, never extracted to disk.
"""
from __future__ import annotations

import re
import zipfile
import zlib
from pathlib import Path

import numpy as np
import roifile

__all__ = ["ReimportError"]

_MAX_COORDINATE = 1e7  # a ROI vertex farther out is refused as malformed (keeps the arithmetic exact)

_AREA_TYPES = {roifile.ROI_TYPE.POLYGON, roifile.ROI_TYPE.RECT, roifile.ROI_TYPE.OVAL,
               roifile.ROI_TYPE.FREEHAND, roifile.ROI_TYPE.TRACED}
_NOT_AREA_SUBTYPES = {roifile.ROI_SUBTYPE.TEXT, roifile.ROI_SUBTYPE.IMAGE,
                      roifile.ROI_SUBTYPE.ARROW}
_DRIVE = re.compile(r"^[A-Za-z]:")


class ReimportError(ValueError):
    """An edited file that cannot be read back; the message names the file and what to do."""


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
    for p in paths:
        if not np.all(np.isfinite(p)):
            raise ReimportError(f"{archive}: entry {name!r} has non-finite coordinates")
        if len(p) and np.abs(p).max() > _MAX_COORDINATE:
            raise ReimportError(f"{archive}: entry {name!r} has coordinates beyond "
                                f"+-{_MAX_COORDINATE:g} pixels, far outside any image")
    return roi, paths
