"""Plots of a region table: scatter plots, PCA, t-SNE, optional clustering (OpSeF's analysis step).

Figures are drawn with matplotlib's object API on the Agg canvas (no pyplot,
no display, no global state), so this runs in workers and on servers.
Features are standardised (``StandardScaler``) before PCA, t-SNE and
clustering, so that area (hundreds) does not outweigh circularity (0..1).
Everything random takes ``seed``: the same table gives the same plots.
Too few objects or unusable features skip a plot with a logged reason
instead of failing the run that called it.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from opsef_opt.io.naming import safe_name
from opsef_opt.post.props import INTENSITY_NAMES, SHAPE_NAMES

__all__ = ["analysis_plots", "default_features", "MIN_OBJECTS"]

log = logging.getLogger(__name__)

#: fewer objects than this: no PCA / t-SNE (an embedding of 4 points shows nothing)
MIN_OBJECTS = 5
#: t-SNE embeds at most this many objects (a seeded random sample of larger tables)
TSNE_MAX_OBJECTS = 5000
_CLUSTER_METHODS = ("kmeans", "agglomerative")


def default_features(table: pd.DataFrame) -> list[str]:
    """Shape and intensity columns present in ``table`` (incl. second-channel ``<name>.*_intensity``)."""
    named = [c for c in (*SHAPE_NAMES, *INTENSITY_NAMES) if c in table.columns]
    extra = [c for c in table.columns if "." in str(c) and str(c).endswith("_intensity")]
    return [c for c in (*named, *extra) if pd.api.types.is_numeric_dtype(table[c])]


def _check_columns(table: pd.DataFrame, names: Sequence[str], what: str) -> None:
    numeric = [c for c in table.columns if pd.api.types.is_numeric_dtype(table[c])]
    for name in names:
        if name not in numeric:
            raise ValueError(f"{what}: column {name!r} is not a numeric column of the table; "
                             f"available: {', '.join(map(str, numeric))}")


def _usable(table: pd.DataFrame, features: list[str]) -> tuple[list[str], np.ndarray]:
    """Feature columns and rows free of NaN: columns mostly NaN are dropped, then rows with NaN."""
    data = table[features].astype(float).replace([np.inf, -np.inf], np.nan)
    frac = data.isna().mean() if len(data) else pd.Series(0.0, index=features)
    dropped = [c for c in features if frac[c] > 0.5]
    if dropped:
        log.info("analysis: dropping feature(s) %s (mostly NaN, e.g. no raw image or 3D labels)", dropped)
    kept = [c for c in features if c not in dropped]
    rows = ~data[kept].isna().any(axis=1).to_numpy() if kept else np.zeros(len(data), bool)
    if kept and (~rows).any():
        log.info("analysis: leaving out %d object(s) with NaN in %s", int((~rows).sum()), kept)
    return kept, rows


def _colours(values: pd.Series | None) -> tuple[object, dict | None]:
    """(colour argument for ``scatter``, legend {category: colour} or None for a colour scale)."""
    if values is None:
        return None, None
    if pd.api.types.is_float_dtype(values) and values.nunique() > 10:
        return values.to_numpy(dtype=float), None
    cats = [str(v) for v in sorted(values.unique(), key=lambda v: (str(type(v)), v))]  # stable colours
    lut = {c: colormaps["tab10"](i % 10) for i, c in enumerate(cats)}
    return [lut[v] for v in values.astype(str)], lut


def _plot(path: Path, x: np.ndarray, y: np.ndarray, xlabel: str, ylabel: str, title: str,
          colour: pd.Series | None, colour_name: str | None) -> Path:
    fig = Figure(figsize=(5, 4.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    c, lut = _colours(colour)
    if c is not None and lut is None:
        sc = ax.scatter(x, y, c=c, s=14, cmap="viridis")
        fig.colorbar(sc, ax=ax, label=colour_name)
    else:
        ax.scatter(x, y, c=c if c is not None else "tab:blue", s=14, edgecolors="none")
        if lut:
            for name, col in lut.items():
                ax.scatter([], [], color=col, label=name, s=14)
            ax.legend(title=colour_name, fontsize="small", loc="best")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(f"{title} (n={len(x)})")
    fig.tight_layout()
    fig.savefig(path, format="png")
    return path


def _cluster(scaled: np.ndarray, spec: Mapping, seed: int) -> np.ndarray:
    from sklearn.cluster import AgglomerativeClustering, KMeans  # heavy import, only when used

    method = spec.get("method", "kmeans")
    n = int(spec.get("n_clusters", 3))
    unknown = set(spec) - {"method", "n_clusters"}
    if unknown or method not in _CLUSTER_METHODS or n < 1:
        raise ValueError(f"cluster {dict(spec)!r}: use {{'method': 'kmeans'|'agglomerative', "
                         "'n_clusters': int >= 1}")
    if len(scaled) < n:
        log.info("analysis: %d object(s) for %d clusters; using %d", len(scaled), n, len(scaled))
        n = len(scaled)
    if n <= 1:
        return np.zeros(len(scaled), dtype=np.int64)
    if method == "kmeans":
        model = KMeans(n_clusters=n, n_init=10, random_state=seed)
    else:
        model = AgglomerativeClustering(n_clusters=n)
    return model.fit_predict(scaled).astype(np.int64)


def analysis_plots(
    table: pd.DataFrame,
    folder: str | Path,
    scatter: Sequence[tuple[str, str]] = (("area", "mean_intensity"),),
    features: Sequence[str] | None = None,
    color_by: str | None = "class",
    pca: bool = True,
    tsne: bool = True,
    cluster: Mapping | None = None,
    seed: int = 0,
) -> tuple[list[Path], pd.DataFrame]:
    """Write PNG plots of ``table`` to ``folder``; return (paths written, table with added columns).

    * ``scatter``: one ``scatter_<x>_vs_<y>.png`` per (x, y) column pair
      (skipped with a log line when a column is all NaN, e.g. intensities
      without a raw image).
    * ``features`` (default: ``default_features``) are standardised and used
      for ``pca.png`` (2 components, explained variance on the axes) and
      ``tsne.png`` (perplexity min(30, (n - 1) / 3), PCA initialisation,
      ``random_state=seed``; above ``TSNE_MAX_OBJECTS`` objects a seeded random
      sample of that many, the others get NaN t-SNE coordinates). Both need >= ``MIN_OBJECTS`` objects and >= 2
      usable features, else they are skipped with a logged reason. Feature
      columns more than half NaN are dropped; objects with a NaN in the rest
      are left out (logged).
    * ``cluster``: ``{"method": "kmeans" | "agglomerative", "n_clusters": 3}``
      adds an int column ``cluster`` (-1 for objects left out for NaN);
      k-means uses ``n_init=10`` and ``seed``.
    * Colour: the ``color_by`` column when present (default ``class``, from
      ``classify_objects`` merged on ``label``), else ``cluster`` when
      clustering, else one colour.

    The returned table is a copy of ``table`` with ``cluster`` (when
    clustering) and the plotted coordinates ``pca_1, pca_2`` / ``tsne_1,
    tsne_2`` (NaN where not computed), so they can be saved next to the plots.
    Unknown column names raise ValueError listing the available ones.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out = table.copy().reset_index(drop=True)
    pairs = [tuple(p) for p in scatter]
    for p in pairs:
        if len(p) != 2:
            raise ValueError(f"scatter: each entry must be an (x, y) pair of columns; got {p!r}")
        _check_columns(out, p, "scatter")
    feats = list(features) if features is not None else default_features(out)
    if features is not None:
        _check_columns(out, feats, "features")
    if cluster is not None and not isinstance(cluster, Mapping):
        raise ValueError(f"cluster must be None or a mapping like {{'method': 'kmeans', 'n_clusters': 3}}; "
                         f"got {cluster!r}")

    kept, rows = _usable(out, feats)
    n_rows = int(rows.sum())
    scaled = None
    if kept and n_rows:
        from sklearn.preprocessing import StandardScaler  # heavy import, only when used

        scaled = StandardScaler().fit_transform(out.loc[rows, kept].to_numpy(dtype=float))

    if cluster is not None:
        labels = np.full(len(out), -1, dtype=np.int64)
        if scaled is not None:
            labels[rows] = _cluster(scaled, cluster, seed)
        else:
            log.info("analysis: no usable features for clustering; 'cluster' is -1 for all objects")
            _cluster(np.zeros((0, 1)), cluster, seed)  # still validates the spec
        out["cluster"] = labels

    colour_name = None
    if color_by is not None and color_by in out.columns:
        colour_name = color_by
    elif cluster is not None:
        colour_name = "cluster"
    if color_by is not None and colour_name != color_by:
        log.info("analysis: no column %r to colour by; using %s", color_by, colour_name or "one colour")
    colour_all = out[colour_name] if colour_name else None

    paths: list[Path] = []
    for x, y in pairs:
        xy = out[[x, y]].astype(float)
        ok = xy.notna().all(axis=1).to_numpy()
        if not ok.any():
            log.info("analysis: scatter %s vs %s skipped: no object has both values", x, y)
            continue
        col = colour_all[ok] if colour_all is not None else None
        paths.append(_plot(folder / f"scatter_{safe_name(x)}_vs_{safe_name(y)}.png", xy[x].to_numpy()[ok],
                           xy[y].to_numpy()[ok], x, y, f"{y} vs {x}", col, colour_name))

    want = [name for name, on in (("pca", pca), ("tsne", tsne)) if on]
    for name in want:
        out[f"{name}_1"] = np.nan
        out[f"{name}_2"] = np.nan
    reason = None
    if len(kept) < 2:
        reason = f"needs >= 2 usable features, has {len(kept)} ({kept})"
    elif scaled is None or n_rows < MIN_OBJECTS:
        reason = f"needs >= {MIN_OBJECTS} objects, has {n_rows}"
    if want and reason:
        log.warning("analysis: %s skipped: %s", " and ".join(want), reason)
        return paths, out
    col = colour_all[rows] if colour_all is not None else None
    if pca:
        from sklearn.decomposition import PCA

        model = PCA(n_components=2, random_state=seed)
        coords = model.fit_transform(scaled)
        var = model.explained_variance_ratio_ * 100
        out.loc[rows, ["pca_1", "pca_2"]] = coords
        paths.append(_plot(folder / "pca.png", coords[:, 0], coords[:, 1], f"PC1 ({var[0]:.0f} %)",
                           f"PC2 ({var[1]:.0f} %)", f"PCA of {len(kept)} features", col, colour_name))
    if tsne:
        from sklearn.manifold import TSNE

        # t-SNE costs O(n log n) with a large constant (minutes at 10^5 objects): above
        # TSNE_MAX_OBJECTS it embeds a seeded random sample, and the others get NaN coordinates
        index = np.flatnonzero(rows)
        picked = np.arange(n_rows)
        if n_rows > TSNE_MAX_OBJECTS:
            picked = np.sort(np.random.default_rng(seed).choice(n_rows, TSNE_MAX_OBJECTS, replace=False))
            log.info("analysis: t-SNE of a random sample of %d of %d objects", TSNE_MAX_OBJECTS, n_rows)
        n_tsne = len(picked)
        perplexity = float(min(30.0, (n_tsne - 1) / 3))
        coords = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed,
                      learning_rate="auto").fit_transform(scaled[picked])
        out.loc[index[picked], ["tsne_1", "tsne_2"]] = coords
        sample = f", {n_tsne} of {n_rows} objects sampled" if n_tsne < n_rows else ""
        col_t = col.iloc[picked] if col is not None else None
        paths.append(_plot(folder / "tsne.png", coords[:, 0], coords[:, 1], "t-SNE 1", "t-SNE 2",
                           f"t-SNE (perplexity {perplexity:.1f}{sample})", col_t, colour_name))
    return paths, out
