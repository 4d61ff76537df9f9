"""Instance matching at several IoU thresholds from one sparse overlap table: StarDist's numbers, faster.

:func:`stardist.matching.matching` is the reference (an optimal one-to-one
assignment, a pair counting when its IoU reaches the threshold). For
thresholds of at least 0.5 its result is fixed by the overlapping pairs
alone: IoU(a, b) >= 0.5 means ``b`` covers at least half of ``a`` and vice
versa, so every object has at most one partner above the threshold (two only
when both IoUs are exactly 0.5, resolved here by a maximum bipartite
matching; all tied IoUs are 0.5, so the matched IoU sum is the same). The
pairs come from one pass over the pixels, then each threshold is a filter.

Why not call StarDist: its overlap kernel is numba code that compiles on
the first call of every process (1-3 s on a 2-core machine, paid by every
search, worker and notebook before the first trial is scored), and it builds
a dense ``n_true x n_pred`` matrix. ``tests/test_score_gt.py`` checks that
the numbers equal StarDist's; thresholds below 0.5 are delegated to it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import sparse
from scipy.sparse.csgraph import maximum_bipartite_matching

__all__ = ["Counts", "OverlapPairs", "overlap_pairs", "match_counts", "matched_pairs", "relabel"]


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else 0.0


@dataclass(frozen=True)
class Counts:
    """One threshold's matching, with StarDist's field names (``stardist.matching.matching``'s result)."""

    thresh: float
    tp: int
    n_true: int
    n_pred: int
    sum_matched_score: float  # sum of the matched pairs' IoU

    @property
    def fp(self) -> int:
        return self.n_pred - self.tp

    @property
    def fn(self) -> int:
        return self.n_true - self.tp

    @property
    def precision(self) -> float:
        return _ratio(self.tp, self.tp + self.fp)

    @property
    def recall(self) -> float:
        return _ratio(self.tp, self.tp + self.fn)

    @property
    def accuracy(self) -> float:
        return _ratio(self.tp, self.tp + self.fp + self.fn)

    @property
    def f1(self) -> float:
        return _ratio(2 * self.tp, 2 * self.tp + self.fp + self.fn)

    @property
    def mean_matched_score(self) -> float:
        return _ratio(self.sum_matched_score, self.tp)

    @property
    def mean_true_score(self) -> float:
        return _ratio(self.sum_matched_score, self.n_true)

    @property
    def panoptic_quality(self) -> float:
        return _ratio(self.sum_matched_score, self.tp + self.fp / 2 + self.fn / 2)


def relabel(labels: np.ndarray) -> tuple[np.ndarray, int]:
    """Map the ids present in ``labels`` to 1..n (0 stays background), in O(pixels + max id)."""
    lab = np.asarray(labels)
    if lab.size == 0:
        return lab.astype(np.int32), 0
    if lab.dtype.kind not in "iu":
        raise ValueError(f"labels must be integers, got {lab.dtype}")
    top = int(lab.max(initial=0))
    if lab.dtype.kind == "i" and int(lab.min(initial=0)) < 0:
        raise ValueError("labels must be non-negative")
    if top == 0:
        return np.zeros(lab.shape, np.int32), 0
    present = np.bincount(lab.ravel(), minlength=top + 1) > 0
    present[0] = False
    n = int(present.sum())
    if n == top:  # already 1..n: no copy (callers only read it)
        return lab.astype(np.int32, copy=False), n
    lut = np.zeros(top + 1, np.int32)
    lut[present] = np.arange(1, n + 1, dtype=np.int32)
    return lut[lab], n


@dataclass(frozen=True)
class OverlapPairs:
    """Every overlapping (true, predicted) pair of two relabelled images, with its IoU."""

    true_index: np.ndarray  # 1..n_true
    pred_index: np.ndarray  # 1..n_pred
    iou: np.ndarray
    n_true: int
    n_pred: int

    def assign(self, thresh: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The matched pairs at IoU >= ``thresh`` (>= 0.5): true indices, predicted indices, IoUs."""
        if thresh < 0.5:
            raise ValueError(f"the sparse assignment needs thresh >= 0.5, got {thresh}")
        ok = self.iou >= thresh
        ia, ib, iou = self.true_index[ok], self.pred_index[ok], self.iou[ok]
        if ia.size and (np.unique(ia).size < ia.size or np.unique(ib).size < ib.size):
            # ties at exactly IoU 0.5: a maximum matching over the candidate pairs
            graph = sparse.csr_matrix((np.ones(ia.size), (ia, ib)), shape=(self.n_true + 1, self.n_pred + 1))
            partner = maximum_bipartite_matching(graph, perm_type="column")
            chosen = np.flatnonzero(partner >= 0)
            lookup = {(int(i), int(j)): v for i, j, v in zip(ia, ib, iou)}
            ia, ib = chosen, partner[chosen]
            iou = np.array([lookup[(int(i), int(j))] for i, j in zip(ia, ib)])
        return ia, ib, iou

    def counts(self, thresh: float) -> Counts:
        _, _, iou = self.assign(thresh)
        return Counts(float(thresh), int(iou.size), self.n_true, self.n_pred, float(iou.sum()))


def overlap_pairs(ref: np.ndarray, pred: np.ndarray) -> tuple[OverlapPairs, np.ndarray, np.ndarray]:
    """The overlapping pairs of two label images of the same shape, and the relabelled images."""
    ref, pred = np.asarray(ref), np.asarray(pred)
    if ref.shape != pred.shape:
        raise ValueError(f"label shapes differ: {ref.shape} vs {pred.shape}")
    a, na = relabel(ref)
    b, nb = relabel(pred)
    empty = np.zeros(0, np.int64)
    if na == 0 or nb == 0:
        return OverlapPairs(empty, empty, np.zeros(0, np.float32), na, nb), a, b
    fa, fb = a.ravel(), b.ravel()
    area_a = np.bincount(fa, minlength=na + 1)
    area_b = np.bincount(fb, minlength=nb + 1)
    both = (fa > 0) & (fb > 0)
    codes = fa[both].astype(np.int64) * (nb + 1) + fb[both]
    table = (na + 1) * (nb + 1)
    if table <= max(4 * fa.size, 1 << 20):  # a dense count is cheaper than sorting the codes
        per_code = np.bincount(codes, minlength=table)
        pairs = np.flatnonzero(per_code)
        inter = per_code[pairs]
    else:  # thousands of objects on both sides: sort, memory stays O(pixels)
        pairs, inter = np.unique(codes, return_counts=True)
    ia, ib = np.divmod(pairs, nb + 1)
    # float32, as StarDist computes it: the same pairs pass each threshold
    iou = (inter / (area_a[ia] + area_b[ib] - inter)).astype(np.float32)
    return OverlapPairs(ia, ib, iou, na, nb), a, b


def match_counts(truth: np.ndarray, pred: np.ndarray, thresholds: Sequence[float]) -> dict[float, Counts]:
    """StarDist's matching of ``pred`` against ``truth`` at each threshold (one overlap pass for all)."""
    pairs, a, b = overlap_pairs(truth, pred)
    out = {}
    for t in thresholds:
        if t >= 0.5:
            out[float(t)] = pairs.counts(t)
        else:
            from stardist.matching import matching

            m = matching(a, b, thresh=float(t))
            out[float(t)] = Counts(float(t), int(m.tp), int(m.n_true), int(m.n_pred),
                                   float(m.mean_matched_score) * int(m.tp))
    return out


def matched_pairs(truth: np.ndarray, pred: np.ndarray, thresh: float = 0.5) -> list[tuple[int, int]]:
    """The (true id, predicted id) pairs matched at ``thresh``, in the images' own ids."""
    truth, pred = np.asarray(truth), np.asarray(pred)
    if thresh < 0.5:
        from stardist.matching import matching

        m = matching(truth, pred, thresh=thresh, report_matches=True)
        return [tuple(m.matched_pairs[i]) for i in m.matched_tps]
    pairs, _, _ = overlap_pairs(truth, pred)
    ia, ib, _ = pairs.assign(thresh)
    true_ids = np.flatnonzero(np.bincount(truth.ravel()) > 0) if truth.size else np.zeros(0, int)
    pred_ids = np.flatnonzero(np.bincount(pred.ravel()) > 0) if pred.size else np.zeros(0, int)
    true_ids, pred_ids = true_ids[true_ids > 0], pred_ids[pred_ids > 0]
    return [(int(true_ids[i - 1]), int(pred_ids[j - 1])) for i, j in zip(ia, ib)]
