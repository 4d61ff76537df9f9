"""The images the apply mode segments, each readable window by window.

A whole H&E section (20 000 x 6 000 px, RGB) should not have to fit in every
worker's memory. Plain 2D TIFFs (grey ``YX`` or colour ``YXS``) are therefore
read lazily through tifffile's Zarr view: a tile reads only the file chunks
it covers, whatever the compression. Everything else (LIF, stacks, files whose
axes need an override) is read whole by the study's own readers, once per
worker process, and cut into windows in memory. Both paths give the same
pixels, with the study's reshaping (binning, scaling, z-sub-stacks) applied,
so the chosen pipeline sees what it saw during the search.
"""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from opsef_opt.config import ImagesSpec, ReshapeSpec
from opsef_opt.io import ImageReadError, read_image
from opsef_opt.io.reshape import bin_image, resize, z_substacks

__all__ = ["Source", "list_sources"]

Window = tuple[int, int, int, int]  # y0, y1, x0, x1 (half-open) on the reshaped image


@dataclass(frozen=True)
class Source:
    """One image (or z-sub-stack) of the dataset: where it is and how to read any window of it."""

    name: str
    path: str
    reader: tuple[tuple[str, object], ...]  # read_image keyword arguments, as sorted pairs (hashable)
    index: int  # which image of the file
    axes: str  # after reading: YX, YXC, ZYX or ZYXC
    shape: tuple[int, ...]  # after reshaping, in ``axes`` order
    bin: int = 1
    scale: float = 1.0
    z: tuple[int, int] | None = None  # z-sub-stack planes, half-open
    lazy: bool = False
    pixel_size_um: float | None = None  # after reshaping

    @property
    def shape_yx(self) -> tuple[int, int]:
        return self.shape[self.axes.index("Y")], self.shape[self.axes.index("X")]

    def with_channel(self, channel: int) -> "Source":
        """The same image with another channel of the file (to quantify it or build a mask from it)."""
        reader = dict(self.reader)
        reader["channel"] = channel
        axes = self.axes.replace("C", "")
        shape = tuple(n for a, n in zip(self.axes, self.shape) if a != "C")
        return replace(self, reader=tuple(sorted(reader.items())), axes=axes, shape=shape)

    def read_window(self, window: Window) -> np.ndarray:
        """The pixels of ``window`` (reshaped-image coordinates), all Z planes and colours."""
        y0, y1, x0, x1 = window
        if self.lazy:
            f = self.bin
            data = np.asarray(_zarr(self.path)[y0 * f: y1 * f, x0 * f: x1 * f])
            channel = dict(self.reader).get("channel")
            if data.ndim == 3 and channel is not None:
                data = data[..., channel]
            return bin_image(data, self.axes, f) if f > 1 else data
        data = _whole(self)
        yi, xi = self.axes.index("Y"), self.axes.index("X")
        index = [slice(None)] * data.ndim
        index[yi], index[xi] = slice(y0, y1), slice(x0, x1)
        return data[tuple(index)]

    def read(self) -> np.ndarray:
        h, w = self.shape_yx
        return self.read_window((0, h, 0, w))


@functools.lru_cache(maxsize=4)
def _zarr(path: str):
    import tifffile
    import zarr

    return zarr.open(tifffile.imread(path, aszarr=True), mode="r")


@functools.lru_cache(maxsize=2)
def _read_whole(path: str, reader: tuple, index: int, bin_: int, scale: float) -> tuple[np.ndarray, str]:
    from opsef_opt.io.dataset import rescale_float

    img = read_image(path, **dict(reader))[index]
    return resize(rescale_float(img.data), img.axes, bin_, scale), img.axes


def _whole(source: Source) -> np.ndarray:
    data, axes = _read_whole(source.path, source.reader, source.index, source.bin, source.scale)
    if source.z is not None:
        zi = axes.index("Z")
        data = data[(slice(None),) * zi + (slice(*source.z),)]
    return data


def _pixel_size(meta: dict, reshape: ReshapeSpec) -> float | None:
    size = (meta.get("pixel_size_um") or {}).get("x")
    return float(size) * reshape.bin / reshape.scale if size else None


def _lazy_probe(path: Path, reader: dict, reshape: ReshapeSpec) -> Source | None:
    """A lazy source for plain 2D TIFFs; None when the file needs the full reader."""
    import tifffile

    if path.suffix.lower() not in (".tif", ".tiff") or reshape.scale != 1.0:
        return None
    if reader.get("axes") is not None or reader.get("z") is not None:
        return None
    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            if series.axes not in ("YX", "YXS") or len(tif.series) != 1 or tif.is_imagej and series.axes != "YX":
                return None
            shape, axes = tuple(series.shape), series.axes
            if series.dtype.kind == "f":
                return None  # floats are rescaled in float64 by the full reader (values may overflow float32)
            from opsef_opt.io.tiff import _pixel_size as tiff_pixel_size

            pixel = tiff_pixel_size(tif)
    except Exception:  # let the full reader produce its clear error
        return None
    channel = reader.get("channel")
    if axes == "YXS":
        if shape[-1] not in (3, 4):
            return None
        if channel is not None and not 0 <= channel < shape[-1]:
            return None
        axes = "YX" if channel is not None else "YXC"
        if channel is not None:
            shape = shape[:2]
    elif channel not in (None, 0):
        return None
    f = reshape.bin
    shape = (shape[0] // f, shape[1] // f, *shape[2:])
    if 0 in shape[:2]:
        return None
    return Source(path.stem, str(path), tuple(sorted(reader.items())), 0, axes, shape, f, 1.0, None, True,
                  _pixel_size({"pixel_size_um": pixel} if pixel else {}, reshape))


def list_sources(spec: ImagesSpec, reshape: ReshapeSpec, files: list[Path]) -> tuple[list[Source], list[str]]:
    """Every image of ``files`` as sources (one per z-sub-stack); unreadable files become problem lines."""
    from opsef_opt.io.dataset import MIN_IMAGE_SIZE, _reader_kwargs, image_problem, rescale_float

    sources: list[Source] = []
    problems: list[str] = []
    for path in files:
        reader = {k: v for k, v in _reader_kwargs(spec, path).items() if v is not None}
        lazy = _lazy_probe(path, reader, reshape)
        if lazy is not None:
            if min(lazy.shape_yx) < MIN_IMAGE_SIZE:
                problems.append(f"image {path.name} left out: {lazy.shape_yx[0]} x {lazy.shape_yx[1]} px (Y x X) is "
                                f"smaller than the minimum of {MIN_IMAGE_SIZE} x {MIN_IMAGE_SIZE} px")
            else:
                sources.append(lazy)
            continue
        key = tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in reader.items()))
        try:
            images = read_image(path, **reader)
        except ImageReadError as e:
            problems.append(str(e))
            continue
        for i, img in enumerate(images):
            problem = image_problem(img.data, img.axes)
            if problem is not None:  # the same checks as a study's images (non-finite, constant, too small)
                problems.append(f"image {img.name} left out: {problem}")
                continue
            try:
                data = resize(rescale_float(img.data), img.axes, reshape.bin, reshape.scale)
            except ValueError as e:
                problems.append(f"{img.name}: cannot be reshaped ({e})")
                continue
            base = Source(img.name, str(path), key, i, img.axes, data.shape, reshape.bin, reshape.scale,
                          None, False, _pixel_size(img.meta, reshape))
            if reshape.substack and "Z" in img.axes:
                zi = img.axes.index("Z")
                for a, b, _ in z_substacks(data, img.axes, reshape.substack):
                    shape = data.shape[:zi] + (b - a,) + data.shape[zi + 1:]
                    sources.append(replace(base, name=f"{img.name}/z{a:03d}-{b - 1:03d}", shape=shape, z=(a, b)))
            else:
                sources.append(base)
    return sources, problems


def describe(source: Source) -> str:
    """One line for logs and provenance."""
    return json.dumps({"name": source.name, "path": source.path, "lazy": source.lazy, "shape": source.shape,
                       "axes": source.axes, "bin": source.bin, "scale": source.scale, "z": source.z})
