"""The segmenter interface every model family implements.

A segmenter is constructed once per process with its *init* settings (which
weights, which device) and then called many times with *tunable* parameters.
Both are declared as :class:`~opsef_opt.params.Param` so configs are validated
and the search space is built without model-specific code in the search.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from opsef_opt.params import Param

__all__ = ["Segmenter", "Segmentation", "ModelUnavailable"]


class ModelUnavailable(RuntimeError):
    """The model cannot be used here (missing weights or library); message says what to do."""


@dataclass
class Segmentation:
    """Result of one segmentation.

    labels : int32 array (0 = background), same Y, X shape as the input.
    confidence : optional per-object confidence keyed by label id (e.g.
        StarDist object probabilities), kept for scoring.
    extra : optional model-specific arrays (e.g. a probability map).
    """

    labels: np.ndarray
    confidence: dict[int, float] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class Segmenter(ABC):
    """Base class of all model families.

    Subclasses set ``family`` (registry name), ``params`` (tunable at every
    call) and ``init_params`` (fixed per model instance), implement
    :meth:`segment`, and may override :meth:`availability` to say whether
    their weights/libraries are present without loading them.
    """

    family: ClassVar[str]
    params: ClassVar[tuple[Param, ...]] = ()
    init_params: ClassVar[tuple[Param, ...]] = ()
    #: axes the model accepts after preprocessing ("YX", or "YX" and "YXC")
    input_axes: ClassVar[tuple[str, ...]] = ("YX",)

    def __init__(self, **init: Any) -> None:
        self.init = init

    @classmethod
    def availability(cls, **init: Any) -> tuple[bool, str]:
        """(available, reason) without loading the model."""
        return True, "no weights needed"

    @property
    def device(self) -> str:
        return "cpu"

    @abstractmethod
    def segment(self, image: np.ndarray, **params: Any) -> Segmentation:
        """Segment a float32 image in [0, 1] (axes in ``input_axes``)."""

    # -- whole-image statistics for tiles (apply mode) ---------------------------------------------
    # A model that derives something from the whole image (a threshold, a normalisation) would
    # derive it per tile when a large image is cut into tiles, and tiles would disagree. Such a
    # model says what it measures: ``stats_input`` is the image the statistic is taken on (linear
    # in the image), ``image_stats`` computes it from a sample of the whole image's pixels, and
    # ``segment`` accepts the result as ``stats=``. The default: nothing image-wide to share.

    def stats_input(self, image: np.ndarray, **params: Any) -> np.ndarray:
        """The image whose pixels :meth:`image_stats` summarises (must commute with affine rescaling)."""
        return image

    def image_stats(self, sample: np.ndarray, **params: Any) -> dict[str, float]:
        """Image-wide statistics from a 1D sample of :meth:`stats_input` pixels; {} when not needed."""
        return {}

    def __call__(self, image: np.ndarray, axes: str, stats: dict[str, float] | None = None,
                 **params: Any) -> Segmentation:
        """Check the input axes, fill parameter defaults and segment."""
        if axes not in self.input_axes:
            raise ValueError(
                f"model {self.family!r} expects an image with axes {' or '.join(self.input_axes)}, "
                f"got {axes}: add a projection step for stacks or a color step "
                f"(grayscale/stain) for RGB images"
            )
        full = {p.name: p.default for p in self.params}
        full.update(params)
        result = self.segment(image, **full, **({"stats": stats} if stats else {}))
        labels = np.asarray(result.labels)
        if labels.shape != image.shape[:2]:
            raise RuntimeError(
                f"model {self.family!r} returned labels of shape {labels.shape} for an image of shape {image.shape}"
            )
        result.labels = labels.astype(np.int32, copy=False)
        return result
