"""Validate the data sections of a study: which images and labels it reads, and how it reshapes them.

A wrong image folder or label pattern is the mistake users make most, and the
one that costs most when it surfaces hours into a search; these validators
check that every folder exists and that a label pattern can be filled before
anything runs, and say which key is wrong and what it should look like.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from opsef_opt.checks import check_keys, choice, integer, path_value, typed
from opsef_opt.settings import FORMATS, ConfigError, ImagesSpec, ReshapeSpec

__all__ = ["images_spec", "reshape_spec"]

_IMAGES_KEYS = {
    "folder": None, "pattern": "*.tif", "exclude": None, "files": None, "format": "auto", "channel": None,
    "axes": None, "z": None, "lif": None, "labels": None, "train": None,
}
_LABELS_KEYS = {"folder": None, "pattern": "{stem}.tif", "regex": None, "sparse": False}


def _globs(where: str, value: Any, what: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{where}={value!r}: expected a list of {what}")
    return tuple(value)


def _labels(where: str, labels: Any, base: Path) -> tuple[Path, str, bool, str | None]:
    """``images.labels``: (folder, pattern, sparse, regex), each checked; the pattern's fields must be filled."""
    import re
    import string

    if not isinstance(labels, Mapping):
        raise ConfigError(f"{where}={labels!r}: expected a mapping such as {{folder: data/labels, pattern: '{{stem}}.tif'}}")
    check_keys(where, labels, _LABELS_KEYS)
    sparse = typed(f"{where}.sparse", labels.get("sparse", False), (bool,), "true or false")
    if labels.get("folder") is None:
        raise ConfigError(f"{where}.folder: required when labels are given")
    folder = path_value(f"{where}.folder", labels["folder"], base)
    if not folder.is_dir():
        raise ConfigError(f"{where}.folder={str(folder)!r}: folder not found")
    pattern = typed(
        f"{where}.pattern", labels.get("pattern") or _LABELS_KEYS["pattern"], (str,),
        "a pattern such as '{stem}.tif' or '{stem}_labels.tif'",
    )
    regex = typed(f"{where}.regex", labels.get("regex"), (str,),
                   "a regular expression such as 't(\\d+)'", nullable=True)
    fields: dict[str, str] = {"stem": "the image file name without suffix"}
    if regex is not None:
        try:
            rx = re.compile(regex)
        except re.error as e:
            raise ConfigError(f"{where}.regex={regex!r}: not a valid regular expression ({e})") from None
        if rx.groups == 0:
            raise ConfigError(f"{where}.regex={regex!r}: needs a group, e.g. 't(\\d+)', whose text "
                              f"{where}.pattern uses as {{1}}")
        fields.update({str(i): f"group {i}" for i in range(rx.groups + 1)})
        fields.update(dict.fromkeys(rx.groupindex, "a named group"))
    try:
        used = [f for _, f, _, _ in string.Formatter().parse(pattern) if f is not None]
    except ValueError as e:
        raise ConfigError(f"{where}.pattern={pattern!r}: {e}") from None
    allowed = ", ".join("{" + f + "}" for f in fields)
    for f in used:
        if f not in fields:
            raise ConfigError(f"{where}.pattern={pattern!r}: unknown field {{{f}}}; allowed: {allowed}"
                              + ("" if regex else " (add labels.regex to use its groups)"))
    if not used:
        raise ConfigError(f"{where}.pattern={pattern!r}: must contain '{{stem}}'"
                          + (" or a group of labels.regex, e.g. {1}" if regex else ""))
    return folder, pattern, sparse, regex


def images_spec(where: str, node: Mapping, base: Path, data_source: str = "") -> ImagesSpec:
    """``study.images`` as a checked :class:`~opsef_opt.settings.ImagesSpec`.

    Relative paths are resolved against ``base``; ``data_source`` (the study's
    note on where its data comes from) is added to a "folder not found" error.
    """
    check_keys(where, node, _IMAGES_KEYS)
    node = {**_IMAGES_KEYS, **node}
    folder = path_value(f"{where}.folder", node["folder"], base) if node["folder"] is not None else None
    files = tuple(path_value(f"{where}.files", f, base) for f in (node["files"] or ()))
    if folder is None and not files:
        raise ConfigError(f"{where}: give 'folder' (+ 'pattern') or a list of 'files'")
    hint = f"\n{data_source.strip()}" if data_source else ""
    if folder is not None and not folder.is_dir():
        raise ConfigError(
            f"{where}.folder={str(folder)!r}: folder not found; point it at your images "
            f"(e.g. {where}.folder=/path/to/images on the command line){hint}"
        )
    for f in files:
        if not f.is_file():
            raise ConfigError(f"{where}.files: file not found: {f}{hint}")
    pattern = typed(f"{where}.pattern", node["pattern"], (str,), "a glob pattern such as '*.tif'")
    fmt = choice(f"{where}.format", node["format"], FORMATS)
    channel = integer(f"{where}.channel", node["channel"], 0, nullable=True)
    axes = typed(f"{where}.axes", node["axes"], (str,), "an axes string such as 'CYX'", True)
    z = node["z"]
    if z is not None:
        if not (isinstance(z, (list, tuple)) and len(z) == 2 and all(isinstance(v, int) for v in z)):
            raise ConfigError(f"{where}.z={z!r}: expected [start, stop] (integers)")
        z = (int(z[0]), int(z[1]))
    lif = node["lif"] or {}
    check_keys(f"{where}.lif", lif, {"image": None, "t": 0, "mosaic": None})
    lif_t = integer(f"{where}.lif.t", lif.get("t", 0), 0)
    lif_mosaic = integer(f"{where}.lif.mosaic", lif.get("mosaic"), 0, nullable=True)
    exclude = _globs(f"{where}.exclude", node["exclude"], "file-name globs such as '*_labels.tif'")
    labels_folder, labels_pattern, labels_sparse, labels_regex = None, _LABELS_KEYS["pattern"], False, None
    if node["labels"] is not None:
        labels_folder, labels_pattern, labels_sparse, labels_regex = _labels(f"{where}.labels", node["labels"], base)
    train = node["train"]
    if train is not None:
        if not isinstance(train, (list, tuple)) or not all(isinstance(t, str) for t in train):
            raise ConfigError(f"{where}.train={train!r}: expected a list of image names or globs")
        train = tuple(train)
    return ImagesSpec(
        folder, pattern, files, fmt, channel, axes, z, lif.get("image"), lif_t, lif_mosaic,
        labels_folder, labels_pattern, train, labels_sparse, exclude, labels_regex,
    )


def reshape_spec(where: str, node: Mapping) -> ReshapeSpec:
    """``study.reshape`` (binning, scaling, substacks, tiles) as a checked
    :class:`~opsef_opt.settings.ReshapeSpec`."""
    check_keys(where, node, {"bin": 1, "scale": 1.0, "substack": None, "tile": None})
    b = integer(f"{where}.bin", node.get("bin", 1), 1)
    scale = typed(f"{where}.scale", node.get("scale", 1.0), (int, float), "a positive number")
    if scale <= 0:
        raise ConfigError(f"{where}.scale={scale}: must be > 0")
    substack = integer(f"{where}.substack", node.get("substack"), 1, nullable=True)
    tile = node.get("tile")
    size, overlap = None, 0
    if tile is not None:
        check_keys(f"{where}.tile", tile, {"size": None, "overlap": 0})
        size = tile.get("size")
        if not (
            isinstance(size, (list, tuple)) and len(size) in (2, 3)
            and all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size)
        ):
            raise ConfigError(f"{where}.tile.size={size!r}: expected [Y, X] or [Z, Y, X] positive integers")
        size = tuple(size)
        overlap = integer(f"{where}.tile.overlap", tile.get("overlap", 0), 0)
        if overlap >= min(size[-2:]):
            raise ConfigError(f"{where}.tile.overlap={overlap}: must be smaller than the tile size {size}")
    return ReshapeSpec(b, float(scale), substack, size, overlap)
