"""Consensus proxy: agreement of a candidate with the other candidate pipelines.

Why it tracks quality: the failures of different pipelines are mostly
uncorrelated (one threshold merges touching nuclei, another splits them, a
third picks up background texture), while the true objects are what most
reasonable pipelines find. The per-pixel majority of the candidate pool is
therefore closer to the truth than a typical candidate, and a candidate's F1
against it estimates its F1 against the truth. It fails when the pool
shares a systematic error (e.g. every candidate is a threshold that merges
the same pairs), which is why it is one proxy among several.

The consensus is built from vote counts, O(pixels) memory and time:

* a pixel is foreground when more than ``quorum`` of the candidates say so;
* two neighbouring foreground pixels (along any axis) belong to the same
  consensus object when more than ``quorum`` of the candidates put them in
  the same object (both nonzero, equal id);
* consensus objects are the connected components of that graph; components
  of fewer than ``min_size`` pixels are dropped.

Label ids differ between candidates, so votes are counted on pixel *pairs*
("same object or not"), which needs no matching of ids across candidates.
Works for 2D and 3D labels alike.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage as ndi

from opsef_opt.params import Param
from opsef_opt.score.proxies._match import match_instances
from opsef_opt.score.registry import ImageResult, register_proxy

__all__ = ["ConsensusAccumulator", "consensus_labels", "consensus_score"]

#: consensus components smaller than this are dropped (a few pixels: the
#: ragged rim where half of the pool extends an object's border)
MIN_SIZE = 5


def _same_object(labels: np.ndarray, axis: int) -> np.ndarray:
    """Bool array, one shorter along ``axis``: pixel and its next neighbour are in the same object."""
    lo = labels[_cut(labels.ndim, axis, 0)]
    hi = labels[_cut(labels.ndim, axis, 1)]
    return (lo == hi) & (lo != 0)


def _cut(ndim: int, axis: int, start: int) -> tuple[slice, ...]:
    """Slices selecting elements ``start .. start + n - 2`` along ``axis``."""
    sl = [slice(None)] * ndim
    sl[axis] = slice(start, None) if start else slice(None, -1)
    return tuple(sl)


class ConsensusAccumulator:
    """Per-pixel vote counts of candidate label images, and their majority instances.

    Parameters
    ----------
    shape : tuple of int
        Shape of the label images (2D or 3D).

    Notes
    -----
    Memory: one uint16 array for foreground votes plus one per axis for
    same-object votes (about 6 bytes per pixel in 2D: 24 MB for 2000x2000),
    independent of the number of candidates (at most 65535).

    Examples
    --------
    >>> a = np.zeros((8, 8), np.int32); a[1:4, 1:7] = 1
    >>> b = a.copy(); b[1:4, 4:7] = 2          # b splits the object
    >>> acc = ConsensusAccumulator(a.shape)
    >>> for lab in (a, a, b):
    ...     acc.add(lab)
    >>> int(acc.labels().max())                 # two of three keep it whole
    1
    """

    def __init__(self, shape: Sequence[int]) -> None:
        self.shape = tuple(int(s) for s in shape)
        if len(self.shape) < 1:
            raise ValueError("shape must have at least one axis")
        self._fg = np.zeros(self.shape, np.uint16)
        self._same = [np.zeros(self._edge_shape(ax), np.uint16) for ax in range(len(self.shape))]
        self._n = 0

    def _edge_shape(self, axis: int) -> tuple[int, ...]:
        s = list(self.shape)
        s[axis] = max(s[axis] - 1, 0)
        return tuple(s)

    @property
    def n(self) -> int:
        """Number of candidates added."""
        return self._n

    def _check(self, labels: np.ndarray) -> np.ndarray:
        labels = np.asarray(labels)
        if labels.shape != self.shape:
            raise ValueError(f"labels shape {labels.shape} differs from the accumulator's {self.shape}")
        return labels

    def add(self, labels: np.ndarray) -> None:
        """Count the votes of one candidate label image (0 = background)."""
        labels = self._check(labels)
        if self._n >= np.iinfo(np.uint16).max:
            raise OverflowError("ConsensusAccumulator holds at most 65535 candidates")
        self._fg += labels != 0
        for ax, votes in enumerate(self._same):
            votes += _same_object(labels, ax)
        self._n += 1

    def remove(self, labels: np.ndarray) -> None:
        """Withdraw the votes of a candidate that was added before."""
        labels = self._check(labels)
        if self._n == 0:
            raise ValueError("nothing to remove: no candidate was added")
        self._fg -= labels != 0
        for ax, votes in enumerate(self._same):
            votes -= _same_object(labels, ax)
        self._n -= 1

    def labels(self, exclude: np.ndarray | None = None, quorum: float = 0.5,
               min_size: int = MIN_SIZE) -> np.ndarray:
        """Majority consensus instances of the added candidates.

        Parameters
        ----------
        exclude : label image, optional
            A candidate that was added and must not vote (to score a member
            of the pool against the *others*). Passing one that was not
            added gives meaningless votes.
        quorum : float in [0, 1)
            A pixel (a neighbour pair) needs votes from *more than* this
            share of the voting candidates.
        min_size : int
            Consensus objects with fewer pixels are dropped.

        Returns
        -------
        int32 label image, objects 1..n.

        Raises
        ------
        ValueError
            When no candidate votes (none added, or only the excluded one).
        """
        if not 0 <= quorum < 1:
            raise ValueError(f"quorum must be in [0, 1), got {quorum}")
        n = self._n - (exclude is not None)
        if n <= 0:
            raise ValueError("no candidate votes: add candidates before asking for their consensus")
        need = int(np.floor(quorum * n)) + 1  # votes > quorum * n
        if exclude is None:
            fg = self._fg >= need
            joins = [votes >= need for votes in self._same]
        else:
            exclude = self._check(exclude)
            fg = self._fg >= need + (exclude != 0)
            joins = [votes >= need + _same_object(exclude, ax) for ax, votes in enumerate(self._same)]
        return _components(fg, joins, min_size)

    def __repr__(self) -> str:
        return f"ConsensusAccumulator(shape={self.shape}, n={self._n})"


def _components(fg: np.ndarray, joins: list[np.ndarray], min_size: int) -> np.ndarray:
    """Connected components of the pixel graph (nodes ``fg``, edges ``joins`` along each axis).

    The graph is drawn on a grid of twice the resolution, where even cells
    are pixels and the cells between two pixels are their edges; a plain
    face-connected labelling of that grid is the graph's components.
    """
    ndim = fg.ndim
    grid = np.zeros(tuple(max(2 * s - 1, 0) for s in fg.shape), bool)
    even = (slice(None, None, 2),) * ndim
    grid[even] = fg
    for ax, edge in enumerate(joins):
        sl = list(even)
        sl[ax] = slice(1, None, 2)
        grid[tuple(sl)] = edge & fg[_cut(ndim, ax, 0)] & fg[_cut(ndim, ax, 1)]
    comp, n = ndi.label(grid)
    labels = comp[even]
    if n == 0:
        return labels.astype(np.int32)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    keep = sizes >= max(int(min_size), 1)
    keep[0] = False
    lut = np.zeros(n + 1, np.int32)
    lut[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
    return lut[labels]


def consensus_labels(candidates: Sequence[np.ndarray], quorum: float = 0.5,
                     min_size: int = MIN_SIZE) -> np.ndarray:
    """Majority consensus instances of several candidate label images (see :class:`ConsensusAccumulator`)."""
    candidates = list(candidates)
    if not candidates:
        raise ValueError("consensus_labels needs at least one candidate")
    acc = ConsensusAccumulator(np.shape(candidates[0]))
    for lab in candidates:
        acc.add(lab)
    return acc.labels(quorum=quorum, min_size=min_size)


@register_proxy(
    "consensus", weight=0.5,  # see "Default weights" in __init__
    params=[Param("iou", "float", 0.5, low=0.5, high=0.95, help="IoU threshold for matching objects")],
)
def consensus_score(result: ImageResult, iou: float = 0.5) -> dict[str, float]:
    """F1 of the labels against the consensus of the other candidate pipelines.

    Value: F1 at ``iou`` of ``result.labels`` against ``result.consensus``
    (NaN when there is no consensus, 0 when the labels are empty).

    Details
    -------
    ``consensus.iou``
        mean IoU of the matched objects (delineation agreement).
    ``consensus.count_ratio``
        ``log2((n_objects + 1) / (n_consensus_objects + 1))``, signed: > 0
        means more objects than the consensus (over-segmentation), < 0 fewer
        (under-segmentation). A feature for the over/under classifier, not a
        score in [0, 1].
    """
    nan = float("nan")
    if result.consensus is None:
        return {"consensus": nan, "consensus.iou": nan, "consensus.count_ratio": nan}
    m = match_instances(result.consensus, result.labels, thresh=iou)
    ratio = float(np.log2((m.n_pred + 1) / (m.n_ref + 1)))
    if m.n_pred == 0:
        return {"consensus": 0.0, "consensus.iou": 0.0, "consensus.count_ratio": ratio}
    return {"consensus": m.f1, "consensus.iou": m.mean_iou if m.tp else 0.0, "consensus.count_ratio": ratio}
