"""Read TIFF files into :class:`~opsef_opt.io.image.Image` records.

The axes tifffile reports for the first series (``tif.series[0].axes``) decide
how the array is interpreted; the result is always one of ``YX``, ``ZYX``,
``YXC`` or ``ZYXC``. Interpretation rules, in order:

* ``Y``, ``X``, ``Z`` keep their meaning.
* ``S`` (samples per pixel) is a colour axis, kept as a trailing ``C``, when the
  file is RGB-like (photometric RGB or YCbCr) with 3 or 4 samples; otherwise
  ``S`` holds ordinary channels.
* ``C`` (and non-RGB ``S``) are channels: one of them is selected with
  ``channel`` (required when there are several), giving ``YX`` or ``ZYX``.
  ``channel`` on an RGB image selects that colour, giving a grey image.
* ``T``: the first time point is taken (recorded in ``meta``).
* Any other axis (``Q``, ``I``, ``R``, ...) of length 1 is dropped; a longer one
  is read as channels when its length is <= 5 and as Z otherwise. If that
  yields two channel or two Z axes, an error asks for ``images.axes``.
* The ``axes`` argument (e.g. ``"CYX"``, ``"ZYX"``, ``"TZCYX"``; letters from
  ``ZYXCST``) replaces the file's axes entirely and bypasses the rules above.

Files that tifffile cannot decode, whose data runs past the end of the file, or
for which tifffile logs an error (e.g. a page chain broken by truncation) raise
:class:`~opsef_opt.io.errors.ImageReadError`; a damaged file is rejected rather
than read as a silently shorter stack.
"""
from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from os import PathLike
from pathlib import Path

import numpy as np
import tifffile

from ._select import check_channel, z_slice
from .errors import ImageReadError, unreadable
from .image import Image

__all__ = ["read_tiff"]

#: Length of an unknown axis up to which it is read as channels (else Z).
MAX_UNKNOWN_AS_CHANNELS = 5

_KNOWN = "ZYXCST"
# photometric values whose samples are colours: RGB (2) and YCbCr (6, decoded to RGB)
_COLOUR_PHOTOMETRIC = (2, 6)


class _ErrorLog(logging.Handler):
    """Collects ERROR records that tifffile logs in the current thread."""

    def __init__(self) -> None:
        super().__init__(level=logging.ERROR)
        self.thread = threading.get_ident()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread == self.thread:
            self.messages.append(record.getMessage())


@contextmanager
def _tifffile_errors() -> Iterator[list[str]]:
    # tifffile reports some corruption (e.g. a truncated page chain) only by
    # logging and then returns fewer pages; capture those logs to fail loudly.
    logger = logging.getLogger("tifffile")
    handler = _ErrorLog()
    logger.addHandler(handler)
    try:
        yield handler.messages
    finally:
        logger.removeHandler(handler)


def _check_extent(series: tifffile.TiffPageSeries, size: int) -> None:
    """Raise ``ValueError`` if the series' pixel data ends past the file end."""
    if series.dataoffset is not None:
        if series.dataoffset + series.nbytes > size:
            raise ValueError(f"file is truncated (image data needs {series.dataoffset + series.nbytes} "
                             f"bytes, file has {size})")
        return
    for page in series.pages:
        if page is None:
            continue
        for offset, count in zip(page.dataoffsets, page.databytecounts):
            if offset + count > size:
                raise ValueError(f"file is truncated (page data ends at byte {offset + count}, "
                                 f"file has {size})")


def _map_axes(
    file_axes: str, shape: tuple[int, ...], colour: bool, axes: str | None, where: str
) -> tuple[str, str]:
    """Map each array axis to one of ``Z Y X C S T`` or ``-`` (size-1, dropped).

    Returns the mapped string and where it came from (``"argument"``,
    ``"file"`` or ``"rule"``).
    """
    if axes is not None:
        mapped = axes.upper()
        if len(mapped) != len(shape) or set(mapped) - set(_KNOWN):
            raise ImageReadError(
                f"{where}: images.axes={axes!r} does not fit the data of shape {shape} "
                f"(file axes {file_axes!r}); give one letter from {_KNOWN} per dimension"
            )
        source = "argument"
        if "S" in mapped and shape[mapped.index("S")] not in (3, 4):
            raise ImageReadError(
                f"{where}: images.axes={axes!r} marks an axis of length "
                f"{shape[mapped.index('S')]} as RGB samples (S needs 3 or 4); use C for channels"
            )
    else:
        letters = []
        source = "file"
        for letter, n in zip(file_axes, shape):
            if letter in "ZYXCT":
                letters.append(letter)
            elif letter == "S":
                letters.append("S" if colour and n in (3, 4) else "C")
            elif n == 1:
                letters.append("-")
            else:
                letters.append("C" if n <= MAX_UNKNOWN_AS_CHANNELS else "Z")
                source = "rule"
        mapped = "".join(letters)
    duplicated = sorted({a for a in mapped if a != "-" and mapped.count(a) > 1})
    if duplicated or "Y" not in mapped or "X" not in mapped:
        problem = f"axis {'/'.join(duplicated)} twice" if duplicated else "no Y and X axes"
        raise ImageReadError(
            f"{where}: data of shape {shape} with file axes {file_axes!r} read as {mapped!r} "
            f"has {problem}; set images.axes (e.g. 'ZCYX') to say what each dimension is"
        )
    return mapped, source


def _take(data: np.ndarray, mapped: str, i: int, index: int) -> tuple[np.ndarray, str]:
    """Index axis ``i`` at ``index`` (a view) and drop its letter."""
    return data[(slice(None),) * i + (index,)], mapped[:i] + mapped[i + 1:]


def _pixel_size(tif: tifffile.TiffFile) -> dict | None:
    """Pixel size in micrometres from ImageJ metadata, if the file states it."""
    ij = tif.imagej_metadata
    if not ij or str(ij.get("unit", "")).lower() not in ("micron", "um", "µm", "\\u00b5m"):
        return None
    tags = tif.pages.first.tags
    size = {}
    for axis, tag in (("y", "YResolution"), ("x", "XResolution")):
        if tag in tags:
            num, den = tags[tag].value
            if num:
                size[axis] = den / num
    if "spacing" in ij:
        size["z"] = float(ij["spacing"])
    return size or None


def read_tiff(
    path: str | PathLike,
    channel: int | None = None,
    axes: str | None = None,
    z: tuple[int, int] | None = None,
) -> Image:
    """Read the first series of a TIFF file as an :class:`Image`.

    Parameters
    ----------
    path : str or PathLike
        The TIFF file.
    channel : int, optional
        Channel to keep when the file has several (non-RGB) channels; required
        then. On an RGB image it selects one colour.
    axes : str, optional
        What each dimension of the stored array is (letters ``ZYXCST``, e.g.
        ``"CYX"``); overrides the axes tifffile reports and the rules in the
        module docstring.
    z : tuple of int, optional
        Half-open ``(start, stop)`` range of Z planes to keep; ``stop`` is
        clipped to the stack depth.

    Returns
    -------
    Image
        ``data`` in the stored dtype with axes ``YX``, ``ZYX``, ``YXC`` or
        ``ZYXC``; ``name`` is the file stem; ``meta`` records the file axes, how
        they were interpreted, the channel / Z range / time point chosen and
        the pixel size when ImageJ metadata gives it.

    Raises
    ------
    ImageReadError
        If the file cannot be decoded, or the settings do not fit it.
    """
    p = Path(path)
    where = f"image {p}"
    if not p.is_file():
        raise unreadable(p, "file not found")
    try:
        with _tifffile_errors() as logged, tifffile.TiffFile(p) as tif:
            series = tif.series[0]
            _check_extent(series, os.path.getsize(p))
            data = series.asarray()  # JPEG/LZW/... decoded by imagecodecs (a dependency)
            file_axes = series.axes
            colour = tif.pages.first.photometric in _COLOUR_PHOTOMETRIC
            pixel_size = _pixel_size(tif)
            n_series = len(tif.series)
        if logged:
            raise ValueError("; ".join(logged))
    except ImageReadError:
        raise
    except Exception as exc:  # any decoding failure is reported the same way
        raise unreadable(p, exc) from exc

    mapped, source = _map_axes(file_axes, data.shape, colour, axes, where)
    meta: dict = {"file_axes": file_axes, "file_shape": data.shape, "axes_from": source,
                  "read_as": mapped, "n_series": n_series}

    # reduce T (first time point) and size-1 unknown axes, one axis at a time
    for letter in ("T", "-"):
        while letter in mapped:
            i = mapped.index(letter)
            if letter == "T":
                meta.update(t=0, n_t=data.shape[i])
            data, mapped = _take(data, mapped, i, 0)

    channel_axis = "C" if "C" in mapped else ("S" if channel is not None and "S" in mapped else None)
    if channel_axis is not None:
        i = mapped.index(channel_axis)
        meta["n_channels"] = data.shape[i]
        meta["channel"] = check_channel(data.shape[i], channel, where)
        data, mapped = _take(data, mapped, i, meta["channel"])
    elif channel is not None:
        meta["channel"] = check_channel(1, channel, where)

    if "Z" in mapped:
        i = mapped.index("Z")
        sl = z_slice(data.shape[i], z, where)
        meta.update(z=(sl.start, sl.stop), n_z=data.shape[i])
        data = data[(slice(None),) * i + (sl,)]
    else:
        z_slice(1, z, where)  # a 2D image is one plane: validate the range only

    order = [mapped.index(a) for a in "ZYXS" if a in mapped]
    data = np.ascontiguousarray(data.transpose(order))
    out_axes = "".join(a for a in "ZYXS" if a in mapped).replace("S", "C")
    if pixel_size:
        meta["pixel_size_um"] = pixel_size
    return Image(name=p.stem, data=data, axes=out_axes, source=str(p), meta=meta)
