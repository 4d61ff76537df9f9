"""File names for images' outputs: image names may hold '/' (LIF series, tiles, Z blocks).

One mapping for every file or artifact path made from an image name (MLflow
trial artifacts, apply outputs, ImageJ / QuPath exports and the names
re-import looks for) and from a column name (analysis plots). It lives in
:mod:`opsef_opt.io`, which imports nothing of the search, post-processing or
batch layers, so each of them can use it.
"""
from __future__ import annotations

__all__ = ["safe_name"]


def safe_name(name: str) -> str:
    """A file-system safe stem for an image name: '/' becomes '__', other odd characters '_'.

    Letters, digits and ``-_.`` are kept, so the mapping keeps distinct
    names distinct in practice and is stable across runs.

    >>> safe_name("cells.lif/Series 3/z000-009")
    'cells.lif__Series_3__z000-009'
    """
    name = str(name).replace("/", "__")
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
