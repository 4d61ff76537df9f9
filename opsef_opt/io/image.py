"""The :class:`Image` record returned by every reader.

Readers hand back the pixels exactly as stored (no dtype cast, no rescaling)
together with a small, fixed set of axis layouts, so that downstream steps only
ever have to deal with ``YX``, ``ZYX``, ``YXC`` (RGB/RGBA) and ``ZYXC``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["AXES", "Image"]

#: The axis layouts a reader may return. ``C`` is only ever an RGB(A) colour
#: axis of length 3 or 4; other channel axes are resolved by selecting one
#: channel when reading.
AXES: tuple[str, ...] = ("YX", "ZYX", "YXC", "ZYXC")


@dataclass
class Image:
    """One image as read from a file.

    Attributes
    ----------
    name : str
        Identifies the image within a study: the file stem for TIFF,
        ``"<stem>/<lif image name>"`` for LIF, with ``"/m<k>"`` appended for the
        tiles of a LIF mosaic.
    data : numpy.ndarray
        Pixels in their original dtype, never cast or rescaled.
    axes : str
        One of :data:`AXES`; ``len(axes) == data.ndim``.
    source : str
        Path of the file the image came from.
    meta : dict
        Reader-specific facts, e.g. pixel sizes when known, the LIF image index,
        the channel chosen.
    """

    name: str
    data: np.ndarray
    axes: str
    source: str
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Fail early: an Image with a wrong axes string would silently break
        # every reshape / tiling step downstream.
        if self.axes not in AXES:
            raise ValueError(f"axes must be one of {AXES}, got {self.axes!r}")
        if self.data.ndim != len(self.axes):
            raise ValueError(
                f"data has {self.data.ndim} dimensions but axes {self.axes!r} has {len(self.axes)}"
            )
        if "C" in self.axes and self.data.shape[-1] not in (3, 4):
            raise ValueError(f"a C axis must hold 3 or 4 colours, got {self.data.shape[-1]}")
