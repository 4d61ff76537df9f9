"""Fill the outlines of many ImageJ ROIs into one label image, fast and within a work budget.

An edited ROI archive can hold a hundred thousand ROIs, or a few ROIs stacked
thousands of times over the image; filling them one by one over their
bounding boxes would take hours.  They are filled in bulk instead, by a
vectorised scanline fill whose work grows with the outlines' rows and the
painted pixels, and that work is counted against a budget, so a hostile or
broken archive is refused rather than run.

Rasterisation follows ImageJ: ROI coordinates have (0, 0) at the top-left
corner of the first pixel, and a pixel belongs to a ROI when its centre is
inside the outline; a centre exactly on the outline is inside when the area
just to its right (or, on a horizontal edge, just below it) is, as in
``java.awt``, so ROIs sharing an edge never share a pixel.  Outlines are
filled with the even-odd rule, so the holes of composite ROIs stay holes;
where ROIs overlap, the later ROI wins the shared pixels.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from opsef_opt.export.roi_entries import ReimportError

_BATCH_VERTICES = 1_000_000  # ROIs are rasterised together in batches of about this many vertices
_CHUNK = 4_000_000  # at most about this many row crossings / pixels are held in memory at once


class _Raster:
    """Paints area ROIs into an int32 label image in bulk.

    The outlines of many ROIs are collected and filled together with a vectorised scanline fill:
    for each pixel row, the x where every edge crosses the row's pixel centres is computed, the
    crossings of one ROI are sorted and paired (even-odd rule: composite ROIs keep their holes),
    and the pixels whose centres lie in ``[left, right)`` are set. The work is proportional to
    the outlines' rows plus the painted pixels, never to the image or to bounding boxes times
    vertices, and is counted against a budget (``work_factor`` times the image's pixels, at least
    ``work_min``). Where ROIs overlap the later one wins: every ROI gets its archive number as a
    provisional label and a pixel keeps the largest.
    """

    def __init__(self, shape: tuple[int, int], archive: Path, capacity: int, work_factor: int,
                 work_min: int) -> None:
        self.shape = shape
        self.archive = archive
        self.labels = np.zeros(shape, dtype=np.int32)
        self.names: list[str] = []  # area ROIs in archive order; provisional label = index + 1
        self.areas = np.zeros(capacity, dtype=np.int64)
        self.outside = np.zeros(capacity, dtype=bool)
        self.work_factor, self.work_min = work_factor, work_min
        self.budget = max(work_factor * shape[0] * shape[1], work_min)
        self.work = 0
        self._paths: list[np.ndarray] = []
        self._owners: list[int] = []
        self._pending = 0

    def add(self, name: str, paths: list[np.ndarray]) -> None:
        index = len(self.names)
        self.names.append(name)
        for path in paths:
            if len(path) >= 3:  # fewer vertices enclose no area
                self._paths.append(path)
                self._owners.append(index)
                self._pending += len(path)
        if self._pending >= _BATCH_VERTICES:
            self.flush()

    def _spend(self, amount: int) -> None:
        self.work += int(amount)
        if self.work > self.budget:
            h, w = self.shape
            raise ReimportError(
                f"{self.archive}: its ROIs are too costly to rasterise (more than {self.budget} "
                f"vertices, outline row crossings and painted pixels, the limit for a {h}x{w} image: "
                f"RASTER_WORK_FACTOR = {self.work_factor} times its pixels, at least "
                f"RASTER_WORK_MIN = {self.work_min}); the ROIs overlap each other many times or "
                "have extremely long outlines; refusing to read this archive")

    def flush(self) -> None:
        """Fill the collected outlines."""
        if not self._paths:
            return
        h, w = self.shape
        lengths = np.fromiter((len(p) for p in self._paths), dtype=np.int64, count=len(self._paths))
        points = np.concatenate(self._paths)
        owner = np.repeat(np.asarray(self._owners, dtype=np.int64), lengths)
        self._paths, self._owners, self._pending = [], [], 0
        self._spend(len(points))
        x, y = points[:, 0], points[:, 1]
        self.outside[owner[(x < 0) | (y < 0) | (x > w) | (y > h)]] = True
        # edges: each vertex to the next one of its path, the last back to the first; pixel
        # centres are at integer coordinates after shifting by half a pixel
        starts = np.cumsum(lengths) - lengths
        following = np.arange(1, len(points) + 1)
        following[starts + lengths - 1] = starts
        x0, y0 = x - 0.5, y - 0.5
        x1, y1 = x0[following], y0[following]
        # rows r whose centre line crosses the edge: min(y0, y1) <= r < max(y0, y1) (half-open,
        # so a vertex on a row is counted once and every row has an even number of crossings)
        low = np.clip(np.ceil(np.minimum(y0, y1)), 0, h).astype(np.int64)
        high = np.clip(np.ceil(np.maximum(y0, y1)), 0, h).astype(np.int64)
        keep = np.flatnonzero(high > low)
        if not len(keep):
            return
        x0, y0, low, high, owner = x0[keep], y0[keep], low[keep], high[keep], owner[keep]
        dx, dy = x1[keep] - x0, y1[keep] - y0
        per_row = np.cumsum(np.bincount(low, minlength=h + 1) - np.bincount(high, minlength=h + 1))[:h]
        total = int(per_row.sum())
        self._spend(total)
        # bands of whole rows with at most about _CHUNK crossings each bound the memory
        cumulative = np.cumsum(per_row)
        cuts = np.searchsorted(cumulative, np.arange(_CHUNK, total, _CHUNK), side="right")
        bounds = np.unique(np.concatenate(([0], cuts, [h])))
        flat = self.labels.reshape(-1)
        for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
            sel = np.flatnonzero((low < b) & (high > a)) if len(bounds) > 2 else np.arange(len(low))
            lo, n = np.maximum(low[sel], a), np.minimum(high[sel], b) - np.maximum(low[sel], a)
            count = int(n.sum())
            if not count:
                continue
            edge = np.repeat(sel, n)
            row = np.repeat(lo, n) + np.arange(count) - np.repeat(np.cumsum(n) - n, n)
            # multiply before dividing: exact whenever the crossing is representable
            cross = x0[edge] + (row - y0[edge]) * dx[edge] / dy[edge]
            roi = owner[edge]
            order = np.lexsort((cross, row, roi))
            cross, row, roi = cross[order], row[order][0::2], roi[order][0::2]
            c0 = np.clip(np.ceil(cross[0::2]), 0, w).astype(np.int64)
            c1 = np.clip(np.ceil(cross[1::2]), 0, w).astype(np.int64)
            span = np.maximum(c1 - c0, 0)
            self._spend(int(span.sum()))
            self.areas += np.bincount(roi, weights=span, minlength=len(self.areas)).astype(np.int64)
            self._paint(flat, row * w + c0, span, roi)

    @staticmethod
    def _paint(flat: np.ndarray, first: np.ndarray, span: np.ndarray, roi: np.ndarray) -> None:
        """Set the runs of ``span`` pixels from flat index ``first`` to ``roi + 1`` (the larger wins)."""
        done = np.cumsum(span)
        cuts = np.searchsorted(done, np.arange(_CHUNK, int(done[-1]) if len(done) else 0, _CHUNK),
                               side="right")
        for i, j in zip([0, *cuts.tolist()], [*cuts.tolist(), len(span)]):
            if j <= i:
                continue
            n = span[i:j]
            count = int(n.sum())
            if not count:
                continue
            index = np.repeat(first[i:j] - (np.cumsum(n) - n), n) + np.arange(count)
            np.maximum.at(flat, index, np.repeat((roi[i:j] + 1).astype(np.int32), n))

    def finish(self) -> tuple[np.ndarray, dict[str, list[str]], int]:
        """The label image (ROIs without pixels take no number), names per finding, object count."""
        self.flush()
        n = len(self.names)
        areas, outside = self.areas[:n], self.outside[:n]
        final = np.bincount(self.labels.reshape(-1), minlength=n + 1)[1:n + 1]
        drawn = areas > 0
        labels = self.labels
        if not drawn.all():
            lut = np.zeros(n + 1, dtype=np.int32)
            lut[1:][drawn] = np.arange(1, int(drawn.sum()) + 1, dtype=np.int32)
            labels = lut[labels]
        names = np.asarray(self.names, dtype=object)
        found = {
            "clipped": names[drawn & outside].tolist(),
            "empty": names[~drawn].tolist(),
            "overlapped": names[drawn & (final > 0) & (final < areas)].tolist(),
            "covered": names[drawn & (final == 0)].tolist(),
        }
        return labels, found, int(np.count_nonzero(final))
