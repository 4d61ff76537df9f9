"""Measurement and analysis of a label image: properties, filtering, mask classes, plots.

Pure functions on numpy arrays and pandas tables (scikit-image style); the
apply mode calls them per image, notebooks can call them directly.
"""
from opsef_opt.post.analysis import analysis_plots, default_features
from opsef_opt.post.classify import class_overlay, classify_objects, mask_from_channel
from opsef_opt.post.filter import filter_objects, keep_labels
from opsef_opt.post.props import PROPERTY_NAMES, region_properties

__all__ = [
    "PROPERTY_NAMES",
    "analysis_plots",
    "class_overlay",
    "classify_objects",
    "default_features",
    "filter_objects",
    "keep_labels",
    "mask_from_channel",
    "region_properties",
]
