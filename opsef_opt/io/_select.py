"""Validation of the channel / Z-range / time-point choices shared by the readers.

Kept in one place so TIFF and LIF files answer the same settings
(``images.channel``, ``images.z``, ``images.t``) with the same rules and the
same wording.
"""
from __future__ import annotations

from collections.abc import Sequence

from .errors import ImageReadError

__all__ = ["check_channel", "check_index", "z_slice"]


def _describe_channels(n: int, names: Sequence[str] | None) -> str:
    if names and len(names) == n:
        return ", ".join(f"{i}: {name}" for i, name in enumerate(names))
    return ", ".join(str(i) for i in range(n))


def check_channel(
    n: int, channel: int | None, where: str, names: Sequence[str] | None = None
) -> int:
    """Return the channel index to read, or raise a helpful error.

    Parameters
    ----------
    n : int
        Number of channels the image holds.
    channel : int or None
        Requested channel; ``None`` is only accepted when ``n == 1``, because
        silently picking one of several channels would hide a configuration
        mistake.
    where : str
        Names the file (and image) in the message.
    names : sequence of str, optional
        Channel names to list in the message.

    Returns
    -------
    int
        The validated channel index.
    """
    if channel is None:
        if n == 1:
            return 0
        raise ImageReadError(
            f"{where} has {n} channels ({_describe_channels(n, names)}); "
            f"set images.channel to 0..{n - 1}"
        )
    if isinstance(channel, bool) or not isinstance(channel, int) or not 0 <= channel < n:
        raise ImageReadError(
            f"{where}: channel {channel!r} is out of range; available channels: "
            f"{_describe_channels(n, names)} (set images.channel to 0..{n - 1})"
        )
    return channel


def check_index(n: int, value: int, what: str, setting: str, where: str) -> int:
    """Validate a plain index such as a time point or a mosaic tile.

    Parameters
    ----------
    n : int
        Length of the axis.
    value : int
        Requested index.
    what : str
        What the axis holds, e.g. ``"time points"``.
    setting : str
        The setting to name in the message, e.g. ``"images.t"``.
    where : str
        Names the file (and image).

    Returns
    -------
    int
        ``value`` once checked.
    """
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < n:
        raise ImageReadError(
            f"{where}: {setting}={value!r} is out of range; it has {n} {what} "
            f"(set {setting} to 0..{n - 1})"
        )
    return value


def z_slice(nz: int, z: tuple[int, int] | None, where: str) -> slice:
    """Turn ``images.z = (start, stop)`` into a slice over ``nz`` planes.

    ``stop`` is clipped to ``nz`` like Python slicing, so one range can be used
    for a study whose stacks differ in depth; an empty selection is an error.
    A 2D image counts as one plane, so ``(0, k)`` keeps it and ``(1, k)`` fails.

    Parameters
    ----------
    nz : int
        Number of Z planes (1 for a 2D image).
    z : tuple of int or None
        ``(start, stop)``, half-open; ``None`` keeps all planes.
    where : str
        Names the file (and image).

    Returns
    -------
    slice
    """
    if z is None:
        return slice(0, nz)
    try:
        start, stop = (int(v) for v in z)
    except (TypeError, ValueError):
        raise ImageReadError(
            f"{where}: images.z must be a (start, stop) pair of integers, got {z!r}"
        ) from None
    if start < 0 or stop <= start or start >= nz:
        raise ImageReadError(
            f"{where}: z range {tuple(z)} selects no planes; the image has {nz} Z plane(s), "
            f"set images.z to (start, stop) with 0 <= start < {nz} and stop > start"
        )
    return slice(start, min(stop, nz))
