"""Pick the reader for a file from its suffix.

A study lists files of mixed formats; :func:`read_image` gives them one entry
point and always returns a list (a LIF file holds several images).
"""
from __future__ import annotations

import inspect
from collections.abc import Callable
from os import PathLike
from pathlib import Path

from .errors import ImageReadError
from .image import Image
from .lif import read_lif
from .tiff import read_tiff

__all__ = ["SUPPORTED_SUFFIXES", "read_image"]

_READERS: dict[str, tuple[str, Callable[..., Image | list[Image]]]] = {
    ".tif": ("TIFF", read_tiff),
    ".tiff": ("TIFF", read_tiff),
    ".lif": ("LIF", read_lif),
}
#: File suffixes :func:`read_image` understands (case-insensitive).
SUPPORTED_SUFFIXES: tuple[str, ...] = tuple(_READERS)


def read_image(path: str | PathLike, **kwargs) -> list[Image]:
    """Read every image a file holds, choosing the reader by suffix.

    Parameters
    ----------
    path : str or PathLike
        A ``.tif``/``.tiff`` file (read with :func:`~opsef_opt.io.read_tiff`)
        or a ``.lif`` file (read with :func:`~opsef_opt.io.read_lif`).
    **kwargs
        Reader options (``channel``, ``z``, ``axes`` for TIFF; ``image``,
        ``channel``, ``z``, ``t``, ``mosaic`` for LIF). Options set to ``None``
        are ignored, so one settings block can serve both formats; any other
        option the reader does not take is an error.

    Returns
    -------
    list of Image
        One image for a TIFF file, one or more for a LIF file.

    Raises
    ------
    ImageReadError
        For an unsupported suffix, an option the format does not take, or any
        reader failure.
    """
    p = Path(path)
    entry = _READERS.get(p.suffix.lower())
    if entry is None:
        raise ImageReadError(
            f"cannot read image {p}: unsupported file type {p.suffix!r}; supported formats: "
            f"TIFF (.tif, .tiff) and Leica LIF (.lif); convert the file or remove it from the study"
        )
    kind, reader = entry
    options = {k: v for k, v in kwargs.items() if v is not None}
    accepted = [a for a in inspect.signature(reader).parameters if a != "path"]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ImageReadError(
            f"cannot read image {p}: option(s) {', '.join(unknown)} do not apply to {kind} files; "
            f"accepted: {', '.join(accepted)}"
        )
    result = reader(p, **options)
    return result if isinstance(result, list) else [result]
