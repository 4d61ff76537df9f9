"""Stable, readable labels for configured steps (Optuna choices, MLflow params)."""
from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["step_label"]


def _format(value: Any) -> str:
    if isinstance(value, np.generic):
        value = value.item()
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)  # shortest round-trip form: distinct values stay distinct
    return str(value)


def step_label(name: str, params: dict | None = None) -> str:
    """Label a step and its parameters, e.g. ``clahe(clip_limit=0.02,tile_grid=8)``.

    Keys are sorted and there are no spaces, so equal configurations always
    give the same string. ``"none"`` is labelled ``none`` and a step without
    parameters by its bare name (``sobel``). Floats use Python's shortest
    round-trip repr, so two different values never share a label.

    Parameters
    ----------
    name : str
        Step name within its slot.
    params : dict, optional
        Keyword arguments of the step.

    Returns
    -------
    str
    """
    if name == "none" or not params:
        return name
    inner = ",".join(f"{key}={_format(params[key])}" for key in sorted(params))
    return f"{name}({inner})"
