"""Turn a study's image declaration into the list of items trials run on.

One file can give several images (LIF series, mosaic tiles), and one image
several items (z-sub-stacks, tiles). Ground-truth labels, when given, are
reshaped exactly like their image. A file that cannot be read is reported and
left out; the others go on.
"""
from __future__ import annotations

import fnmatch
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from opsef_opt.config import ConfigError, ImagesSpec, ReshapeSpec
from opsef_opt.io import ImageReadError, read_image
from opsef_opt.io.reshape import bin_image, scale_image, tile_image, z_substacks

__all__ = ["Item", "list_files", "load_items"]

_SPATIAL = {"YX": "YX", "ZYX": "ZYX", "YXC": "YX", "ZYXC": "ZYX"}


@dataclass
class Item:
    """One unit a trial segments and scores."""

    name: str
    image: str  # name of the image it was cut from
    data: np.ndarray
    axes: str
    truth: np.ndarray | None
    source: str
    fingerprint: str  # identity of file + reading + reshaping, for caches


def list_files(spec: ImagesSpec) -> list[Path]:
    """Image files of the study, sorted, without duplicates."""
    files: list[Path] = []
    if spec.folder is not None:
        files += sorted(p for p in spec.folder.glob(spec.pattern) if p.is_file())
    files += list(spec.files)
    seen, out = set(), []
    for f in files:
        if f.resolve() not in seen:
            seen.add(f.resolve())
            out.append(f)
    return out


def _reader_kwargs(spec: ImagesSpec, path: Path) -> dict:
    if path.suffix.lower() == ".lif":
        return dict(image=spec.lif_image, channel=spec.channel, z=spec.z, t=spec.lif_t, mosaic=spec.lif_mosaic)
    return dict(channel=spec.channel, axes=spec.axes, z=spec.z)


def _fingerprint(path: Path, reader: dict, reshape: ReshapeSpec, name: str) -> str:
    st = path.stat()
    payload = [str(path.resolve()), st.st_size, st.st_mtime_ns, reader, repr(reshape), name]
    return hashlib.sha1(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def _read_truth(spec: ImagesSpec, stem: str) -> np.ndarray | None:
    if spec.labels_folder is None:
        return None
    path = spec.labels_folder / spec.labels_pattern.format(stem=stem)
    if not path.is_file():
        return None
    (img,) = read_image(path)
    return img.data


def _resize(data: np.ndarray, axes: str, reshape: ReshapeSpec, labels: bool) -> np.ndarray:
    if reshape.bin > 1:
        data = bin_image(data, axes, reshape.bin, labels=labels)
    if reshape.scale != 1.0:
        data = scale_image(data, axes, reshape.scale, labels=labels)
    return data


def _cut(data: np.ndarray, axes: str, truth: np.ndarray | None, reshape: ReshapeSpec):
    """Yield (suffix, data, truth) for z-sub-stacks and tiles of one image."""
    blocks = [("", data)]
    if reshape.substack and "Z" in axes:
        blocks = [(f"/z{a:03d}-{b - 1:03d}", blk) for a, b, blk in z_substacks(data, axes, reshape.substack)]
    for zname, blk in blocks:
        if reshape.tile_size is None:
            yield zname, blk, truth
            continue
        size = reshape.tile_size
        if len(size) == 3 and "Z" not in axes:
            size = size[1:]
        for origin, tile in tile_image(blk, axes, size, reshape.tile_overlap):
            y, x = origin[-2:]
            t = None
            if truth is not None:
                h, w = tile.shape[axes.index("Y")], tile.shape[axes.index("X")]
                t = truth[..., y : y + h, x : x + w]
            yield f"{zname}/tile_y{y:05d}_x{x:05d}", tile, t


def load_items(
    spec: ImagesSpec, reshape: ReshapeSpec, train_only: bool = True
) -> tuple[list[Item], list[str]]:
    """Read, reshape and cut the study's images.

    Returns ``(items, problems)``: ``problems`` holds one clear line per file
    or label image that was left out and why.
    """
    files = list_files(spec)
    if not files:
        where = f"{spec.folder}/{spec.pattern}" if spec.folder else "study.images.files"
        raise ConfigError(f"study.images: no image matches {where}; check folder and pattern")
    items: list[Item] = []
    problems: list[str] = []
    matched_train: set[str] = set()
    for path in files:
        reader = _reader_kwargs(spec, path)
        try:
            images = read_image(path, **reader)
        except ImageReadError as e:
            problems.append(str(e))
            continue
        for img in images:
            if spec.train is not None and train_only:
                pats = [p for p in spec.train if fnmatch.fnmatch(img.name, p) or img.name == p]
                if not pats:
                    continue
                matched_train.update(pats)
            try:
                truth = _read_truth(spec, path.stem) if len(images) == 1 else None
            except ImageReadError as e:
                problems.append(f"labels of {path.name} left out: {e}")
                truth = None
            data = _resize(img.data, img.axes, reshape, labels=False)
            if truth is not None:
                truth = _resize(truth, _SPATIAL[img.axes][-2:], reshape, labels=True)
                yx = tuple(data.shape[img.axes.index(a)] for a in "YX")
                if truth.shape[-2:] != yx or truth.ndim != 2:
                    problems.append(
                        f"labels of {path.name} left out: shape {truth.shape} does not match the image's Y, X {yx}"
                    )
                    truth = None
            for suffix, part, t in _cut(data, img.axes, truth, reshape):
                name = img.name + suffix
                fp = _fingerprint(path, reader, reshape, name)
                items.append(Item(name, img.name, part, img.axes, t, str(path), fp))
    if spec.train is not None and train_only:
        unused = [p for p in spec.train if p not in matched_train]
        if unused:
            problems.append(f"study.images.train entries matched no readable image: {unused}")
    return items, problems
