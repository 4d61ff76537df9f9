"""Keep the objects whose measurements lie in given ranges (OpSeF's object filter).

Both halves are returned, so a user can see what was dropped and why
(``removed_by``), and ``keep_labels`` turns the kept ids back into a label
image for the exports.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import pandas as pd

__all__ = ["filter_objects", "keep_labels"]


def _filterable(table: pd.DataFrame) -> list[str]:
    return [c for c in table.columns if c != "label" and pd.api.types.is_numeric_dtype(table[c])]


def filter_objects(
    table: pd.DataFrame,
    ranges: Mapping[str, tuple[float | None, float | None]],
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split ``table`` into (kept, removed) by inclusive ranges ``{property: (low, high)}``.

    ``None`` leaves a side open, e.g. ``{"area": (30, None), "circularity": (0.6, 1)}``.
    Any numeric column but ``label`` can be filtered (see
    ``opsef_opt.post.props.PROPERTY_NAMES``, plus second-channel columns).
    A NaN measurement fails every bound set on it (an object that cannot
    be measured cannot be shown to be in range). ``removed`` has an extra
    column ``removed_by`` naming the failed bounds, e.g. ``"area<30;circularity<0.6"``.
    Both tables keep the original row order and get a fresh index.
    """
    valid = _filterable(table)
    checks = []
    for name, bounds in ranges.items():
        if name not in valid:
            raise ValueError(f"unknown property {name!r} for filtering; valid: {', '.join(valid)}")
        try:
            low, high = bounds
        except (TypeError, ValueError):
            raise ValueError(f"range for {name!r} must be (low, high) with None for an open side; "
                             f"got {bounds!r}") from None
        if low is not None and high is not None and low > high:
            raise ValueError(f"range for {name!r} is empty: low {low} > high {high}")
        checks.append((name, low, high))
    reasons = [[] for _ in range(len(table))]
    for name, low, high in checks:
        values = table[name].to_numpy(dtype=float)
        nan = np.isnan(values)
        if low is not None:
            for i in np.flatnonzero(nan | (values < low)):
                reasons[i].append(f"{name}<{low:g}")
        if high is not None:
            for i in np.flatnonzero(nan | (values > high)):
                reasons[i].append(f"{name}>{high:g}")
    bad = np.array([bool(r) for r in reasons], dtype=bool)
    kept = table.loc[~bad].reset_index(drop=True)
    removed = table.loc[bad].reset_index(drop=True)
    removed["removed_by"] = pd.Series([";".join(r) for r in reasons if r], dtype=object)
    return kept, removed


def keep_labels(labels: np.ndarray, ids: Iterable[int]) -> np.ndarray:
    """``labels`` with only the objects in ``ids`` (all others set to 0); ids are not renumbered."""
    labels = np.asarray(labels)
    keep = np.unique(np.asarray(list(ids), dtype=np.int64))
    return np.where(np.isin(labels, keep), labels, 0).astype(labels.dtype, copy=False)
