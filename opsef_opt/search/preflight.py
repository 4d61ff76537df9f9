"""Before any trial: can every image reach every model through the declared preprocessing?

Axes decide it, not pixels: a colour step turns RGB (``YXC``) into grey
(``YX``) and needs RGB; a projection turns a stack (``ZYX``) into a plane;
each model family declares the axes it accepts (``Segmenter.input_axes``).
So the check is exact and free, and runs when the images are loaded. An
image that no declared chain can bring to any model stops the study with
the fix (a study whose every trial would fail on it is no study); chains
that cannot work on some images only are summarised in one warning, since
a space is a product and e.g. ``color: [none, grayscale]`` with an RGB-only
model next to a grey-only one is a sensible declaration.
"""
from __future__ import annotations

import logging
from collections import defaultdict
from typing import Sequence

from opsef_opt.config import SearchSpec

__all__ = ["InputError", "chain_axes", "check_inputs"]

log = logging.getLogger("opsef_opt")

#: axis layouts the preprocessing chain accepts (``C`` = RGB, 3 channels, last)
_CHAIN_AXES = ("YX", "ZYX", "YXC", "ZYXC")


class InputError(ValueError):
    """An image no declared pipeline can use; the message names it and the fix."""


def chain_axes(axes: str, color: str, projection: str) -> tuple[str | None, str]:
    """Axes after the colour and projection steps, or ``(None, reason)`` when the chain refuses the image."""
    if color != "none":
        if "C" not in axes:
            return None, f"the color step {color} needs an RGB image"
        axes = axes.replace("C", "")
    if projection != "none":
        axes = axes.replace("Z", "")
    return axes, ""


def _describe(axes: str) -> str:
    return {"YX": "grey 2D image", "ZYX": "3D stack", "YXC": "RGB image", "ZYXC": "RGB 3D stack"}.get(axes, axes)


def _fix(axes: str, accepted: set[str], colors: Sequence[str], projections: Sequence[str]) -> str:
    """What to add to the study so an image with ``axes`` reaches a model accepting ``accepted``."""
    fixes = []
    if "C" in axes and all("C" not in a for a in accepted) and all(c == "none" for c in colors):
        fixes.append("add a color step such as grayscale or stain (study.search.preprocess.color: [grayscale])")
    if "C" not in axes and any(c != "none" for c in colors) and all(c != "none" for c in colors):
        fixes.append("add 'none' to study.search.preprocess.color (its color steps need RGB), or drop this image")
    if "Z" in axes and all("Z" not in a for a in accepted) and all(p == "none" for p in projections):
        fixes.append("add a projection step (study.search.preprocess.projection: [max]) or cut 2D planes "
                     "(study.images.z / study.reshape.substack)")
    return "; ".join(fixes) or f"use a model that accepts {_describe(axes)}s or choose a channel (study.images.channel)"


def check_inputs(items: Sequence, space: SearchSpec) -> list[str]:
    """Raise :class:`InputError` for an image no declared chain brings to any model; return warnings.

    ``items`` need ``name``, ``axes`` and ``data`` (the loaded images).
    """
    from opsef_opt.segment import SEGMENTERS

    colors = [o.name for o in space.preprocess.get("color", ())] or ["none"]
    projections = [o.name for o in space.preprocess.get("projection", ())] or ["none"]
    accepted = {m.label: set(SEGMENTERS.get(m.family).input_axes) for m in space.models}
    partial: dict[tuple[str, str, str], list[str]] = defaultdict(list)
    for item in items:
        axes, shape = item.axes, tuple(item.data.shape)
        if axes not in _CHAIN_AXES or len(shape) != len(axes) or ("C" in axes and shape[-1] != 3):
            channels = f" with {shape[axes.index('C')]} channels" if "C" in axes and len(shape) == len(axes) else ""
            raise InputError(
                f"image {item.name}: axes {axes}, shape {shape}{channels}: the preprocessing needs YX, ZYX, YXC or "
                f"ZYXC (C = 3 RGB channels); pick one channel with study.images.channel or set study.images.axes")
        works = False
        for c in colors:
            for p in projections:
                out, reason = chain_axes(axes, c, p)
                for label, ok_axes in accepted.items():
                    if out is not None and out in ok_axes:
                        works = True
                    else:
                        why = reason or f"model {label} needs {' or '.join(sorted(ok_axes))}, gets {out}"
                        partial[(f"color={c}, projection={p}", label, why)].append(item.name)
        if not works:
            all_accepted = set().union(*accepted.values()) if accepted else set()
            raise InputError(
                f"image {item.name} ({_describe(axes)}, axes {axes}) cannot reach any model of the study through "
                f"the declared preprocessing: {_fix(axes, all_accepted, colors, projections)}")
    warnings = []
    for (chain, label, why), names in partial.items():
        shown = ", ".join(names[:3]) + (f" (+{len(names) - 3} more)" if len(names) > 3 else "")
        warnings.append(f"pipelines with {chain} and model {label} cannot run on {len(names)} image(s) "
                        f"[{shown}]: {why}; those trials will fail")
    return warnings
