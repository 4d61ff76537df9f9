"""The one exception the readers raise, and helpers that word its messages.

Every reader failure is turned into :class:`ImageReadError` so that a study can
report *which* file failed and *what to do about it* instead of surfacing a
low-level ``ValueError`` from tifffile or readlif.
"""
from __future__ import annotations

from os import PathLike

__all__ = ["ImageReadError", "unreadable"]


class ImageReadError(Exception):
    """An image file could not be read as requested.

    The message always names the file and says what to do (fix a setting such
    as ``images.channel``, or check / remove the file).
    """


def unreadable(path: str | PathLike, reason: object) -> ImageReadError:
    """Build the error for a file that cannot be decoded at all.

    Parameters
    ----------
    path : str or PathLike
        The file that failed.
    reason : object
        What went wrong (usually the original exception); rendered with ``str``.

    Returns
    -------
    ImageReadError
        With the message ``cannot read image <path>: <reason>; check the file
        or remove it from the study``.
    """
    return ImageReadError(
        f"cannot read image {path}: {reason}; check the file or remove it from the study"
    )
