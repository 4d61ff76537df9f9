"""Vectorised region measurements shared by the proxies and the region tables (pure numpy)."""
from __future__ import annotations

import numpy as np

__all__ = ["eccentricity", "inertia_eigvals", "axis_lengths", "perimeter_crofton"]

#: Crofton weights of the 16 configurations of a 2 x 2 window, 4 directions (scikit-image's table)
_CROFTON_4 = np.array([
    0, np.pi / 4 * (1 + 1 / np.sqrt(2)), np.pi / (4 * np.sqrt(2)), np.pi / (2 * np.sqrt(2)),
    0, np.pi / 4 * (1 + 1 / np.sqrt(2)), 0, np.pi / (4 * np.sqrt(2)),
    np.pi / 4, np.pi / 2, np.pi / (4 * np.sqrt(2)), np.pi / (4 * np.sqrt(2)),
    np.pi / 4, np.pi / 2, 0, 0,
])


def inertia_eigvals(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues l1 >= l2 of every object's pixel-coordinate covariance, indexed by label (0..max)."""
    y, x = np.nonzero(labels)
    lab = labels[y, x]
    n = int(labels.max(initial=0)) + 1
    count = np.bincount(lab, minlength=n).astype(float)
    safe = np.maximum(count, 1)
    my, mx = np.bincount(lab, y, n) / safe, np.bincount(lab, x, n) / safe
    dy, dx = y - my[lab], x - mx[lab]
    cyy, cxx, cxy = (np.bincount(lab, w, n) / safe for w in (dy * dy, dx * dx, dy * dx))
    half_trace = (cyy + cxx) / 2
    root = np.sqrt(np.maximum(((cyy - cxx) / 2) ** 2 + cxy**2, 0))
    return half_trace + root, np.maximum(half_trace - root, 0)


def axis_lengths(labels: np.ndarray, ids: np.ndarray | None = None,
                 eigvals: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Major and minor axis lengths (4 * sqrt of the eigenvalues, as scikit-image defines them).

    ``eigvals``: :func:`inertia_eigvals` of ``labels`` when the caller has them already.
    """
    l1, l2 = inertia_eigvals(labels) if eigvals is None else eigvals
    major, minor = 4 * np.sqrt(l1), 4 * np.sqrt(l2)
    return (major[1:], minor[1:]) if ids is None else (major[np.asarray(ids, int)], minor[np.asarray(ids, int)])


def eccentricity(labels: np.ndarray, ids: np.ndarray | None = None,
                 eigvals: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """Eccentricity of each object in ``ids`` (default 1..max), as scikit-image defines it, for all at once.

    From the eigenvalues l1 >= l2 of each object's pixel-coordinate covariance
    (its inertia tensor): sqrt(1 - l2 / l1); 0 for a disc, towards 1 for a line.
    scikit-image computes the same per object in Python, which dominated the
    time to write a region table (30 ms for 50 nuclei vs. < 1 ms here).
    ``eigvals`` as in :func:`axis_lengths`.
    """
    l1, l2 = inertia_eigvals(labels) if eigvals is None else eigvals
    ecc = np.where(l1 > 0, np.sqrt(np.clip(1 - l2 / np.where(l1 > 0, l1, 1), 0, 1)), 0.0)
    return ecc[1:] if ids is None else ecc[np.asarray(ids, dtype=int)]


def perimeter_crofton(labels: np.ndarray, ids: np.ndarray | None = None) -> np.ndarray:
    """Crofton perimeter (4 directions) of each object in ``ids`` (default 1..max), for all at once.

    The same number as scikit-image's ``perimeter_crofton`` of each object's
    own mask: every 2 x 2 window of the zero-padded label image is coded by
    which of its corners hold the object (top-left 8, top-right 2,
    bottom-left 4, bottom-right 1), and the codes' Crofton weights are summed
    per object. Only windows on an outline count (a uniform window weighs
    0). scikit-image does this per object in Python, which made it a third
    of the time of a region table of thousands of nuclei.
    """
    labels = np.asarray(labels)
    n = int(labels.max(initial=0)) + 1
    q = np.pad(labels, 1)
    tl, tr, bl, br = q[:-1, :-1], q[:-1, 1:], q[1:, :-1], q[1:, 1:]
    edge = (tl != tr) | (tl != bl) | (tl != br)
    tl, tr, bl, br = tl[edge], tr[edge], bl[edge], br[edge]
    total = np.zeros(n)
    # each (window, object) pair once: the object is taken from the first corner that holds it
    for corner, first in ((tl, None), (tr, tr != tl), (bl, (bl != tl) & (bl != tr)),
                          (br, (br != tl) & (br != tr) & (br != bl))):
        m = corner > 0 if first is None else first & (corner > 0)
        k = corner[m]
        code = 8 * (tl[m] == k) + 2 * (tr[m] == k) + 4 * (bl[m] == k) + (br[m] == k)
        total += np.bincount(k, weights=_CROFTON_4[code], minlength=n)
    return total[1:] if ids is None else total[np.asarray(ids, dtype=int)]
