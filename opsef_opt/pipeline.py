"""One pipeline: reshape, preprocessing steps and one model call, as a value you can save, load and run.

The search builds these from Optuna trials, ``best.yaml`` stores one, the
apply mode and notebooks run one. Running it always applies the reshaping
(binning, scaling) the study searched with, so a pipeline gives the labels the
study scored, whoever calls it::

    >>> from opsef_opt.pipeline import Pipeline
    >>> p = Pipeline.from_dict({"preprocess": [{"slot": "filter", "name": "gaussian", "sigma": 1.0}],
    ...                         "model": {"family": "classical", "params": {"threshold": "otsu"}}})
    >>> p.label
    'gaussian(sigma=1.0) | classical(threshold=otsu)'
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from opsef_opt.config import ConfigError, ModelSpec, ReshapeSpec

__all__ = ["Pipeline", "PipelineResult", "guess_axes"]


def guess_axes(image: np.ndarray) -> str:
    """Axes of an array given without them: YX, YXC (last axis of 3 or 4 colours) or ZYX.

    Examples
    --------
    >>> guess_axes(np.zeros((64, 64, 3)))
    'YXC'
    """
    if image.ndim == 2:
        return "YX"
    if image.ndim == 3:
        return "YXC" if image.shape[-1] in (3, 4) else "ZYX"
    if image.ndim == 4:
        return "ZYXC" if image.shape[-1] in (3, 4) else "CZYX"
    raise ValueError(f"an image with {image.ndim} axes needs its axes named, e.g. axes='TZYX'")


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    return value


@dataclass
class PipelineResult:
    """What one run of a pipeline gives: the labels and what they were computed from.

    ``labels`` lie on the grid of ``input`` (the image after reshaping);
    ``image`` is the preprocessed image the model saw (axes ``axes``);
    ``confidence`` the model's per-object confidence and ``extra`` its
    intermediate arrays (e.g. a U-Net's probability map), when it gives them.
    """

    labels: np.ndarray
    image: np.ndarray
    axes: str
    input: np.ndarray
    input_axes: str
    confidence: dict[int, float] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Pipeline:
    """A concrete pipeline: reshaping, ordered preprocessing steps and one model call."""

    steps: tuple[tuple[str, str, dict], ...]  # (slot, step name, params)
    step_labels: tuple[tuple[str, str], ...]  # (slot, label of the searched option)
    model: ModelSpec
    model_params: dict[str, Any]
    reshape: ReshapeSpec = field(default_factory=ReshapeSpec)

    # ------------------------------------------------------------------ names
    @property
    def flat(self) -> dict[str, Any]:
        """All settings as flat readable names (for MLflow params and tables)."""
        out: dict[str, Any] = {}
        for (slot, name, params), (_, label) in zip(self.steps, self.step_labels):
            out[f"pre.{slot}"] = label if name != "none" or not params else name
            for k, v in params.items():
                out[f"pre.{slot}.{k}"] = v
        out["model"] = self.model.label
        out["model.family"] = self.model.family
        for k, v in self.model.init.items():
            out[f"model.init.{k}"] = v
        for k, v in self.model_params.items():
            out[f"model.{k}"] = v
        return out

    @property
    def preprocess_label(self) -> str:
        return " > ".join(label for _, label in self.step_labels if label != "none") or "none"

    @property
    def label(self) -> str:
        """One readable line with the values used, e.g. ``median(size=3) > clahe(clip_limit=0.02) | classical(min_distance=5)``.

        (:attr:`preprocess_label` names the searched options, e.g. a tuned
        ``gaussian(sigma=0.5..2.0)``; this line gives the sigma this pipeline used.)
        """
        from opsef_opt.preprocess import step_label

        pre = " > ".join(step_label(name, params) for _, name, params in self.steps if name != "none") or "none"
        return f"{pre} | {step_label(self.model.label, self.model_params)}"

    # ------------------------------------------------------------------ files
    def to_dict(self, provenance: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """A plain, YAML-ready mapping (the format of ``best.yaml``)."""
        node: dict[str, Any] = {"source": dict(provenance)} if provenance is not None else {}
        node.update({
            "pipeline": self.label,
            "reshape": asdict(self.reshape),
            "preprocess": [{"slot": slot, "name": name, **params} for slot, name, params in self.steps],
            "model": {"label": self.model.label, "family": self.model.family,
                      "init": dict(self.model.init), "params": dict(self.model_params)},
        })
        return _plain(node)

    def to_yaml(self, path: str | Path, provenance: Mapping[str, Any] | None = None, header: str = "") -> Path:
        """Write the pipeline as YAML (``header``: comment lines put on top); returns the path."""
        import yaml

        path = Path(path)
        text = "".join(f"# {line}\n" for line in header.splitlines())
        path.write_text(text + yaml.safe_dump(self.to_dict(provenance), sort_keys=False))
        return path

    @classmethod
    def from_dict(cls, node: Mapping[str, Any], where: str = "pipeline") -> "Pipeline":
        """A pipeline from the mapping :meth:`to_dict` writes; every step and parameter is checked.

        Raises :class:`~opsef_opt.config.ConfigError` naming ``where`` and the bad key.
        """
        from opsef_opt.params import ParamError, check_kwargs
        from opsef_opt.preprocess import get_step, step_label
        from opsef_opt.segment import SEGMENTERS

        try:
            steps, labels = [], []
            for s in node.get("preprocess") or []:
                s = dict(s)
                slot, name = s.pop("slot"), s.pop("name")
                params = check_kwargs(get_step(slot, name).params, s, f"{where}: preprocess {slot}.{name}")
                steps.append((slot, name, params))
                labels.append((slot, step_label(name, params)))
            m = node["model"]
            family = SEGMENTERS.get(m["family"])
            params = check_kwargs(family.params, dict(m.get("params") or {}), f"{where}: model.params")
            model = ModelSpec(m.get("label", m["family"]), m["family"], dict(m.get("init") or {}), params, {}, {})
            rs = node.get("reshape") or {}
            reshape = ReshapeSpec(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in rs.items()})
        except ConfigError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError, ParamError) as e:
            raise ConfigError(f"{where}: not a readable pipeline ({type(e).__name__}: {e})") from None
        return cls(tuple(steps), tuple(labels), model, params, reshape)

    @classmethod
    def from_yaml(cls, path: str | Path) -> "Pipeline":
        """Read a pipeline file (``best.yaml``, ``best_<stage>.yaml`` or your edited copy)."""
        import yaml

        try:
            node = yaml.safe_load(Path(path).read_text())
        except (OSError, yaml.YAMLError) as e:
            raise ConfigError(f"{path}: not a readable pipeline file ({type(e).__name__}: {e})") from None
        if not isinstance(node, Mapping):
            raise ConfigError(f"{path}: not a readable pipeline file (expected a mapping with 'model')")
        return cls.from_dict(node, str(path))

    # ------------------------------------------------------------------ running
    # run = prepare -> preprocess -> segment. Every caller goes through these methods: the search
    # (per item, with its caches), the stability proxy's re-runs, the apply mode's tiles, notebooks.
    # The study's items (``load_items``) and the apply mode's sources (``list_sources``) are read
    # prepared already (binned and scaled by the same ``rescale_float`` + ``io.reshape.resize``,
    # before tiles and Z blocks are cut), so those callers start at :meth:`preprocess`; an array as
    # recorded starts at :meth:`prepare` (or :meth:`run`), so the reshape happens exactly once.

    def prepare(self, image: np.ndarray, axes: str | None = None) -> tuple[np.ndarray, str]:
        """``image`` as the study's images were read: (binned and scaled array, its axes).

        Axes are guessed when not given (:func:`guess_axes`) and checked; a
        float image is first rescaled into [0, 1] (as images are read), then
        binned and scaled by :attr:`reshape`. Tiling and Z blocks cut
        datasets, not arrays: a pipeline runs on the array it is given.
        """
        from opsef_opt.io.dataset import rescale_float
        from opsef_opt.io.reshape import resize

        image = np.asarray(image)
        axes = axes or guess_axes(image)
        if len(axes) != image.ndim:
            raise ValueError(f"axes {axes!r} do not match an image with {image.ndim} dimensions {image.shape}")
        return resize(rescale_float(image), axes, self.reshape.bin, self.reshape.scale), axes

    def preprocess(self, image: np.ndarray, axes: str,
                   ranges: list[tuple[float, float] | None] | None = None,
                   record: list[tuple[float, float]] | None = None) -> tuple[np.ndarray, str]:
        """The preprocessing chain on a prepared image: (float32 image in [0, 1], its axes).

        ``ranges`` / ``record``: the normalisations' value ranges to use / found
        (:func:`opsef_opt.preprocess.run_chain`; the apply mode scales tiles like their image).
        """
        from opsef_opt.preprocess import run_chain

        return run_chain(image, axes, self.steps, ranges=ranges, record=record)

    def segmenter(self):
        """The model (loaded once per process and shared, as in the search)."""
        from opsef_opt.segment import load_segmenter

        return load_segmenter(self.model.family, **self.model.init)

    def segment(self, image: np.ndarray, axes: str, stats: dict[str, float] | None = None, lookup=None):
        """The model with this pipeline's parameters on a preprocessed image: a :class:`Segmentation`.

        ``stats``: image-wide model statistics (a tile of a larger image);
        ``lookup(inference_params, compute)``: where the forward pass's raw
        output comes from (the search's inference cache; see
        :meth:`~opsef_opt.segment.base.Segmenter.cached_call`).
        """
        model = self.segmenter()
        if lookup is None:
            return model(image, axes, stats=stats, **self.model_params)
        return model.cached_call(image, axes, lookup, stats=stats, **self.model_params)

    def run(self, image: np.ndarray, axes: str | None = None) -> PipelineResult:
        """Reshape, preprocess and segment ``image``; the labels and what they came from."""
        data, axes = self.prepare(image, axes)
        pre, pre_axes = self.preprocess(data, axes)
        seg = self.segment(pre, pre_axes)
        return PipelineResult(seg.labels, pre, pre_axes, data, axes, seg.confidence, seg.extra)

    def __call__(self, image: np.ndarray, axes: str | None = None) -> np.ndarray:
        """The int32 label image of ``image`` (on the reshaped grid; see :meth:`run` for more)."""
        return self.run(image, axes).labels
