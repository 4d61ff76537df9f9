"""Segment large images in overlapping tiles and stitch them into one label image.

Why and how
-----------
A model sees one *window* at a time: the tile's *core* grown by ``overlap``
pixels on each side (clipped to the image). The cores partition the image,
so every object is kept by exactly one tile: the tile whose core holds the
object's centroid (:func:`keep_core`). Objects are segmented with context on
all sides, and those cut by a window border are -- as long as they are
smaller than the overlap -- kept by a neighbouring tile that sees them whole.

:class:`Stitcher` then pastes each tile's kept objects into one label image
with new global ids (1..N over the whole image); pixels already owned by an
earlier tile stay with it ("first wins"), and an object that loses half or
more of its pixels that way is a duplicate and is dropped. The output may be
a numpy memmap: only window slices are ever read or written.

Choosing ``overlap``
--------------------
``overlap`` must exceed the diameter of the largest object: an object wider
than the overlap can be cut by a window border *and* have its centroid in
that window's core, and is then kept truncated (or kept twice in pieces, or
lost). A sensible default is about twice the typical object diameter (e.g.
``overlap=48`` for nuclei about 20-25 px across, with ``size=256`` or more).
:attr:`StitchReport.truncated` counts the kept objects touching an inner
window border so the caller can warn that the overlap is too small.

Per-tile preprocessing (min/max normalisation, Otsu thresholds,
zero-mean/unit-variance inputs of deep models) uses the statistics of the
window instead of the whole image; callers that need exactly the untiled
result should normalise the whole image once before tiling.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

__all__ = ["TileBox", "StitchReport", "Stitcher", "plan_tiles", "keep_core", "segment_tiled"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TileBox:
    """One tile of an image.

    index : position in row-major order (0, 1, ...).
    core : (y0, y1, x0, x1) half-open, in image coordinates; the cores of all
        tiles partition the image.
    window : the core grown by ``overlap`` on each side and clipped to the
        image; what is read and segmented.
    """

    index: int
    core: tuple[int, int, int, int]
    window: tuple[int, int, int, int]

    @property
    def window_slices(self) -> tuple[slice, slice]:
        """(Y, X) slices of the window in image coordinates."""
        y0, y1, x0, x1 = self.window
        return slice(y0, y1), slice(x0, x1)

    @property
    def window_shape(self) -> tuple[int, int]:
        y0, y1, x0, x1 = self.window
        return y1 - y0, x1 - x0


def _split_axis(length: int, size: int, overlap: int) -> list[tuple[int, int]]:
    """Half-open core intervals partitioning ``[0, length)`` along one axis.

    The fewest tiles whose windows are at most ``size``: a border core may be
    ``size - overlap`` long (its window is clipped on the image side), an inner
    core ``size - 2 * overlap``. The length beyond the two border halos is
    spread evenly, so all windows are about ``size`` and no sliver tile appears.
    """
    if length <= size:
        return [(0, length)]
    step = size - 2 * overlap
    inner = length - 2 * overlap  # > step, because length > size
    n = -(-inner // step)
    cuts = [overlap + (i * inner) // n for i in range(n + 1)]
    cuts[0], cuts[-1] = 0, length
    return list(zip(cuts[:-1], cuts[1:]))


def plan_tiles(shape_yx: tuple[int, int], size: int, overlap: int) -> list[TileBox]:
    """Tiles of an image of shape ``(Y, X)``: windows of at most ``size`` px, halo ``overlap``.

    The core step is ``size - 2 * overlap``; it must be positive. An image not
    larger than ``size`` in both axes gives one tile whose core and window are
    the whole image (so the untiled path runs the same code). Tiles are in
    row-major order; core sizes are spread evenly along each axis.

    Examples
    --------
    >>> [t.core for t in plan_tiles((100, 300), size=128, overlap=16)]
    [(0, 100, 0, 105), (0, 100, 105, 194), (0, 100, 194, 300)]
    >>> [t.window for t in plan_tiles((100, 300), size=128, overlap=16)]
    [(0, 100, 0, 121), (0, 100, 89, 210), (0, 100, 178, 300)]
    """
    h, w = (int(v) for v in shape_yx)
    size, overlap = int(size), int(overlap)
    if h < 1 or w < 1:
        raise ValueError(f"cannot tile an empty image of shape {tuple(shape_yx)}")
    if overlap < 0:
        raise ValueError(f"tile overlap must be >= 0 px, got {overlap}")
    if size - 2 * overlap <= 0:
        raise ValueError(
            f"tile size {size} must be larger than twice the overlap ({overlap}): each tile's core "
            f"would be {size - 2 * overlap} px; increase the tile size or reduce the overlap"
        )
    boxes = []
    for cy0, cy1 in _split_axis(h, size, overlap):
        for cx0, cx1 in _split_axis(w, size, overlap):
            window = (max(cy0 - overlap, 0), min(cy1 + overlap, h), max(cx0 - overlap, 0), min(cx1 + overlap, w))
            boxes.append(TileBox(len(boxes), (cy0, cy1, cx0, cx1), window))
    return boxes


def _object_sums(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """ids present (sorted) and, per id, pixel count and integer sums of the row and column indices."""
    lab = np.asarray(labels)
    flat = lab.ravel()
    fg = np.flatnonzero(flat)
    if fg.size == 0:
        empty = np.zeros(0, np.int64)
        return empty, empty, empty, empty
    ids, inv = np.unique(flat[fg], return_inverse=True)
    rows, cols = np.divmod(fg, lab.shape[1])
    count = np.bincount(inv, minlength=ids.size).astype(np.int64)
    sum_y = np.bincount(inv, weights=rows, minlength=ids.size).round().astype(np.int64)
    sum_x = np.bincount(inv, weights=cols, minlength=ids.size).round().astype(np.int64)
    return ids.astype(np.int64), count, sum_y, sum_x


def keep_core(labels: np.ndarray, box: TileBox) -> np.ndarray:
    """Keep the objects of a window's segmentation whose centroid lies in the tile's core.

    Parameters
    ----------
    labels : (Y, X) int array
        Segmentation of ``box.window`` (window coordinates, 0 = background).
    box : TileBox

    Returns
    -------
    int32 labels of the same shape with only the kept objects, relabelled
    1..k in the order of their original ids.

    Tie rule: pixel ``i`` covers ``[i - 0.5, i + 0.5)``, so a core
    ``[y0, y1)`` holds the centroids ``y0 - 0.5 <= cy < y1 - 0.5`` (likewise
    in x). This is tested exactly in integer arithmetic on the global pixel
    sums, so two tiles that see the same whole object agree on its centroid to
    the last bit and exactly one of them keeps it.
    """
    lab = np.asarray(labels)
    if lab.shape != box.window_shape:
        raise ValueError(
            f"tile {box.index}: labels have shape {lab.shape} but the window {box.window} "
            f"has shape {box.window_shape}; segment exactly the window"
        )
    ids, count, sum_y, sum_x = _object_sums(lab)
    wy0, _, wx0, _ = box.window
    cy0, cy1, cx0, cx1 = box.core
    gy = 2 * (sum_y + count * wy0)  # twice the global sums: centroid*2n
    gx = 2 * (sum_x + count * wx0)
    inside = ((gy >= (2 * cy0 - 1) * count) & (gy < (2 * cy1 - 1) * count)
              & (gx >= (2 * cx0 - 1) * count) & (gx < (2 * cx1 - 1) * count))
    kept_ids = ids[inside]
    out = np.zeros(lab.shape, np.int32)
    if kept_ids.size:
        pos = np.searchsorted(kept_ids, lab)
        pos_clipped = np.minimum(pos, kept_ids.size - 1)
        hit = (lab != 0) & (kept_ids[pos_clipped] == lab)
        out[hit] = pos_clipped[hit] + 1
    return out


@dataclass
class StitchReport:
    """What :meth:`Stitcher.add` did with one tile.

    id_map : tile-local id -> global id, for the objects pasted.
    dropped : tile-local ids dropped as duplicates (>= 50 % of their pixels
        already owned by earlier tiles).
    conflict_px : pixels of this tile's objects that were already owned.
    truncated : pasted objects touching an inner window border (a border that
        is not the image border): they may be cut; if this is not 0, the
        overlap is probably smaller than the largest object.
    """

    id_map: dict[int, int] = field(default_factory=dict)
    dropped: list[int] = field(default_factory=list)
    conflict_px: int = 0
    truncated: int = 0


def _inner_border_ids(kept: np.ndarray, box: TileBox, shape_yx: tuple[int, int]) -> np.ndarray:
    """Ids of ``kept`` touching a window side that is not on the image border."""
    wy0, wy1, wx0, wx1 = box.window
    h, w = shape_yx
    edges = []
    if wy0 > 0:
        edges.append(kept[0, :])
    if wy1 < h:
        edges.append(kept[-1, :])
    if wx0 > 0:
        edges.append(kept[:, 0])
    if wx1 < w:
        edges.append(kept[:, -1])
    if not edges:
        return np.zeros(0, kept.dtype)
    ids = np.unique(np.concatenate(edges))
    return ids[ids != 0]


class Stitcher:
    """Paste the kept objects of tiles into one int32 label image with global ids.

    Parameters
    ----------
    out : (Y, X) int32 array of the whole image's shape, zero-filled. May be a
        numpy memmap: it is never loaded whole, only window slices are read
        and written.

    Ids continue after the last pasted object, so they are contiguous 1..N
    over the image. Overlaps: first wins; an object losing >= 50 % of its
    pixels to earlier tiles is a duplicate and is dropped entirely.
    """

    def __init__(self, out: np.ndarray) -> None:
        if getattr(out, "ndim", None) != 2 or np.dtype(out.dtype) != np.int32:
            raise ValueError(
                f"stitch output must be a 2D int32 array, got {getattr(out, 'ndim', '?')}D "
                f"{getattr(out, 'dtype', type(out).__name__)}; create it with np.zeros(shape, np.int32)"
            )
        self.out = out
        self._n = 0

    @property
    def n_objects(self) -> int:
        """Number of objects pasted so far (= the largest global id)."""
        return self._n

    def add(self, box: TileBox, kept: np.ndarray) -> StitchReport:
        """Paste one tile's kept objects (output of :func:`keep_core`, window coordinates)."""
        kept = np.asarray(kept)
        if kept.shape != box.window_shape:
            raise ValueError(
                f"tile {box.index}: kept labels have shape {kept.shape} but the window {box.window} "
                f"has shape {box.window_shape}"
            )
        wy0, wy1, wx0, wx1 = box.window
        h, w = self.out.shape
        if wy0 < 0 or wx0 < 0 or wy1 > h or wx1 > w:
            raise ValueError(f"tile {box.index}: window {box.window} lies outside the output of shape {(h, w)}")
        report = StitchReport()
        top = int(kept.max()) if kept.size else 0
        if top == 0:
            return report
        sl = box.window_slices
        region = np.array(self.out[sl])  # a copy of just this window
        fg = kept > 0
        taken = fg & (region != 0)
        count = np.bincount(kept[fg], minlength=top + 1)
        lost = np.bincount(kept[taken], minlength=top + 1)
        present = np.flatnonzero(count)
        present = present[present > 0]
        duplicate = 2 * lost[present] >= count[present]
        report.dropped = present[duplicate].tolist()
        keep_ids = present[~duplicate]
        lut = np.zeros(top + 1, np.int32)
        lut[keep_ids] = np.arange(self._n + 1, self._n + 1 + keep_ids.size, dtype=np.int32)
        report.id_map = dict(zip(keep_ids.tolist(), lut[keep_ids].tolist()))
        report.conflict_px = int(taken.sum())
        edge_ids = _inner_border_ids(kept, box, (h, w))
        report.truncated = int(np.isin(edge_ids, keep_ids).sum())
        paste = fg & ~taken
        region[paste] = lut[kept[paste]]
        self.out[sl] = region
        self._n += int(keep_ids.size)
        return report


def segment_tiled(
    image: np.ndarray,
    axes: str,
    segment: Callable[[np.ndarray], np.ndarray],
    size: int,
    overlap: int,
) -> np.ndarray:
    """Segment ``image`` window by window and stitch the result into one label image.

    Parameters
    ----------
    image : array with axes ``axes`` (e.g. ``"YX"`` or ``"YXC"``; Y and X are
        found by name).
    segment : called with each window (same axes as ``image``); returns 2D
        (Y, X) labels of the window.
    size : window size in px (the tile the model sees), e.g. 256-1024.
    overlap : halo in px on each side; must exceed the largest object's
        diameter, about twice the typical diameter is a good default (e.g. 48
        for nuclei of ~20-25 px). A warning is logged when objects are cut.

    Returns
    -------
    (Y, X) int32 labels with ids 1..N.
    """
    arr = np.asarray(image)
    if arr.ndim != len(axes) or "Y" not in axes or "X" not in axes:
        raise ValueError(
            f"image of shape {arr.shape} does not match axes {axes!r}: give one letter per dimension, "
            f"including Y and X"
        )
    iy, ix = axes.index("Y"), axes.index("X")
    shape_yx = (arr.shape[iy], arr.shape[ix])
    stitcher = Stitcher(np.zeros(shape_yx, np.int32))
    truncated = 0
    for box in plan_tiles(shape_yx, size, overlap):
        index = [slice(None)] * arr.ndim
        index[iy], index[ix] = box.window_slices
        labels = np.asarray(segment(arr[tuple(index)]))
        truncated += stitcher.add(box, keep_core(labels, box)).truncated
    if truncated:
        log.warning("%d objects touch an inner tile border and may be cut: overlap %d px is probably smaller "
                    "than the largest object; increase the overlap", truncated, overlap)
    return stitcher.out
