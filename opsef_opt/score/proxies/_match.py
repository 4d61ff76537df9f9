"""Instance matching at an IoU threshold, shared by the consensus and stability proxies.

For a threshold of at least 0.5 the optimal one-to-one assignment that
:func:`stardist.matching.matching` computes is determined by the overlapping
pairs alone: IoU(a, b) >= 0.5 implies that ``b`` covers at least half of
``a`` and vice versa, so above 0.5 every object has at most one candidate
partner and the matched pairs are exactly the pairs whose IoU passes. This
module computes those pairs from a sparse overlap table (one pass over the
pixels), which gives StarDist's numbers (the tests check it) without its dense
``n_true x n_pred`` overlap matrix and Hungarian assignment: those cost 0.75 s
for a salt-noise candidate with 13 000 one-pixel objects on a 512x512 image
and O(n^2) memory for images with thousands of nuclei, and the proxies match
every candidate of every image. Ties at exactly 0.5 (possible for objects of
a few pixels) are resolved by a maximum bipartite matching; thresholds below
0.5 are delegated to StarDist.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import sparse
from scipy.sparse.csgraph import maximum_bipartite_matching

__all__ = ["Match", "match_instances", "relabel"]


@dataclass(frozen=True)
class Match:
    """Counts of a one-to-one matching between reference and predicted objects."""

    tp: int
    n_ref: int
    n_pred: int
    mean_iou: float  # mean IoU of the matched pairs (NaN when none)

    @property
    def f1(self) -> float:
        """``2 tp / (n_ref + n_pred)``, StarDist's F1; 1.0 when both are empty."""
        total = self.n_ref + self.n_pred
        return 1.0 if total == 0 else 2.0 * self.tp / total


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
    lut = np.zeros(top + 1, np.int32)
    n = int(present.sum())
    lut[present] = np.arange(1, n + 1, dtype=np.int32)
    return lut[lab], n


def match_instances(ref: np.ndarray, pred: np.ndarray, thresh: float = 0.5) -> Match:
    """Match the objects of ``pred`` to those of ``ref`` one-to-one at IoU >= ``thresh``.

    Parameters
    ----------
    ref, pred : integer label images of the same shape (0 = background), any dimension.
    thresh : float
        IoU threshold; the sparse path needs ``thresh >= 0.5``.

    Returns
    -------
    Match
        ``tp``, the object counts and the mean IoU of the matched pairs.
    """
    ref = np.asarray(ref)
    pred = np.asarray(pred)
    if ref.shape != pred.shape:
        raise ValueError(f"label shapes differ: {ref.shape} vs {pred.shape}")
    if thresh < 0.5:
        from stardist.matching import matching

        m = matching(relabel(ref)[0], relabel(pred)[0], thresh=thresh)
        return Match(int(m.tp), int(m.n_true), int(m.n_pred),
                     float(m.mean_matched_score) if m.tp else float("nan"))
    a, na = relabel(ref)
    b, nb = relabel(pred)
    if na == 0 or nb == 0:
        return Match(0, na, nb, float("nan"))
    a = a.ravel()
    b = b.ravel()
    area_a = np.bincount(a, minlength=na + 1)
    area_b = np.bincount(b, minlength=nb + 1)
    both = (a > 0) & (b > 0)
    codes = a[both].astype(np.int64) * (nb + 1) + b[both]
    pairs, inter = np.unique(codes, return_counts=True)
    ia, ib = np.divmod(pairs, nb + 1)
    iou = inter / (area_a[ia] + area_b[ib] - inter)
    ok = iou >= thresh
    ia, ib, iou = ia[ok], ib[ok], iou[ok]
    if ia.size and (np.unique(ia).size < ia.size or np.unique(ib).size < ib.size):
        # ties at exactly IoU 0.5: a maximum matching over the candidate pairs
        graph = sparse.csr_matrix((np.ones(ia.size), (ia, ib)), shape=(na + 1, nb + 1))
        partner = maximum_bipartite_matching(graph, perm_type="column")
        chosen = np.flatnonzero(partner >= 0)
        lookup = {(int(i), int(j)): v for i, j, v in zip(ia, ib, iou)}
        iou = np.array([lookup[(int(i), int(partner[i]))] for i in chosen])
    tp = int(iou.size)
    return Match(tp, na, nb, float(iou.mean()) if tp else float("nan"))
