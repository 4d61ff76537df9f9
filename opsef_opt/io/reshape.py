"""Pure functions that change the sampling or split an image into pieces.

They take a numpy array and its axes string (``YX``, ``ZYX``, ``YXC`` or
``ZYXC``, see :data:`opsef_opt.io.image.AXES`) and never modify their input.
Each one works for intensity images and for label images (``labels=True``):
label images are resampled by picking pixels, never by averaging or
interpolating, so every output id is an id of the input.

Only Y and X are ever resampled: Z spacing and colour channels are left alone,
so a stack binned for speed still has the same planes.
"""
from __future__ import annotations

import itertools

import numpy as np
from skimage.transform import rescale

from .image import AXES

__all__ = ["bin_image", "scale_image", "resize", "tile_image", "z_substacks"]


def _check(data: np.ndarray, axes: str) -> None:
    if axes not in AXES:
        raise ValueError(f"axes must be one of {AXES}, got {axes!r}")
    if data.ndim != len(axes):
        raise ValueError(f"data has {data.ndim} dimensions but axes {axes!r} has {len(axes)}")


def _yx_index(ndim: int, axes: str, y: slice, x: slice) -> tuple[slice, ...]:
    index = [slice(None)] * ndim
    index[axes.index("Y")], index[axes.index("X")] = y, x
    return tuple(index)


def bin_image(data: np.ndarray, axes: str, factor: int, labels: bool = False) -> np.ndarray:
    """Reduce Y and X by an integer factor.

    Rows and columns beyond the last whole ``factor`` x ``factor`` block are
    cropped first (so a 101 x 64 image binned by 2 gives 50 x 32), which keeps
    every output pixel a full block and the output shape ``(H // f, W // f)``.

    Parameters
    ----------
    data : numpy.ndarray
        Image with axes ``axes``.
    axes : str
        One of ``YX``, ``ZYX``, ``YXC``, ``ZYXC``.
    factor : int
        Block size, >= 1.
    labels : bool, default False
        ``False``: each output pixel is the mean of its block, as float32 (a
        mean of integers is not an integer). ``True``: stride sampling (the
        top-left pixel of each block, ``data[..., ::f, ::f]`` on Y and X), in
        the input dtype, so label ids are kept and never mixed.

    Returns
    -------
    numpy.ndarray
        New array with the same axes.
    """
    _check(data, axes)
    if isinstance(factor, bool) or not isinstance(factor, (int, np.integer)) or factor < 1:
        raise ValueError(f"factor must be an integer >= 1, got {factor!r}")
    f = int(factor)
    yi, xi = axes.index("Y"), axes.index("X")
    h, w = data.shape[yi] // f * f, data.shape[xi] // f * f
    if h == 0 or w == 0:
        raise ValueError(f"factor {f} is larger than the image ({data.shape[yi]} x {data.shape[xi]})")
    data = data[_yx_index(data.ndim, axes, slice(0, h), slice(0, w))]
    if labels:
        return data[_yx_index(data.ndim, axes, slice(None, None, f), slice(None, None, f))].copy()
    shape: list[int] = []
    for i, n in enumerate(data.shape):
        shape.extend((n // f, f) if i in (yi, xi) else (n,))
    # after splitting Y into (Y/f, f), the block axes sit at yi + 1 and xi + 2
    return data.reshape(shape).mean(axis=(yi + 1, xi + 2), dtype=np.float64).astype(np.float32)


def scale_image(data: np.ndarray, axes: str, factor: float, labels: bool = False) -> np.ndarray:
    """Rescale Y and X by a (possibly fractional) factor.

    Uses :func:`skimage.transform.rescale` with scale 1 on Z and C; the output
    Y/X sizes are ``round(n * factor)``.

    Parameters
    ----------
    data : numpy.ndarray
        Image with axes ``axes``.
    axes : str
        One of ``YX``, ``ZYX``, ``YXC``, ``ZYXC``.
    factor : float
        Scale factor, > 0 (< 1 shrinks).
    labels : bool, default False
        ``False``: linear interpolation in the original value range, with
        Gaussian anti-aliasing when shrinking, returned as float32. ``True``:
        nearest neighbour (``order=0``), no anti-aliasing, input dtype kept, so
        ids are preserved (objects smaller than a pixel may vanish when
        shrinking).

    Returns
    -------
    numpy.ndarray
        New array with the same axes.
    """
    _check(data, axes)
    if not np.isfinite(factor) or factor <= 0:
        raise ValueError(f"factor must be > 0, got {factor!r}")
    scale = tuple(float(factor) if a in "YX" else 1.0 for a in axes)
    if labels:
        out = rescale(data, scale, order=0, preserve_range=True, anti_aliasing=False)
        return out.astype(data.dtype, copy=False)
    out = rescale(data, scale, order=1, preserve_range=True, anti_aliasing=factor < 1)
    return out.astype(np.float32, copy=False)


def resize(data: np.ndarray, axes: str, bin: int = 1, scale: float = 1.0, labels: bool = False) -> np.ndarray:
    """Bin, then rescale, Y and X: the study's ``reshape.bin`` and ``reshape.scale`` (no-ops at 1).

    The one resampling path of search items, apply sources and pipelines, so
    all of them see the same pixels.

    Examples
    --------
    >>> resize(np.ones((8, 6)), "YX", bin=2).shape
    (4, 3)
    """
    if bin > 1:
        data = bin_image(data, axes, bin, labels=labels)
    if scale != 1.0:
        data = scale_image(data, axes, scale, labels=labels)
    return data


def z_substacks(data: np.ndarray, axes: str, size: int) -> list[tuple[int, int, np.ndarray]]:
    """Split a stack into consecutive, non-overlapping blocks of Z planes.

    Parameters
    ----------
    data : numpy.ndarray
        Image with a Z axis (``ZYX`` or ``ZYXC``).
    axes : str
        Its axes.
    size : int
        Planes per block, >= 1. The last block is kept even when it is
        shorter, so no plane is dropped; ``size >= Z`` gives one block.

    Returns
    -------
    list of (int, int, numpy.ndarray)
        ``(start, stop, block)`` with ``block = data[start:stop]`` along Z; the
        blocks are views of ``data`` and concatenate back to it.
    """
    _check(data, axes)
    if "Z" not in axes:
        raise ValueError(f"z_substacks needs a Z axis, got axes {axes!r}")
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise ValueError(f"size must be an integer >= 1, got {size!r}")
    zi, nz = axes.index("Z"), data.shape[axes.index("Z")]
    blocks = []
    for start in range(0, nz, int(size)):
        stop = min(start + int(size), nz)
        blocks.append((start, stop, data[(slice(None),) * zi + (slice(start, stop),)]))
    return blocks


def _starts(n: int, size: int, overlap: int) -> list[int]:
    """Tile origins along one axis: stride ``size - overlap``, last tile end-aligned."""
    if n <= size:
        return [0]
    starts = list(range(0, n - size + 1, size - overlap))
    if starts[-1] + size < n:
        starts.append(n - size)
    return starts


def tile_image(
    data: np.ndarray,
    axes: str,
    size: tuple[int, ...],
    overlap: int | tuple[int, ...] = 0,
) -> list[tuple[tuple[int, ...], np.ndarray]]:
    """Cut an image into tiles that together cover every pixel.

    Tiles start every ``size - overlap`` pixels; the last tile along each axis
    is moved back to end at the image border, so tiles are full size whenever
    the image is at least as large as a tile (that last tile may overlap its
    neighbour by more than ``overlap``). An axis shorter than the tile gives a
    single tile of the whole axis.

    Parameters
    ----------
    data : numpy.ndarray
        Image with axes ``axes``.
    axes : str
        One of ``YX``, ``ZYX``, ``YXC``, ``ZYXC``.
    size : tuple of int
        ``(Y, X)`` to tile in the plane (Z and C, if any, are kept whole in
        every tile) or ``(Z, Y, X)`` to tile a stack in 3D.
    overlap : int or tuple of int, default 0
        Overlap between neighbouring tiles, one value for all tiled axes or
        one per axis of ``size``; ``0 <= overlap < size``.

    Returns
    -------
    list of (tuple of int, numpy.ndarray)
        ``(origin, tile)`` in row-major order, ``origin`` in the axes of
        ``size``; each tile is a view ``data[y:y + h, x:x + w]`` (plus Z).
    """
    _check(data, axes)
    size = tuple(int(s) for s in size)
    tiled = {2: "YX", 3: "ZYX"}.get(len(size))
    if tiled is None or not set(tiled) <= set(axes):
        raise ValueError(f"size {size} does not fit axes {axes!r}; give (Y, X) or, for a stack, (Z, Y, X)")
    overlaps = (int(overlap),) * len(size) if np.isscalar(overlap) else tuple(int(o) for o in overlap)
    if len(overlaps) != len(size) or any(s < 1 or not 0 <= o < s for s, o in zip(size, overlaps)):
        raise ValueError(f"need tile size >= 1 and 0 <= overlap < size, got size {size}, overlap {overlap}")
    indices = [axes.index(a) for a in tiled]
    starts = [_starts(data.shape[i], s, o) for i, s, o in zip(indices, size, overlaps)]
    tiles = []
    for origin in itertools.product(*starts):
        index = [slice(None)] * data.ndim
        for i, start, s in zip(indices, origin, size):
            index[i] = slice(start, start + s)
        tiles.append((tuple(origin), data[tuple(index)]))
    return tiles
