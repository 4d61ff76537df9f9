"""Run a preprocessing chain: at most one step per slot, in OpSeF's order.

Semantics of :func:`run_chain`
------------------------------
Input
    An image of any real dtype (uint8, uint16, float, ...) with axes ``"YX"``,
    ``"ZYX"``, ``"YXC"`` or ``"ZYXC"``, where ``C`` is RGB (3 channels, last).
    It is first converted to float32 in [0, 1] with :func:`normalize01`, using
    the image's own minimum and maximum rather than its dtype's range:
    uint16 microscopy data often use only 12 bits, so dividing by 65535 would
    make them dark. Every step therefore sees [0, 1] float32.
Steps
    A sequence of ``(slot, name, params)``. At most one step per slot, slots in
    the order of :data:`SLOTS` (``color, filter, background, projection,
    histogram, edges, invert``); slots not listed are skipped and the name
    ``"none"`` is the identity in every slot. The whole chain (order, names,
    parameters via :func:`opsef_opt.params.check_kwargs`) is validated before
    any pixel is touched.
Planewise steps
    2-D functions (YX float32 in, YX float32 out); the chain maps them over Z
    planes and colour channels, so an RGB image that reaches e.g. the filter
    slot is filtered channel by channel.
Whole-array steps
    The color and projection steps receive the full array and its axes and
    return ``(array, axes)``: color turns ``YXC`` into ``YX`` and ``ZYXC`` into
    ``ZYX`` (and raises ``ValueError`` on an image without RGB channels);
    projection turns ``ZYX`` into ``YX`` (``ZYXC`` into ``YXC``) and is the
    identity on data without Z.
Output
    After every step the result is re-normalised with :func:`normalize01` (over
    the whole array, not per plane), so the output is float32 in [0, 1]. The
    shape is kept except by color and projection.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from opsef_opt.params import check_kwargs

from .normalize import normalize01, normalize_range, value_range
from .registry import SLOTS, StepSpec, get_step

__all__ = ["AXES", "run_chain", "validate_chain", "map_planes"]

#: Axis layouts accepted by :func:`run_chain`.
AXES: tuple[str, ...] = ("YX", "ZYX", "YXC", "ZYXC")


def _check_image(image: np.ndarray, axes: str) -> None:
    if axes not in AXES:
        raise ValueError(f"axes must be one of {', '.join(AXES)}, got {axes!r}")
    if image.ndim != len(axes):
        raise ValueError(
            f"image has {image.ndim} dimensions (shape {image.shape}) "
            f"but axes {axes!r} has {len(axes)}"
        )
    if "C" in axes and image.shape[-1] != 3:
        raise ValueError(
            f"axes {axes!r} means RGB, but the C axis has {image.shape[-1]} channels "
            "(expected 3)"
        )


def validate_chain(
    steps: Sequence[tuple[str, str, dict]],
) -> list[tuple[StepSpec, dict]]:
    """Check slot order, step names and parameters; return specs with params.

    Raises
    ------
    ValueError
        If a slot is unknown, repeated or out of :data:`SLOTS` order (the
        message names the offending slot).
    KeyError
        If a step name is unknown in its slot (the message lists the names
        available in that slot).
    opsef_opt.params.ParamError
        If a parameter is unknown or out of its declared range.
    """
    resolved = []
    last = -1
    for slot, name, params in steps:
        if slot not in SLOTS:
            raise ValueError(f"unknown slot {slot!r}; slots are {', '.join(SLOTS)}")
        index = SLOTS.index(slot)
        if index == last:
            raise ValueError(f"slot {slot!r} appears twice; at most one step per slot")
        if index < last:
            raise ValueError(
                f"slot {slot!r} is out of order: it comes after {SLOTS[last]!r}, but "
                f"steps must follow the order {', '.join(SLOTS)}"
            )
        last = index
        spec = get_step(slot, name)
        values = check_kwargs(spec.params, dict(params or {}), f"{slot}.{name}")
        resolved.append((spec, values))
    return resolved


def map_planes(
    func: Callable[..., np.ndarray], image: np.ndarray, axes: str, **params
) -> np.ndarray:
    """Apply a 2-D function to every YX plane (each Z plane, each channel).

    Parameters
    ----------
    func : callable
        ``func(plane, **params) -> plane`` on 2-D arrays, keeping the shape.
    image : ndarray
        Array with axes ``axes`` (one of :data:`AXES`).
    axes : str
        Axis letters; ``Y`` and ``X`` must be consecutive, ``C`` last.

    Returns
    -------
    ndarray of float32, same shape as ``image``
    """
    if axes == "YX":
        return _apply(func, image, params)
    arr = np.moveaxis(image, -1, 0) if axes.endswith("C") else image
    planes = arr.reshape(-1, *arr.shape[-2:])
    out = np.empty(planes.shape, dtype=np.float32)
    for i, plane in enumerate(planes):
        out[i] = _apply(func, np.ascontiguousarray(plane), params)
    out = out.reshape(arr.shape)
    return np.moveaxis(out, 0, -1) if axes.endswith("C") else out


def _apply(func: Callable, plane: np.ndarray, params: dict) -> np.ndarray:
    result = np.asarray(func(plane, **params))
    if result.shape != plane.shape:
        name = getattr(func, "__name__", repr(func))
        raise ValueError(
            f"planewise step {name} changed the plane shape from {plane.shape} "
            f"to {result.shape}"
        )
    return result.astype(np.float32, copy=False)


def run_chain(
    image: np.ndarray, axes: str, steps: Sequence[tuple[str, str, dict]],
    ranges: Sequence[tuple[float, float] | None] | None = None,
    record: list[tuple[float, float]] | None = None,
) -> tuple[np.ndarray, str]:
    """Normalise ``image`` and apply the preprocessing ``steps`` in slot order.

    See the module docstring for the full semantics.

    Parameters
    ----------
    image : ndarray
        Any real dtype, axes ``axes``.
    axes : {"YX", "ZYX", "YXC", "ZYXC"}
        ``C`` is RGB with 3 channels.
    steps : sequence of (slot, name, params)
        At most one per slot, in :data:`SLOTS` order; ``params`` is a dict of
        keyword arguments (may be empty).
    ranges : sequence of (low, high) or None, optional
        One entry per normalisation (the input, then after each step): use
        this value range instead of the array's own minimum and maximum. The
        apply mode passes the whole image's ranges when it segments a tile,
        so every tile is scaled like the whole image.
    record : list, optional
        Receives the (min, max) each normalisation found, in order.

    Returns
    -------
    image : ndarray of float32 in [0, 1]
    axes : str
        Axes of the result (without ``C`` after a color step, without ``Z``
        after a projection).

    Examples
    --------
    >>> from skimage import data
    >>> out, axes = run_chain(data.cell(), "YX",
    ...                       [("filter", "median", {"size": 3}),
    ...                        ("histogram", "clahe", {"clip_limit": 0.02})])
    >>> out.dtype, axes
    (dtype('float32'), 'YX')
    """
    image = np.asarray(image)
    _check_image(image, axes)
    resolved = validate_chain(steps)
    ranges = list(ranges) if ranges is not None else []

    def norm(x: np.ndarray, i: int) -> np.ndarray:
        if record is not None:
            record.append(value_range(x))
        fixed = ranges[i] if i < len(ranges) else None
        return normalize_range(x, *fixed) if fixed is not None else normalize01(x)

    out = norm(image, 0)
    for i, (spec, params) in enumerate(resolved, start=1):
        if spec.slot == "color" and spec.name != "none" and "C" not in axes:
            raise ValueError(
                f"the image has axes {axes} and the color step {spec.name!r} needs "
                "RGB (axes YXC or ZYXC)"
            )
        if spec.planewise:
            out = map_planes(spec.func, out, axes, **params)
        else:
            out, axes = spec.func(out, axes, **params)
        out = norm(out, i)
    return out, axes
