"""Turn a study's image declaration into the list of items trials run on.

One file can give several images (LIF series, mosaic tiles), and one image
several items (z-sub-stacks, tiles). Ground-truth labels, when given, are
reshaped exactly like their image. A file that cannot be read is reported and
left out; the others go on.

Checks made at load, before any trial:

* Degenerate images are reported (one line naming the file, in ``problems``)
  and left out: smaller than :data:`MIN_IMAGE_SIZE` pixels along Y or X, any
  NaN or infinite pixel, or every pixel the same value.
* Float images are rescaled to float32 in [0, 1] with float64 arithmetic
  (:func:`rescale_float`), so values far outside float32's range (e.g. 1e302)
  segment like the original; every preprocessing step normalises to [0, 1]
  anyway.
* When the study declares labels, every training image (``study.images.train``,
  all images when it is null) must have a label image of its Y x X shape; if
  one is missing or wrong, :func:`load_items` raises a :class:`ConfigError`
  naming the images and the file names looked for.
"""
from __future__ import annotations

import fnmatch
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from opsef_opt.config import ConfigError, ImagesSpec, ReshapeSpec
from opsef_opt.io import ImageReadError, read_image
from opsef_opt.io.reshape import resize, tile_image, z_substacks

__all__ = ["MIN_IMAGE_SIZE", "Item", "image_problem", "label_file", "list_files", "load_items", "rescale_float"]

_SPATIAL = {"YX": "YX", "ZYX": "ZYX", "YXC": "YX", "ZYXC": "ZYX"}

#: smallest image a study accepts, in pixels along Y and along X (Z may be shorter)
MIN_IMAGE_SIZE = 16
#: how many names one message lists before "and N more"
_SHOW = 5


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


def _excluded(spec: ImagesSpec, path: Path) -> bool:
    return any(fnmatch.fnmatch(path.name, pat) for pat in spec.exclude)


def list_files(spec: ImagesSpec) -> list[Path]:
    """Image files of the study, sorted, without duplicates and without ``study.images.exclude`` matches."""
    files: list[Path] = []
    if spec.folder is not None:
        files += sorted(p for p in spec.folder.glob(spec.pattern) if p.is_file())
    files += list(spec.files)
    seen, out = set(), []
    for f in files:
        if f.resolve() not in seen and not _excluded(spec, f):
            seen.add(f.resolve())
            out.append(f)
    return out


def _reader_kwargs(spec: ImagesSpec, path: Path) -> dict:
    if path.suffix.lower() == ".lif":
        return dict(image=spec.lif_image, channel=spec.channel, z=spec.z, t=spec.lif_t, mosaic=spec.lif_mosaic)
    return dict(channel=spec.channel, axes=spec.axes, z=spec.z)


def _fingerprint(path: Path, reader: dict, reshape: ReshapeSpec, name: str, prepared: str = "") -> str:
    st = path.stat()
    payload = [str(path.resolve()), st.st_size, st.st_mtime_ns, reader, repr(reshape), name]
    if prepared:
        payload.append(prepared)
    return hashlib.sha1(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


# ---------------------------------------------------------------- degenerate images


def _yx(data: np.ndarray, axes: str) -> tuple[int, int]:
    return data.shape[axes.index("Y")], data.shape[axes.index("X")]


def image_problem(data: np.ndarray, axes: str) -> str | None:
    """Why an image cannot be segmented meaningfully, or None when it can.

    Too small (under :data:`MIN_IMAGE_SIZE` px along Y or X), any NaN or
    infinite pixel, or a constant image.
    """
    h, w = _yx(data, axes)
    if h < MIN_IMAGE_SIZE or w < MIN_IMAGE_SIZE:
        return (f"{h} x {w} px (Y x X) is smaller than the minimum of {MIN_IMAGE_SIZE} x {MIN_IMAGE_SIZE} px")
    if data.dtype.kind == "f":
        nan = int(np.count_nonzero(np.isnan(data)))
        inf = int(np.count_nonzero(np.isinf(data)))
        if nan + inf == data.size:
            return f"every pixel is NaN or infinite ({nan} NaN, {inf} infinite)"
        if nan + inf:
            return (f"{nan + inf} of {data.size} pixels are NaN or infinite ({nan} NaN, {inf} infinite); "
                    f"replace them with finite values and save the image again")
    elif data.dtype.kind not in "biu":
        return f"pixel type {data.dtype} is not supported (expected integers or floats)"
    lo, hi = data.min(), data.max()
    if lo == hi:
        return f"every pixel has the value {lo.item():g}; a constant image has nothing to segment"
    return None


def rescale_float(data: np.ndarray) -> np.ndarray:
    """A float image as float32 in [0, 1] (its own min to max), computed in float64; other dtypes unchanged.

    Dividing by the largest magnitude first keeps every intermediate finite,
    so an image with values near 1e302 (beyond float32, and where
    ``max - min`` overflows) keeps its contrast. Needs finite, non-constant
    data (see :func:`image_problem`).
    """
    if data.dtype.kind != "f":
        return data
    a = data.astype(np.result_type(data.dtype, np.float64), copy=True)
    a /= np.max(np.abs(a))
    lo, hi = a.min(), a.max()
    a -= lo
    a /= hi - lo
    return a.astype(np.float32)


# ---------------------------------------------------------------- labels


def label_file(spec: ImagesSpec, stem: str) -> tuple[Path | None, str]:
    """The label file of an image file stem and the name looked for.

    ``(None, reason)`` when ``study.images.labels.regex`` does not match the stem.
    """
    assert spec.labels_folder is not None
    if spec.labels_regex is not None:
        m = re.fullmatch(spec.labels_regex, stem)
        if m is None:
            return None, f"no file name: {stem!r} does not match labels.regex {spec.labels_regex!r}"
        name = spec.labels_pattern.format(m.group(0), *m.groups(default=""), stem=stem, **m.groupdict(default=""))
    else:
        name = spec.labels_pattern.format(stem=stem)
    return spec.labels_folder / name, name


def _listing(folder: Path) -> str:
    names = sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))
    if not names:
        return "the folder is empty"
    more = f", ... ({len(names)} files)" if len(names) > _SHOW else ""
    return "the folder holds " + ", ".join(names[:_SHOW]) + more


def _few(entries: list[str]) -> str:
    more = f" and {len(entries) - _SHOW} more" if len(entries) > _SHOW else ""
    return ", ".join(entries[:_SHOW]) + more


def _labels_error(spec: ImagesSpec, missing: list[tuple[str, str, Path]], bad: list[str], found: int,
                  label_of: dict[Path, str]) -> ConfigError:
    """One line: which training images lack labels (and the names looked for), which labels are wrong."""
    rule = f"pattern {spec.labels_pattern!r}" + (f", regex {spec.labels_regex!r}" if spec.labels_regex else "")
    parts = []
    if missing:
        listed = _few([f"{image} (looked for {looked})" for image, looked, _ in missing])
        if found == 0:
            parts.append(f"no label file found for any of the {len(missing)} training image(s) in "
                         f"{spec.labels_folder} ({rule}): {listed}; {_listing(spec.labels_folder)}")
        else:
            parts.append(f"{len(missing)} training image(s) have no label file in {spec.labels_folder} "
                         f"({rule}): {listed}")
        suspects = [(src, label_of[src.resolve()]) for _, _, src in missing if src.resolve() in label_of]
        if suspects:
            src, owner = suspects[0]
            glob = spec.labels_pattern.replace("{stem}", "*") if spec.labels_regex is None else src.name
            parts.append(f"{src.name} is the label file of {owner}, not an image: leave label files out with "
                         f"study.images.exclude: [{glob!r}]")
    if bad:
        parts.append(_few(bad))
    return ConfigError(
        "study.images.labels: " + "; ".join(parts) + ". Every training image (study.images.train, all images "
        "when it is null) needs a label image of its Y x X size: add or fix the files, correct "
        "study.images.labels, or leave the images out of study.images.train"
    )


def _read_truth(spec: ImagesSpec, path: Path, where: str, yx: tuple[int, int],
                label_of: dict[Path, str]) -> tuple[np.ndarray | None, str | None, str | None]:
    """(truth, looked-for name when missing, problem when present but unusable) of a one-image file."""
    lpath, looked = label_file(spec, path.stem)
    if lpath is None:
        return None, looked, None
    label_of.setdefault(lpath.resolve(), path.name)
    if not lpath.is_file():
        return None, looked, None
    try:
        found = read_image(lpath)
    except ImageReadError as e:
        return None, None, f"labels of {where}: {e}"
    if len(found) != 1:
        return None, None, f"label file {looked} of {where} holds {len(found)} images; expected one"
    truth = found[0].data
    if truth.ndim != 2 or truth.shape != yx:
        return None, None, (f"label image {looked} of {where} has shape {truth.shape}; expected {yx} "
                            f"(the image's Y x X, one 2-D label image)")
    return truth, None, None


def _resize(data: np.ndarray, axes: str, reshape: ReshapeSpec, labels: bool) -> np.ndarray:
    return resize(data, axes, reshape.bin, reshape.scale, labels=labels)


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
    """Read, check, reshape and cut the study's images.

    Returns ``(items, problems)``: ``problems`` holds one clear line per file
    or image that was left out and why (unreadable or degenerate), and per
    label image missing or unusable for an image outside ``study.images.train``
    (only read with ``train_only=False``).

    Raises
    ------
    ConfigError
        When no file matches, or when labels are declared and a training image
        has no label file or an unusable one (all of them named in one line).
    """
    files = list_files(spec)
    if not files:
        where = f"{spec.folder}/{spec.pattern}" if spec.folder else "study.images.files"
        excl = f" once study.images.exclude {list(spec.exclude)} is applied" if spec.exclude else ""
        raise ConfigError(f"study.images: no image matches {where}{excl}; check folder and pattern")
    items: list[Item] = []
    problems: list[str] = []
    matched_train: set[str] = set()
    missing: list[tuple[str, str, Path]] = []  # training images without labels: (image, looked for, file)
    bad: list[str] = []  # unusable labels of training images
    others: list[str] = []  # images outside study.images.train without labels
    found = 0
    label_of: dict[Path, str] = {}  # label file -> the image file it belongs to
    for path in files:
        reader = _reader_kwargs(spec, path)
        try:
            images = read_image(path, **reader)
        except ImageReadError as e:
            problems.append(str(e))
            continue
        for img in images:
            is_train = True
            if spec.train is not None:
                pats = [p for p in spec.train if fnmatch.fnmatch(img.name, p) or img.name == p]
                matched_train.update(pats)
                is_train = bool(pats)
            if train_only and not is_train:
                continue
            where = path.name if len(images) == 1 else f"{path.name} [{img.name}]"
            why = image_problem(img.data, img.axes)
            if why:
                problems.append(f"image {where} left out: {why}")
                continue
            yx = _yx(img.data, img.axes)
            truth, looked, issue = None, None, None
            if spec.labels_folder is not None:
                if len(images) == 1:
                    truth, looked, issue = _read_truth(spec, path, where, yx, label_of)
                else:
                    issue = (f"labels of {where}: label files are matched to files that hold one image; "
                             f"{path.name} holds {len(images)}")
                found += looked is None  # a label file exists (usable or not)
                if is_train and looked is not None:
                    missing.append((img.name, looked, path))
                elif is_train and issue is not None:
                    bad.append(issue)
                elif looked is not None:
                    others.append(f"{img.name} (looked for {looked})")
                elif issue is not None:
                    problems.append(f"{issue}; scored without ground truth")
            prepared = "float01" if img.data.dtype.kind == "f" else ""
            data = _resize(rescale_float(img.data), img.axes, reshape, labels=False)
            if truth is not None:
                truth = _resize(truth, _SPATIAL[img.axes][-2:], reshape, labels=True)
            h, w = _yx(data, img.axes)
            if h < MIN_IMAGE_SIZE or w < MIN_IMAGE_SIZE:
                problems.append(f"image {where} left out: {h} x {w} px (Y x X) after study.reshape is smaller "
                                f"than the minimum of {MIN_IMAGE_SIZE} x {MIN_IMAGE_SIZE} px")
                continue
            for suffix, part, t in _cut(data, img.axes, truth, reshape):
                name = img.name + suffix
                fp = _fingerprint(path, reader, reshape, name, prepared)
                items.append(Item(name, img.name, part, img.axes, t, str(path), fp))
    if missing or bad:
        raise _labels_error(spec, missing, bad, found, label_of)
    if others:
        problems.append(
            f"study.images.labels: {len(others)} image(s) outside study.images.train have no label file: "
            f"{_few(others)}; a stage with images: all scores them without ground truth "
            f"(objective auto then uses the proxy score)"
        )
    if spec.train is not None and train_only:
        unused = [p for p in spec.train if p not in matched_train]
        if unused:
            problems.append(f"study.images.train entries matched no readable image: {unused}")
    return items, problems
