"""``study.apply``: how the chosen pipeline runs over a whole dataset, and what happens to its objects.

Validated with the rest of the config before any work starts, so a typo in a
filter property or a mask folder fails in a second, not after an hour of
segmentation::

    apply:
      tile: {size: 2048, overlap: 96}     # windows the model sees; overlap > largest object diameter
      filter: {area: [30, 5000], circularity: [0.6, null]}   # [min, max], null = open
      classify:                           # objects inside / outside a mask
        mask: {channel: 1, sigma: 2.0, otsu_factor: 1.0, opening: 2, closing: 0, fill_holes: true, min_size: 0}
        # or mask: {folder: masks, pattern: "{stem}.tif"}  (user-made masks, non-zero = inside)
        rule: centroid                    # or overlap (with min_overlap)
        min_overlap: 0.5
        names: [inside, outside]
      quantify: [1]                       # other channels measured with the same labels
      analysis: {scatter: [[area, mean_intensity]], pca: true, tsne: true, cluster: {method: kmeans, n_clusters: 3}}
      export: {imagej: true, annotatorj: false, qupath: true}
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

__all__ = ["TileSpec", "MaskSpec", "ClassifySpec", "AnalysisSpec", "ExportSpec", "ApplySpec", "apply_spec"]


@dataclass(frozen=True)
class TileSpec:
    #: window size in pixels (Y and X) the model sees; images not larger run whole
    size: int = 2048
    #: halo on each side; objects are kept by the tile whose core holds their centroid
    overlap: int = 96


@dataclass(frozen=True)
class MaskSpec:
    """A user mask (``folder``/``pattern``) or one generated from another channel (OpSeF's way)."""

    folder: Path | None = None
    pattern: str = "{stem}.tif"
    channel: int | None = None
    sigma: float = 2.0
    otsu_factor: float = 1.0
    opening: int = 0
    closing: int = 0
    fill_holes: bool = True
    min_size: int = 0


@dataclass(frozen=True)
class ClassifySpec:
    mask: MaskSpec
    rule: str = "centroid"
    min_overlap: float = 0.5
    names: tuple[str, str] = ("inside", "outside")


@dataclass(frozen=True)
class AnalysisSpec:
    scatter: tuple[tuple[str, str], ...] = (("area", "mean_intensity"),)
    features: tuple[str, ...] | None = None
    pca: bool = True
    tsne: bool = True
    cluster: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class ExportSpec:
    imagej: bool = True
    annotatorj: bool = False
    qupath: bool = True


@dataclass(frozen=True)
class ApplySpec:
    tile: TileSpec = TileSpec()
    filter: Mapping[str, tuple[float | None, float | None]] = field(default_factory=dict)
    classify: ClassifySpec | None = None
    quantify: tuple[int, ...] = ()
    analysis: AnalysisSpec | None = AnalysisSpec()
    export: ExportSpec = ExportSpec()


def _number(where: str, value: Any, nullable: bool = True) -> float | None:
    from opsef_opt.settings import ConfigError

    if value is None and nullable:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{where}={value!r}: expected a number{' or null' if nullable else ''}")
    return float(value)


def _filter(where: str, node: Any) -> dict[str, tuple[float | None, float | None]]:
    from opsef_opt.settings import ConfigError
    from opsef_opt.post.props import PROPERTY_NAMES

    if node is None:
        return {}
    if not isinstance(node, Mapping):
        raise ConfigError(f"{where}: expected a mapping property -> [min, max]")
    out = {}
    for prop, rng in node.items():
        # quantified channels add '<channel>.<property>' columns; they are checked when the table exists
        if prop not in PROPERTY_NAMES and "." not in str(prop):
            raise ConfigError(f"{where}.{prop}: unknown property; filterable: {', '.join(PROPERTY_NAMES)}")
        if not isinstance(rng, (list, tuple)) or len(rng) != 2:
            raise ConfigError(f"{where}.{prop}={rng!r}: expected [min, max] (null for an open end)")
        lo, hi = _number(f"{where}.{prop}[0]", rng[0]), _number(f"{where}.{prop}[1]", rng[1])
        if lo is not None and hi is not None and lo > hi:
            raise ConfigError(f"{where}.{prop}: min {lo} is greater than max {hi}")
        out[str(prop)] = (lo, hi)
    return out


def _mask(where: str, node: Any, base: Path) -> MaskSpec:
    from opsef_opt.settings import ConfigError
    from opsef_opt.checks import integer, check_keys, path_value, typed

    if not isinstance(node, Mapping):
        raise ConfigError(f"{where}: expected {{channel: N, ...}} or {{folder: PATH, pattern: ...}}")
    check_keys(where, node, {f: None for f in MaskSpec.__dataclass_fields__})
    folder = node.get("folder")
    channel = integer(f"{where}.channel", node.get("channel"), 0, nullable=True)
    if (folder is None) == (channel is None):
        raise ConfigError(f"{where}: give either 'channel' (generate the mask) or 'folder' (your mask images)")
    if folder is not None:
        folder = path_value(f"{where}.folder", folder, base)
        if not folder.is_dir():
            raise ConfigError(f"{where}.folder={str(folder)!r}: folder not found")
    pattern = typed(f"{where}.pattern", node.get("pattern", "{stem}.tif"), (str,), "a pattern with {stem}")
    if "{stem}" not in pattern:
        raise ConfigError(f"{where}.pattern={pattern!r}: must contain {{stem}} (the image file's stem)")
    return MaskSpec(
        folder=folder, pattern=pattern, channel=channel,
        sigma=_number(f"{where}.sigma", node.get("sigma", 2.0), False),
        otsu_factor=_number(f"{where}.otsu_factor", node.get("otsu_factor", 1.0), False),
        opening=integer(f"{where}.opening", node.get("opening", 0), 0),
        closing=integer(f"{where}.closing", node.get("closing", 0), 0),
        fill_holes=typed(f"{where}.fill_holes", node.get("fill_holes", True), (bool,), "true or false"),
        min_size=integer(f"{where}.min_size", node.get("min_size", 0), 0),
    )


def _classify(where: str, node: Any, base: Path) -> ClassifySpec | None:
    from opsef_opt.settings import ConfigError
    from opsef_opt.checks import choice, check_keys

    if node is None:
        return None
    if not isinstance(node, Mapping):
        raise ConfigError(f"{where}: expected a mapping with 'mask'")
    check_keys(where, node, {"mask": None, "rule": None, "min_overlap": None, "names": None})
    if "mask" not in node:
        raise ConfigError(f"{where}.mask: missing; see the apply section of the README")
    names = node.get("names", ["inside", "outside"])
    if not isinstance(names, (list, tuple)) or len(names) != 2 or not all(isinstance(n, str) for n in names):
        raise ConfigError(f"{where}.names={names!r}: expected two class names [inside, outside]")
    overlap = _number(f"{where}.min_overlap", node.get("min_overlap", 0.5), False)
    if not 0 < overlap <= 1:
        raise ConfigError(f"{where}.min_overlap={overlap}: must be in (0, 1]")
    return ClassifySpec(_mask(f"{where}.mask", node["mask"], base),
                        choice(f"{where}.rule", node.get("rule", "centroid"), ("centroid", "overlap")),
                        overlap, tuple(names))


def _analysis(where: str, node: Any) -> AnalysisSpec | None:
    from opsef_opt.settings import ConfigError
    from opsef_opt.checks import choice, integer, check_keys, typed

    if node is False:
        return None
    node = node or {}
    if not isinstance(node, Mapping):
        raise ConfigError(f"{where}: expected a mapping (or false to skip the analysis)")
    check_keys(where, node, {"scatter": None, "features": None, "pca": None, "tsne": None, "cluster": None})
    scatter = node.get("scatter", [["area", "mean_intensity"]])
    if not isinstance(scatter, (list, tuple)) or not all(
            isinstance(p, (list, tuple)) and len(p) == 2 and all(isinstance(c, str) for c in p) for p in scatter):
        raise ConfigError(f"{where}.scatter={scatter!r}: expected a list of [x, y] property pairs")
    features = node.get("features")
    if features is not None and (not isinstance(features, (list, tuple)) or
                                 not all(isinstance(f, str) for f in features)):
        raise ConfigError(f"{where}.features={features!r}: expected a list of property names")
    cluster = node.get("cluster")
    if cluster is not None:
        if not isinstance(cluster, Mapping):
            raise ConfigError(f"{where}.cluster: expected {{method: kmeans|agglomerative, n_clusters: N}}")
        check_keys(f"{where}.cluster", cluster, {"method": None, "n_clusters": None})
        cluster = {"method": choice(f"{where}.cluster.method", cluster.get("method", "kmeans"),
                                     ("kmeans", "agglomerative")),
                   "n_clusters": integer(f"{where}.cluster.n_clusters", cluster.get("n_clusters", 3), 2)}
    return AnalysisSpec(
        scatter=tuple(tuple(p) for p in scatter), features=tuple(features) if features else None,
        pca=typed(f"{where}.pca", node.get("pca", True), (bool,), "true or false"),
        tsne=typed(f"{where}.tsne", node.get("tsne", True), (bool,), "true or false"),
        cluster=cluster,
    )


def apply_spec(where: str, node: Any, base: Path) -> ApplySpec:
    """A validated :class:`ApplySpec` from the ``study.apply`` mapping (defaults when empty)."""
    from opsef_opt.settings import ConfigError
    from opsef_opt.checks import integer, check_keys, typed

    node = node or {}
    if not isinstance(node, Mapping):
        raise ConfigError(f"{where}: expected a mapping")
    check_keys(where, node, {"tile": None, "filter": None, "classify": None, "quantify": None, "analysis": None,
                        "export": None})
    tile = node.get("tile") or {}
    check_keys(f"{where}.tile", tile, {"size": None, "overlap": None})
    size = integer(f"{where}.tile.size", tile.get("size", TileSpec.size), 64)
    overlap = integer(f"{where}.tile.overlap", tile.get("overlap", TileSpec.overlap), 0)
    if size <= 2 * overlap:
        raise ConfigError(f"{where}.tile: size {size} must be larger than 2 x overlap ({2 * overlap})")
    quantify = node.get("quantify") or []
    if not isinstance(quantify, (list, tuple)):
        quantify = [quantify]
    quantify = tuple(integer(f"{where}.quantify[{i}]", c, 0) for i, c in enumerate(quantify))
    export = node.get("export") or {}
    check_keys(f"{where}.export", export, {f: None for f in ExportSpec.__dataclass_fields__})
    export = ExportSpec(**{k: typed(f"{where}.export.{k}", export.get(k, getattr(ExportSpec, k)), (bool,),
                                     "true or false") for k in ExportSpec.__dataclass_fields__})
    return ApplySpec(TileSpec(size, overlap), _filter(f"{where}.filter", node.get("filter")),
                     _classify(f"{where}.classify", node.get("classify"), base), quantify,
                     _analysis(f"{where}.analysis", node.get("analysis")), export)
