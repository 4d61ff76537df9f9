"""Read Leica LIF files into :class:`~opsef_opt.io.image.Image` records.

readlif (``readlif.reader.LifFile``) parses the file: the list of images, their
dimensions, channels, scales and the byte offset of each image's memory block.
The pixels are then read straight from that block using the byte increments
(``BytesInc``) that the LIF XML gives for every dimension and channel, through
a read-only memory map. This is what Bio-Formats does, and it is needed because
``LifImage.get_frame`` assumes a fixed dimension order: it returns wrong planes
for mosaics stored as X, Y, Z, M, T (e.g. ``tilescan_2ch_3z_2t.lif``) or for
images with a wavelength dimension before T, and refuses XZ scans outright.

What comes out, per LIF image, channel, time point and mosaic tile:

* an XY image (with or without Z) gives ``YX`` or ``ZYX``;
* an XZ scan (no Y, or Y of length 1) gives a 2D ``YX`` image whose rows are Z
  (``meta["plane"] == "XZ"``; ``z`` crops those rows; ``pixel_size_um["y"]`` is
  the Z step);
* an XZY scan (XZ planes stepped along Y) is a volume and is returned as
  ``ZYX``, reordered from the file's X, Z, Y order;
* dimensions other than X, Y, Z, T, channel and mosaic (detection wavelength
  5, illumination wavelength 9, the unnamed 6-8: spectral sweeps) are read at
  their first plane; their lengths are listed in ``meta["other_dims"]``;
* line scans (only X spatial) are not supported and raise an error.

A file that is not a LIF file, or whose pixel data is truncated, raises
:class:`~opsef_opt.io.errors.ImageReadError` (readlif itself would return blank
images for a truncated file).
"""
from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path

import numpy as np
from readlif.reader import LifFile

from ._select import check_channel, check_index, z_slice
from .errors import ImageReadError, unreadable
from .image import Image

__all__ = ["list_lif_images", "read_lif"]

X, Y, Z, T, M = 1, 2, 3, 4, 10
_LETTERS = {X: "X", Y: "Y", Z: "Z", T: "T", M: "M"}
_LIF_MAGIC = b"\x70\x00\x00\x00"
#: Names of the LIF dimensions that are not read as axes (first plane taken).
OTHER_DIMS = {5: "emission_wavelength", 6: "dim6", 7: "dim7", 8: "dim8",
              9: "excitation_wavelength"}


@dataclass(frozen=True)
class _Layout:
    """Where the pixels of one LIF image lie within its memory block."""

    dims: dict[int, tuple[int, int]]  # DimID -> (length, byte increment), file order
    channel_offsets: tuple[int, ...]
    channel_names: tuple[str, ...]
    dtypes: tuple[np.dtype, ...]

    def n(self, dim: int) -> int:
        return self.dims.get(dim, (1, 0))[0]


def _open(path: Path) -> LifFile:
    if not path.is_file():
        raise unreadable(path, "file not found")
    # readlif is given an open handle that we close, because on a damaged file
    # it raises without closing the one it opens itself; pixels are read later
    # from the path, not through readlif.
    with path.open("rb") as handle:
        if handle.read(4) != _LIF_MAGIC:
            raise unreadable(path, "not a LIF file (the LIF header is missing)")
        handle.seek(0)
        try:
            return LifFile(handle)
        except Exception as exc:  # readlif raises ValueError, struct.error, ParseError...
            raise unreadable(path, f"damaged LIF file ({exc})") from exc


def _image_elements(root: ET.Element) -> list[ET.Element]:
    """XML elements of the images, in the order readlif lists them."""
    found: list[ET.Element] = []

    def walk(tree: ET.Element) -> None:  # mirrors LifFile._recursive_image_find
        children = tree.findall("./Children/Element") or tree.findall("./Element")
        for item in children:
            if item.findall("./Data/Image"):
                found.append(item)
            if item.findall("./Children/Element/Data"):
                walk(item)

    walk(root)
    return found


def _dtype(resolution: int, data_type: str) -> np.dtype:
    if data_type == "1" and resolution == 32:
        return np.dtype("<f4")
    if resolution <= 8:
        return np.dtype(np.uint8)
    if resolution <= 16:
        return np.dtype("<u2")
    raise ValueError(f"unsupported bit depth {resolution} (data type {data_type})")


def _layouts(lif: LifFile, path: Path) -> list[_Layout]:
    elements = _image_elements(lif.xml_root)
    names = [info["name"].split("/")[-1] for info in lif.image_list]
    if [e.attrib.get("Name") for e in elements] != names:
        raise unreadable(path, "the image list in the LIF header does not match readlif's")
    layouts = []
    try:
        for element in elements:
            desc = element.find("./Data/Image/ImageDescription")
            dims = {int(d.attrib["DimID"]): (int(d.attrib["NumberOfElements"]), int(d.attrib["BytesInc"]))
                    for d in desc.findall("./Dimensions/DimensionDescription")}
            channels = desc.findall("./Channels/ChannelDescription")
            layouts.append(_Layout(
                dims=dims,
                channel_offsets=tuple(int(c.attrib["BytesInc"]) for c in channels),
                channel_names=tuple(c.attrib.get("LUTName", "") for c in channels),
                dtypes=tuple(_dtype(int(c.attrib["Resolution"]), c.attrib.get("DataType", "0"))
                             for c in channels),
            ))
    except (AttributeError, KeyError, ValueError) as exc:
        raise unreadable(path, f"unexpected LIF image description ({exc})") from exc
    return layouts


def _plan(layout: _Layout) -> tuple[str, tuple[int, ...], str] | None:
    """Output axes, the LIF dims that become them, and the plane kind.

    ``None`` for a line scan (X is the only spatial dimension).
    """
    has_y, has_z = layout.n(Y) > 1, layout.n(Z) > 1
    if has_y and has_z:
        return "ZYX", (Z, Y, X), "XY"
    if has_y:
        return "YX", (Y, X), "XY"
    if has_z:
        return "YX", (Z, X), "XZ"
    return None


def _dims_text(info: dict) -> str:
    d = info["dims"]
    return f"x={d['x']} y={d['y']} z={d['z']} t={d['t']} c={d['c']} m={d['m']}"


def _summary(index: int, lif: LifFile, layout: _Layout) -> dict:
    info = lif.image_list[index]
    dims = info["dims"]
    plan = _plan(layout)
    return {
        "index": index,
        "name": info["name"],
        "dims": {"x": dims.x, "y": dims.y, "z": dims.z, "t": dims.t,
                 "c": info["channels"], "m": dims.m},
        "channels": info["channels"],
        "channel_names": list(layout.channel_names),
        "bit_depth": tuple(info["bit_depth"]),
        "scale": tuple(info["scale"]),
        "other_dims": {OTHER_DIMS[d]: n for d, (n, _) in layout.dims.items() if d in OTHER_DIMS},
        "axes": plan[0] if plan else None,
        "plane": plan[2] if plan else "line scan",
        "file_order": "".join(_LETTERS.get(d, "L") for d in layout.dims),
    }


def list_lif_images(path: str | PathLike) -> list[dict]:
    """Describe every image in a LIF file without reading pixels.

    Parameters
    ----------
    path : str or PathLike
        The LIF file.

    Returns
    -------
    list of dict
        One dict per image with ``index``, ``name`` (readlif's, including any
        folder path), ``dims`` (``x, y, z, t, c, m`` lengths), ``channels``,
        ``channel_names`` (LUT names), ``bit_depth`` (per channel), ``scale``
        (readlif's ``(x, y, z, t)``: px/µm for x, y, z, ``None`` when unknown),
        ``other_dims`` (e.g. ``{"emission_wavelength": 20}``), ``axes`` that
        :func:`read_lif` returns (``None`` for line scans), ``plane``
        (``"XY"``, ``"XZ"`` or ``"line scan"``) and ``file_order``, the
        dimension order in the file (e.g. ``"XZY"``; ``L`` marks a wavelength
        or other dimension).
    """
    p = Path(path)
    lif = _open(p)
    layouts = _layouts(lif, p)
    return [_summary(i, lif, layout) for i, layout in enumerate(layouts)]


def _select_images(image: int | str | Sequence[int | str] | None, summaries: list[dict],
                   path: Path) -> list[int]:
    if image is None:
        return list(range(len(summaries)))
    wanted = list(image) if isinstance(image, (list, tuple)) else [image]
    names = [s["name"] for s in summaries]
    chosen = []
    for item in wanted:
        if isinstance(item, int) and not isinstance(item, bool) and 0 <= item < len(names):
            chosen.append(item)
        elif isinstance(item, str) and item in names:
            chosen.append(names.index(item))
        else:
            listing = "; ".join(f"{s['index']}: {s['name']} ({_dims_text(s)})" for s in summaries)
            raise ImageReadError(
                f"file {path} has no image {item!r}; available images: {listing}; "
                f"set images.image to one of these indices or names"
            )
    return chosen


def _pixel_size(info: dict, dims: tuple[int, ...], axes: str) -> dict:
    """Pixel size in µm per output axis, from readlif's px/µm scales."""
    sizes = {}
    for axis, dim in zip(axes.lower(), dims):
        scale = info["scale_n"].get(dim)
        sizes[axis] = abs(1.0 / scale) if scale else None  # Z scale may be negative
    return sizes


def _read_block(path: Path, offset: int, nbytes: int, layout: _Layout, channel: int,
                index: dict[int, int | slice], out_dims: tuple[int, ...]) -> np.ndarray:
    """Read one channel of one image block, indexed by LIF dim, in ``out_dims`` order."""
    dtype = layout.dtypes[channel]
    ids = list(layout.dims)
    block = np.memmap(path, dtype=np.uint8, mode="r", offset=offset, shape=(nbytes,))
    view = np.ndarray(tuple(layout.dims[d][0] for d in ids), dtype=dtype, buffer=block,
                      offset=layout.channel_offsets[channel],
                      strides=tuple(layout.dims[d][1] for d in ids))
    sub = view[tuple(index.get(d, 0) for d in ids)]
    kept = [d for d in ids if not isinstance(index.get(d, 0), int)]
    data = np.array(sub.transpose([kept.index(d) for d in out_dims]), order="C")
    del view, sub, block
    return data


def read_lif(
    path: str | PathLike,
    image: int | str | list | None = None,
    channel: int | None = None,
    z: tuple[int, int] | None = None,
    t: int = 0,
    mosaic: int | None = None,
) -> list[Image]:
    """Read images from a Leica LIF file.

    Parameters
    ----------
    path : str or PathLike
        The LIF file.
    image : int, str or list of them, optional
        Which LIF images to read, by index or by (readlif) name; all when
        ``None``.
    channel : int, optional
        Channel to read; may be ``None`` only for single-channel images.
    z : tuple of int, optional
        Half-open ``(start, stop)`` range of Z planes (rows of an XZ scan);
        ``stop`` is clipped to the image depth.
    t : int, default 0
        Time point.
    mosaic : int, optional
        Mosaic tile to read; ``None`` reads every tile as its own image.

    Returns
    -------
    list of Image
        In file order, tiles in tile order. Names are ``"<stem>/<lif name>"``,
        plus ``"/m<k>"`` for the tiles of a mosaic with more than one tile. Axes
        are ``YX`` or ``ZYX`` (see the module docstring for XZ scans); the data
        keep the stored dtype (uint8 or uint16). ``meta`` holds the LIF index
        and name, channel, time point, Z range, tile and its position, pixel
        sizes (µm, per output axis) and readlif's scale.

    Raises
    ------
    ImageReadError
        If the file cannot be read, or an image, channel, time point, tile or
        Z range does not exist.
    """
    p = Path(path)
    lif = _open(p)
    layouts = _layouts(lif, p)
    summaries = [_summary(i, lif, layout) for i, layout in enumerate(layouts)]
    images = []
    for i in _select_images(image, summaries, p):
        info, layout, summary = lif.image_list[i], layouts[i], summaries[i]
        where = f"image {p} (LIF image {i}: {info['name']!r})"
        plan = _plan(layout)
        if plan is None:
            raise ImageReadError(f"{where} is a line scan; only XY, XYZ and XZ images are "
                                 f"supported, choose others with images.image")
        axes, out_dims, plane = plan
        offset, nbytes = lif.offsets[i]
        if nbytes == 0 or offset + nbytes > p.stat().st_size:
            # readlif gives images lost to truncation a zero-length block
            raise unreadable(p, f"file is truncated, LIF image {i} ({info['name']!r}) "
                                f"has no or incomplete pixel data")
        c = check_channel(len(layout.channel_offsets), channel, where, layout.channel_names)
        check_index(layout.n(T), t, "time points", "images.t", where)
        n_m = layout.n(M)
        tiles = (range(n_m) if mosaic is None
                 else [check_index(n_m, mosaic, "mosaic tiles", "images.mosaic", where)])
        zs = z_slice(layout.n(Z), z, where) if Z in out_dims else z_slice(1, z, where)
        index: dict[int, int | slice] = {X: slice(None), Y: slice(None), T: t}
        if Z in out_dims:
            index[Z] = zs
        for m in tiles:
            index[M] = m
            try:
                data = _read_block(p, offset, nbytes, layout, c, index, out_dims)
            except (ValueError, TypeError, OSError) as exc:
                raise unreadable(p, f"LIF image {i} ({info['name']!r}): {exc}") from exc
            name = f"{p.stem}/{info['name']}" + (f"/m{m}" if n_m > 1 else "")
            meta = {
                "lif_index": i, "lif_name": info["name"], "plane": plane,
                "file_order": summary["file_order"],
                "channel": c, "n_channels": len(layout.channel_offsets),
                "channel_name": layout.channel_names[c],
                "t": t, "n_t": layout.n(T),
                "z": (zs.start, zs.stop) if Z in out_dims else None, "n_z": layout.n(Z),
                "mosaic": m if n_m > 1 else None, "n_mosaic": n_m,
                "pixel_size_um": _pixel_size(info, out_dims, axes),
                "scale": tuple(info["scale"]), "bit_depth": tuple(info["bit_depth"]),
                "other_dims": summary["other_dims"],
            }
            if n_m > 1 and m < len(info["mosaic_position"]):
                meta["mosaic_position"] = info["mosaic_position"][m]
            images.append(Image(name=name, data=data, axes=axes, source=str(p), meta=meta))
    return images
