"""Image input/output: readers for TIFF and Leica LIF files, and reshaping.

Readers return :class:`Image` records (pixels in their stored dtype plus axes,
source and metadata); :mod:`opsef_opt.io.reshape` holds pure functions that bin,
rescale, split into Z sub-stacks and tile such arrays.
"""
from __future__ import annotations

from .errors import ImageReadError
from .image import Image
from .lif import list_lif_images, read_lif
from .read import read_image
from .reshape import bin_image, scale_image, tile_image, z_substacks
from .tiff import read_tiff

__all__ = [
    "Image",
    "ImageReadError",
    "bin_image",
    "list_lif_images",
    "read_image",
    "read_lif",
    "read_tiff",
    "scale_image",
    "tile_image",
    "z_substacks",
]
