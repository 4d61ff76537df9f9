"""The segmenter interface every model family implements.

A segmenter is constructed once per process with its *init* settings (which
weights, which device) and then called many times with *tunable* parameters.
Both are declared as :class:`~opsef_opt.params.Param` so configs are validated
and the search space is built without model-specific code in the search.

Inference and post-processing
-----------------------------
A network's forward pass is by far the dearest part of a call, and the
parameters users search most (thresholds, seed distances, NMS) act only on
its output. So a family splits a call in two:

* :meth:`Segmenter.infer` ``(image, **inference params) -> raw`` runs the
  network and returns its raw output as a dict of numpy arrays (probability
  maps, flows, distances; scalars as 0-d arrays);
* :meth:`Segmenter.postprocess` ``(raw, image, **post params) -> Segmentation``
  turns that output into labels;

and :meth:`Segmenter.segment` is ``postprocess(infer(...))``, so every caller
of ``segment``/``__call__`` gets the same labels as before. Which tunable
parameters change the forward pass is declared in ONE place per family, the
class attribute :attr:`Segmenter.inference_params` (names from ``params``;
all other ``params`` act only on the output). Init settings (weights, model
files, device) always belong to the inference side. The search caches the
raw output per distinct (preprocessed image, family, init, inference
params) (:mod:`opsef_opt.search.infercache`), so a post-processing setting
costs no forward pass. A family without a network (``classical``) sets
``has_network = False``: all its parameters are post-processing and its raw
output is empty (the preprocessed image itself is the input). A family that
only implements ``segment`` (e.g. a plugin written before the split) still
works: it is run whole, as before (:attr:`Segmenter.splits` is False).
"""
from __future__ import annotations

from abc import ABC
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
    extra : optional model-specific arrays and values (e.g. a U-Net's
        probability map, StarDist's thresholds), for inspection:
        :meth:`Pipeline.run <opsef_opt.pipeline.Pipeline.run>` hands them
        on as ``PipelineResult.extra``. Scores do not read them and the
        search's segmentation cache does not keep them.
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
    #: names of ``params`` that change the network's input or forward pass (the rest act on its output only)
    inference_params: ClassVar[tuple[str, ...]] = ()
    #: False for a family without a network: nothing is worth caching between post-processing settings
    has_network: ClassVar[bool] = True
    #: bump when the arrays :meth:`infer` returns change meaning (cached raw outputs of older versions are ignored)
    raw_version: ClassVar[str] = "1"
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

    # -- inference / post-processing split ---------------------------------------------------------

    #: whether this family implements :meth:`infer` + :meth:`postprocess` (else only ``segment``);
    #: set for each family class when it is defined
    splits: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.splits = cls.infer is not Segmenter.infer and cls.postprocess is not Segmenter.postprocess

    def split_params(self, params: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """(inference params, post-processing params) of one full parameter set (``stats`` goes to neither)."""
        names = set(self.inference_params) if self.splits else {k for k in params if k != "stats"}
        inference = {k: v for k, v in params.items() if k in names}
        post = {k: v for k, v in params.items() if k not in names and k != "stats"}
        return inference, post

    def infer(self, image: np.ndarray, stats: dict[str, float] | None = None,
              **inference_params: Any) -> dict[str, np.ndarray]:
        """The network's raw output for ``image`` (a dict of arrays), from the inference params only."""
        raise NotImplementedError(f"model family {self.family!r} does not split inference from post-processing")

    def postprocess(self, raw: dict[str, np.ndarray], image: np.ndarray, stats: dict[str, float] | None = None,
                    **post_params: Any) -> Segmentation:
        """Labels (and confidences) from :meth:`infer`'s raw output and the post-processing params."""
        raise NotImplementedError(f"model family {self.family!r} does not split inference from post-processing")

    def segment(self, image: np.ndarray, **params: Any) -> Segmentation:
        """Segment a float32 image in [0, 1] (axes in ``input_axes``): ``postprocess(infer(...))``."""
        if not self.splits:
            raise NotImplementedError(f"model family {self.family!r} implements neither segment nor infer/postprocess")
        stats = params.pop("stats", None)
        inference, post = self.split_params(params)
        raw = self.infer(image, **inference, **({"stats": stats} if stats else {}))
        return self.postprocess(raw, image, **post, **({"stats": stats} if stats else {}))

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
        result = self.segment(self._check_axes(image, axes), **self.full_params(params),
                              **({"stats": stats} if stats else {}))
        return self._finish(result, image)

    def full_params(self, params: dict[str, Any]) -> dict[str, Any]:
        """``params`` with the declared defaults filled in."""
        full = {p.name: p.default for p in self.params}
        full.update(params)
        return full

    def cached_call(self, image: np.ndarray, axes: str, lookup, stats: dict[str, float] | None = None,
                    **params: Any) -> Segmentation:
        """Like ``__call__``, but the forward pass goes through ``lookup(inference_params, compute)``.

        ``lookup`` returns the raw output for the inference params, calling
        ``compute()`` (which runs :meth:`infer`) only when it has none. A family
        that does not split (or has no network) is run whole, as by ``__call__``.
        """
        if not (self.splits and self.has_network):
            return self(image, axes, stats=stats, **params)
        self._check_axes(image, axes)
        extra = {"stats": stats} if stats else {}
        inference, post = self.split_params(self.full_params(params))
        raw = lookup(inference, lambda: self.infer(image, **inference, **extra))
        return self._finish(self.postprocess(raw, image, **post, **extra), image)

    def _check_axes(self, image: np.ndarray, axes: str) -> np.ndarray:
        if axes not in self.input_axes:
            raise ValueError(
                f"model {self.family!r} expects an image with axes {' or '.join(self.input_axes)}, "
                f"got {axes}: add a projection step for stacks or a color step "
                f"(grayscale/stain) for RGB images"
            )
        return image

    def _finish(self, result: Segmentation, image: np.ndarray) -> Segmentation:
        labels = np.asarray(result.labels)
        if labels.shape != image.shape[:2]:
            raise RuntimeError(
                f"model {self.family!r} returned labels of shape {labels.shape} for an image of shape {image.shape}"
            )
        result.labels = labels.astype(np.int32, copy=False)
        return result
