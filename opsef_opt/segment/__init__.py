"""Segmentation models behind one interface (see :mod:`opsef_opt.segment.base`).

Each family lives in its own module and registers itself; importing this
package registers the built-in families. Heavy libraries (torch, TensorFlow)
are imported lazily inside their adapters so the CLI starts fast.
"""
from opsef_opt.segment import bioimageio_unet, cellpose_model, classical, cp_unet, stardist_model  # noqa: F401,E501  (register their families)
from opsef_opt.segment.base import ModelUnavailable, Segmentation, Segmenter
from opsef_opt.segment.classical import threshold_watershed
from opsef_opt.segment.registry import SEGMENTERS, load_segmenter, model_cache_info, register_segmenter

__all__ = [
    "SEGMENTERS",
    "ModelUnavailable",
    "Segmentation",
    "Segmenter",
    "load_segmenter",
    "model_cache_info",
    "register_segmenter",
    "threshold_watershed",
]
