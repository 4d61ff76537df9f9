"""Preprocessing steps for microscopy images and the chain that combines them.

Each step is a pure function on numpy arrays, usable on its own::

    from opsef_opt import preprocess
    enhanced = preprocess.clahe(preprocess.normalize01(img), clip_limit=0.01)

and registered in a slot (see :data:`SLOTS`) so that studies can search over
``(slot, name, params)`` chains run by :func:`run_chain`.
"""
from __future__ import annotations

# Importing the step modules registers their steps.
from . import background, color, edges, filters, histogram, identity, invert, projection
from .background import imagej_shrink_factor, rolling_ball, subtract_constant, tophat
from .chain import AXES, map_planes, run_chain, validate_chain
from .color import STAINS, grayscale, stain
from .describe import step_label
from .edges import roberts, sobel
from .filters import gaussian_filter, mean_filter, median_filter
from .histogram import clahe, equalize
from .identity import identity
from .invert import invert
from .normalize import normalize01
from .projection import (
    max_projection,
    mean_projection,
    median_projection,
    sum_projection,
)
from .registry import SLOTS, STEPS, StepSpec, get_step, step, steps_in_slot

__all__ = [
    "AXES",
    "SLOTS",
    "STAINS",
    "STEPS",
    "StepSpec",
    "clahe",
    "equalize",
    "gaussian_filter",
    "get_step",
    "grayscale",
    "identity",
    "imagej_shrink_factor",
    "invert",
    "map_planes",
    "max_projection",
    "mean_filter",
    "mean_projection",
    "median_filter",
    "median_projection",
    "normalize01",
    "roberts",
    "rolling_ball",
    "run_chain",
    "sobel",
    "stain",
    "step",
    "step_label",
    "steps_in_slot",
    "subtract_constant",
    "sum_projection",
    "tophat",
    "validate_chain",
]
