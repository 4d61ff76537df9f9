"""Instance matching at an IoU threshold, shared by the consensus and stability proxies.

For a threshold of at least 0.5 the optimal one-to-one assignment that
:func:`stardist.matching.matching` computes is determined by the overlapping
pairs alone: IoU(a, b) >= 0.5 implies that ``b`` covers at least half of
``a`` and vice versa, so above 0.5 every object has at most one candidate
partner and the matched pairs are exactly the pairs whose IoU passes. The
pairs come from a sparse overlap table (one pass over the pixels,
:mod:`opsef_opt.score.matching`, shared with the ground-truth metrics), which gives StarDist's numbers (the tests check it) without its dense
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

from opsef_opt.score.matching import match_counts
from opsef_opt.score.matching import relabel as _relabel
from opsef_opt.score.proxies._derived import derived

__all__ = ["Match", "match_instances", "relabel", "object_areas"]


def relabel(labels: np.ndarray) -> tuple[np.ndarray, int]:
    """:func:`opsef_opt.score.matching.relabel`, once per label array (a candidate's proxies share it)."""
    if isinstance(labels, np.ndarray):
        return derived(labels, "relabel", _relabel, keep="labels")
    return _relabel(labels)


def object_areas(labels: np.ndarray) -> np.ndarray:
    """Pixel count of every id 0..max of ``labels``, once per label array."""
    return derived(labels, "areas", _areas, keep="labels")


def _areas(labels: np.ndarray) -> np.ndarray:
    areas = np.bincount(labels.ravel())
    areas.setflags(write=False)  # shared by the proxies: nobody may change it
    return areas


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


def match_instances(ref: np.ndarray, pred: np.ndarray, thresh: float = 0.5) -> Match:
    """Match the objects of ``pred`` to those of ``ref`` one-to-one at IoU >= ``thresh``.

    Parameters
    ----------
    ref, pred : integer label images of the same shape (0 = background), any dimension.
    thresh : float
        IoU threshold (below 0.5 StarDist's assignment is used).

    Returns
    -------
    Match
        ``tp``, the object counts and the mean IoU of the matched pairs.
    """
    c = match_counts(ref, pred, [thresh])[float(thresh)]
    return Match(c.tp, c.n_true, c.n_pred, c.mean_matched_score if c.tp else float("nan"))
