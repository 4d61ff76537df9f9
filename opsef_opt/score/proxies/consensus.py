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

Families: one vote per group of near-duplicates
-----------------------------------------------
A search space holds many near-duplicates (the same model with small
preprocessing changes, the same preprocessing with small threshold changes);
counted one by one they outvote a distinct pipeline, and a crowd of similar
*bad* candidates wins the majority (measured: 9 CLAHE variants topping an H&E
grid; the classical family beating a better U-Net on a dense set). The pool
(:class:`opsef_opt.search.pool.ConsensusPool`) therefore groups candidates into
*families* from their label images alone, without knowing what their
configurations mean: :func:`object_agreement` is the object-level F1 of two
candidates (objects matched by centroid and size, O(objects) per pair after
an O(pixels) :func:`object_signature` per candidate), and a candidate whose
agreement with a family's first (most plausible) member is at least
:data:`FAMILY_AGREEMENT` joins that family. Each family has one vote in
total, shared equally among its voting members (an integer-weighted
:class:`ConsensusAccumulator`), so the family's vote is its members' average
opinion. A candidate never votes for itself; its near-duplicates keep their
share (when the good pipelines converge on the truth they *are* each other's
near-duplicates: excluding the whole family would score them against the
diverse, worse rest, which measured worse on every dataset here).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
from scipy import ndimage as ndi
from scipy.spatial import cKDTree

from opsef_opt.params import Param
from opsef_opt.score.proxies._match import match_instances
from opsef_opt.score.registry import ImageResult, register_proxy

__all__ = ["ConsensusAccumulator", "ObjectSignature", "consensus_labels", "consensus_score", "object_agreement",
           "object_signature"]

#: consensus components smaller than this are dropped (a few pixels: the
#: ragged rim where half of the pool extends an object's border)
MIN_SIZE = 5


#: two objects of different candidates are the same object when their centroids are closer than this share
#: of the smaller one's equivalent radius and ...
SAME_OBJECT_OFFSET = 0.3
#: ... the smaller one has at least this share of the larger one's area (offset 0.3 r alone allows IoU down
#: to 0.68 for equal discs, this ratio alone IoU down to 0.7 for concentric ones: both together is "the same
#: nucleus, boundary moved by about a pixel", the level at which the consensus proxy matches objects)
SAME_OBJECT_AREA_RATIO = 0.7
#: candidates whose object agreement (F1 of coinciding objects) is at least this are near-duplicates: one
#: family, one vote. "Near-duplicate" means most objects coincide: the a-priori range is 0.8 (four objects
#: in five) to 0.95. Chosen jointly with the proxy weights by leave-one-dataset-out over {0.8, 0.9, 0.95}
#: on the six GT sets of ``bench/proxy_validity.py`` (60 candidates each, tiny StarDist/Cellpose models
#: included): 0.9 in five of six folds (0.95 once), and on all six; held out rho 0.80, regret 0.081 against
#: 0.70 / 0.090 with 0.8 fixed. At 0.8 a pool of few objects (MitoCheck: 7 nuclei) is one family (5 of 7
#: nuclei found is "agreement" 0.83), so no consensus is defined there at all; 0.9 keeps two missed nuclei
#: apart (see README, Benchmarks).
FAMILY_AGREEMENT = 0.9
#: a family's total vote in a weighted accumulator, shared among its voting members (fixed point: 2**16)
WEIGHT_UNIT = 1 << 16


@dataclass
class ObjectSignature:
    """Centroids and areas of a label image's objects: what :func:`object_agreement` compares."""

    centroids: np.ndarray  # (n, ndim) float64
    areas: np.ndarray  # (n,) float64
    _tree: cKDTree | None = field(default=None, repr=False, compare=False)

    @property
    def n(self) -> int:
        return int(self.areas.size)

    @property
    def median_area(self) -> float:
        """Median object area in pixels (NaN without objects)."""
        return float(np.median(self.areas)) if self.areas.size else float("nan")

    def tree(self) -> cKDTree:
        if self._tree is None:
            self._tree = cKDTree(self.centroids)
        return self._tree


def object_signature(labels: np.ndarray) -> ObjectSignature:
    """Centroid and area of every object of a label image (0 = background); O(pixels)."""
    lab = np.asarray(labels)
    flat = lab.ravel()
    top = int(flat.max(initial=0))
    if top == 0:
        return ObjectSignature(np.zeros((0, lab.ndim)), np.zeros(0))
    fg = np.flatnonzero(flat)
    ids = flat[fg].astype(np.intp, copy=False)
    areas = np.bincount(ids, minlength=top + 1).astype(np.float64)
    present = np.flatnonzero(areas[1:]) + 1
    cents = [np.bincount(ids, weights=c, minlength=top + 1)[present] / areas[present]
             for c in np.unravel_index(fg, lab.shape)]
    return ObjectSignature(np.stack(cents, axis=1), areas[present])


def _radius(areas: np.ndarray, ndim: int) -> np.ndarray:
    """Radius of the disc (ball) of the same area (volume)."""
    if ndim == 2:
        return np.sqrt(areas / np.pi)
    if ndim == 3:
        return np.cbrt(areas * 3.0 / (4.0 * np.pi))
    return areas ** (1.0 / max(ndim, 1)) / 2.0


def object_agreement(a: ObjectSignature, b: ObjectSignature) -> float:
    """Object-level F1 of two candidates: ``2 * coinciding pairs / (n_a + n_b)`` (1.0 when both are empty).

    Two objects coincide when each is the other's nearest centroid, their
    centroids are closer than :data:`SAME_OBJECT_OFFSET` of the smaller
    one's equivalent radius and their areas differ by less than
    :data:`SAME_OBJECT_AREA_RATIO`: roughly an IoU match at 0.5-0.7, from
    O(objects log objects) work instead of a pass over the pixels.
    """
    na, nb = a.n, b.n
    if na == 0 or nb == 0:
        return 1.0 if na == nb else 0.0
    dist, j = b.tree().query(a.centroids)
    back = a.tree().query(b.centroids)[1]
    mutual = back[j] == np.arange(na)
    small = np.minimum(a.areas, b.areas[j])
    big = np.maximum(a.areas, b.areas[j])
    ndim = a.centroids.shape[1]
    ok = mutual & (dist <= SAME_OBJECT_OFFSET * _radius(small, ndim)) & (small >= SAME_OBJECT_AREA_RATIO * big)
    return 2.0 * int(ok.sum()) / (na + nb)


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
    weighted : bool
        Votes carry integer weights (``add(labels, weight)``): the pool gives
        each family of near-duplicates one vote in total, shared among its
        members in fixed point (see :data:`WEIGHT_UNIT`). Integer weights keep
        adding and withdrawing votes exact, however often the families change.

    Notes
    -----
    Memory: one array for foreground votes plus one per axis for same-object
    votes, independent of the number of candidates: uint16 unweighted (about
    6 bytes per pixel in 2D: 24 MB for 2000x2000; at most 65535 candidates),
    int32 weighted (12 bytes per pixel in 2D; total weight below 2**31, i.e.
    up to 32767 families of weight :data:`WEIGHT_UNIT`).

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

    def __init__(self, shape: Sequence[int], weighted: bool = False) -> None:
        self.shape = tuple(int(s) for s in shape)
        if len(self.shape) < 1:
            raise ValueError("shape must have at least one axis")
        self.weighted = bool(weighted)
        dtype = np.int32 if self.weighted else np.uint16
        self._limit = np.iinfo(dtype).max
        self._fg = np.zeros(self.shape, dtype)
        self._same = [np.zeros(self._edge_shape(ax), dtype) for ax in range(len(self.shape))]
        self._n = 0

    def _edge_shape(self, axis: int) -> tuple[int, ...]:
        s = list(self.shape)
        s[axis] = max(s[axis] - 1, 0)
        return tuple(s)

    @property
    def n(self) -> int:
        """Number of candidates added (weighted: their total weight)."""
        return self._n

    def _check(self, labels: np.ndarray) -> np.ndarray:
        labels = np.asarray(labels)
        if labels.shape != self.shape:
            raise ValueError(f"labels shape {labels.shape} differs from the accumulator's {self.shape}")
        return labels

    def _weight(self, weight: int) -> int:
        if weight != int(weight):
            raise ValueError(f"weights are integers (fixed point), got {weight}")
        weight = int(weight)
        if not self.weighted and weight != 1:
            raise ValueError("an unweighted ConsensusAccumulator counts each candidate once (weighted=True: weights)")
        return weight

    def add(self, labels: np.ndarray, weight: int = 1) -> None:
        """Count the votes of one candidate label image (0 = background), ``weight`` times.

        A negative weight withdraws votes (weighted accumulators only): a
        candidate's weight changes by adding the difference.
        """
        labels = self._check(labels)
        weight = self._weight(weight)
        if self._n + weight > self._limit:
            raise OverflowError(f"ConsensusAccumulator holds a total weight of at most {self._limit}")
        if self._n + weight < 0:
            raise ValueError("more votes withdrawn than were added")
        if not self.weighted:
            self._fg += labels != 0
            for ax, votes in enumerate(self._same):
                votes += _same_object(labels, ax)
        else:
            np.add(self._fg, weight, out=self._fg, where=labels != 0)
            for ax, votes in enumerate(self._same):
                np.add(votes, weight, out=votes, where=_same_object(labels, ax))
        self._n += weight

    def remove(self, labels: np.ndarray, weight: int = 1) -> None:
        """Withdraw the votes of a candidate that was added before (with the same weight)."""
        labels = self._check(labels)
        weight = self._weight(weight)
        if self._n == 0:
            raise ValueError("nothing to remove: no candidate was added")
        if weight > self._n:
            raise ValueError("more votes withdrawn than were added")
        if not self.weighted:
            self._fg -= labels != 0
            for ax, votes in enumerate(self._same):
                votes -= _same_object(labels, ax)
        else:
            np.subtract(self._fg, weight, out=self._fg, where=labels != 0)
            for ax, votes in enumerate(self._same):
                np.subtract(votes, weight, out=votes, where=_same_object(labels, ax))
        self._n -= weight

    def labels(self, exclude: np.ndarray | None = None, quorum: float = 0.5,
               min_size: int = MIN_SIZE, exclude_weight: int = 1) -> np.ndarray:
        """Majority consensus instances of the added candidates.

        Parameters
        ----------
        exclude : label image, optional
            A candidate that was added and must not vote (to score a member
            of the pool against the *others*). Passing one that was not
            added gives meaningless votes.
        quorum : float in [0, 1)
            A pixel (a neighbour pair) needs votes from *more than* this
            share of the voting candidates (weighted: of the voting weight).
        min_size : int
            Consensus objects with fewer pixels are dropped.
        exclude_weight : int
            The weight ``exclude`` was added with (weighted accumulators).

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
        w = self._weight(exclude_weight) if exclude is not None else 0
        n = self._n - w
        if n <= 0:
            raise ValueError("no candidate votes: add candidates before asking for their consensus")
        need = int(np.floor(quorum * n)) + 1  # votes > quorum * n
        if exclude is None:
            fg = self._fg >= need
            joins = [votes >= need for votes in self._same]
        elif not self.weighted:
            exclude = self._check(exclude)
            fg = self._fg >= need + (exclude != 0)
            joins = [votes >= need + _same_object(exclude, ax) for ax, votes in enumerate(self._same)]
        else:
            exclude = self._check(exclude)
            fg = self._fg >= self._bar(need, w, exclude != 0)
            joins = [votes >= self._bar(need, w, _same_object(exclude, ax)) for ax, votes in enumerate(self._same)]
        return _components(fg, joins, min_size)

    def _bar(self, need: int, weight: int, voted: np.ndarray) -> np.ndarray:
        """Votes a pixel needs: ``need``, plus ``weight`` where the excluded candidate voted (never overflows:
        ``need + weight <= n``, within the accumulator's integer type)."""
        bar = np.full(voted.shape, need, self._fg.dtype)
        np.add(bar, weight, out=bar, where=voted)
        return bar

    def __repr__(self) -> str:
        return f"ConsensusAccumulator(shape={self.shape}, n={self._n}{', weighted' if self.weighted else ''})"


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
