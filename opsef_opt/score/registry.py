"""Registry of trial scores.

A score maps one image's result (labels, the preprocessed image, the ground
truth if any) to named metrics, one of which is the score value that the
search maximises. Later scores (human tags, validated proxies) register here.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np

from opsef_opt.registry import Registry

__all__ = ["SCORES", "ScoreFn", "register_score", "ImageResult"]


@dataclass(frozen=True)
class ImageResult:
    """What a score sees of one image: the segmentation and its context."""

    labels: np.ndarray
    image: np.ndarray  # preprocessed image the model saw, float32 in [0, 1]
    truth: np.ndarray | None = None


@dataclass(frozen=True)
class ScoreFn:
    name: str
    func: Callable[..., Mapping[str, float]]
    key: str  # which returned metric is the score
    needs_truth: bool
    doc: str


SCORES: Registry[ScoreFn] = Registry("score", "opsef_opt.scores")


def register_score(name: str, key: str, needs_truth: bool = False):
    """Decorator registering ``func(result: ImageResult, **options) -> {metric: value}``."""

    def deco(func):
        doc = (func.__doc__ or "").strip().splitlines()[0] if func.__doc__ else ""
        SCORES.register(name, ScoreFn(name, func, key, needs_truth, doc))
        return func

    return deco
