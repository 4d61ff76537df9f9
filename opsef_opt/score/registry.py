"""Registry of unsupervised proxy scores, and what a score sees of one image.

A proxy maps one image's result to a number in [0, 1] (higher is better, NaN
when it does not apply, e.g. model confidence for a model that gives none),
plus optional detail metrics. Every registered proxy is computed and logged
for every trial, whatever the objective, so that proxies can be validated
against ground truth and used as features of the learned tag model. Adding a
proxy is one file that calls :func:`register_proxy`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np

from opsef_opt.params import Param
from opsef_opt.registry import Registry

__all__ = ["PROXIES", "Proxy", "register_proxy", "ImageResult"]


@dataclass(frozen=True)
class ImageResult:
    """What a score sees of one image: the segmentation and its context.

    Attributes
    ----------
    labels : the instance labels (0 = background), 2D or 3D.
    image : the preprocessed image the model saw, float32 in [0, 1] (may have a channel axis).
    truth : ground-truth instance labels, same shape as ``labels``, if the study has them.
    raw : reference intensities, float32 in [0, 1], same shape as ``labels``:
        the raw image (channels averaged), the same for every candidate
        pipeline, so intensity-based proxies compare candidates fairly.
    confidence : per-object model confidence keyed by label id, if the model gives one.
    consensus : instance labels agreed by the other candidate pipelines on this image, if any.
    source, source_axes : the item's input array before preprocessing, and its axes.
    segment : runs this trial's whole pipeline (preprocessing + model) on an
        array shaped like ``source`` and returns its labels: what the
        stability proxy perturbs.
    """

    labels: np.ndarray
    image: np.ndarray
    truth: np.ndarray | None = None
    raw: np.ndarray | None = None
    confidence: Mapping[int, float] | None = None
    consensus: np.ndarray | None = None
    source: np.ndarray | None = None
    source_axes: str = "YX"
    segment: Callable[[np.ndarray], np.ndarray] | None = None


@dataclass(frozen=True)
class Proxy:
    """A registered unsupervised score.

    ``func(result: ImageResult, **options) -> {name: value, "name.detail": ...}``;
    ``weight`` is its default weight in the combined proxy score, ``params``
    declares its options (validated from ``study.score.proxies.<name>``), and
    ``cost`` is ``"cheap"`` or ``"model"`` (it runs the pipeline again, through
    ``ImageResult.segment``; the search provides that function only when a
    ``"model"`` proxy is enabled, so such proxies cost nothing otherwise).
    """

    name: str
    func: Callable[..., Mapping[str, float]]
    weight: float
    params: tuple[Param, ...] = field(default_factory=tuple)
    cost: str = "cheap"
    doc: str = ""


PROXIES: Registry[Proxy] = Registry("proxy", "opsef_opt.proxies")


def register_proxy(name: str, weight: float = 0.0, params: Sequence[Param] = (), cost: str = "cheap"):
    """Decorator registering a proxy function under ``name``."""

    def deco(func):
        doc = (func.__doc__ or "").strip().splitlines()[0] if func.__doc__ else ""
        PROXIES.register(name, Proxy(name, func, float(weight), tuple(params), cost, doc))
        return func

    return deco
