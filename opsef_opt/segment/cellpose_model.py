"""Cellpose (Stringer et al., MouseLand) as an opsef-opt segmenter: family ``cellpose``.

Models
------
``init.model`` is either a built-in name or the path of a model file:

* Cellpose 3 (3.1 tested): ``nuclei``, ``cyto``, ``cyto2``, ``cyto3`` (and
  Cellpose's other built-in names, e.g. ``tissuenet_cp3``). Their weights
  are *never downloaded by opsef-opt*: they must already be in Cellpose's
  model folder (``~/.cellpose/models``, or the folder named by the
  environment variable ``CELLPOSE_LOCAL_MODELS_PATH``, which Cellpose reads
  when it is imported), under the names Cellpose uses: ``nucleitorch_0``,
  ``cytotorch_0``, ``cyto2torch_0``, ``cyto3``, ... from
  ``https://www.cellpose.org/models/<file>``. When the file is missing, the
  model is reported unavailable (:meth:`CellposeSegmenter.availability`)
  and construction raises :class:`~opsef_opt.segment.base.ModelUnavailable`
  at once, without touching the network (Cellpose itself would try to
  download, which hangs or fails on an offline machine).
* a model file: one trained with Cellpose (GUI, CLI, ``train_seg``) or with
  :func:`opsef_opt.train.cellpose_train.train_cellpose`. Its architecture
  (the U-Net widths) is read from the weight shapes, so small nets load as
  well as Cellpose's default one. A path that does not exist is an error
  (Cellpose 3.1 would warn and silently fall back to downloading ``cyto3``).
  A file name inside Cellpose's model folder (models added in the GUI) also
  works. Config: ``study.search.models.<label>.init.model=/path/to/model``.

Input: grayscale (Y, X) float images in [0, 1]; they are passed with
Cellpose ``channels=[0, 0]`` (segment the gray channel, no nuclear channel).
RGB/two-channel input is not supported here: add a colour step (grayscale
or stain separation) before the model.

Size: Cellpose resizes the image by ``rescale = diam_mean / diameter``,
where ``diam_mean`` is the object diameter the net was trained at (17 px for
``nuclei``, 30 px for the other built-ins, stored in a custom model file).
Give either ``diameter`` (object diameter in pixels in *your* image) or
OpSeF's ``scale`` (the resize factor itself: ``diameter = diam_mean /
scale``), not both. With neither, built-in models run at ``diam_mean``
(no resizing) and custom models at the mean diameter of their training
objects (``diam_labels`` in the file; Cellpose's own default), i.e. the
image is assumed to look like the training images. The size model
(automatic diameter estimation) is not used.

Confidence (``Segmentation.confidence``), per object, in [0, 1]: the mean
cell probability over the object's pixels times its flow agreement with the
final mask (:mod:`opsef_opt.segment.cellpose_confidence` says how and why).
Where the weights are found: :mod:`opsef_opt.segment.cellpose_weights`
(its public names are re-exported here).

Cellpose 4 (Cellpose-SAM)
-------------------------
Not what the project installs (it pins Cellpose 3.1). Its inference /
post-processing split was checked against Cellpose 4.2.1.1's own ``eval`` in a
separate environment, with a randomly initialised Cellpose-SAM network
(``bench/cellpose4_split.py``: equal labels, 243-512 objects); loading,
downloads and the confidence are otherwise untested there. The model is a
built-in name (``cpsam``; 4.2 adds ``cpsam_v2``, ``cpdino``, ``cpdino-vitb``:
file of that name in the same model folder, from
``https://huggingface.co/mouseland/cellpose-sam/resolve/main/<name>``) or a
Cellpose 4 model file, loaded with ``models.CellposeModel(pretrained_model=
<file>)``; ``eval`` takes no ``channels`` argument (the transformer takes up
to 3 channels and is channel-order invariant), and the size convention is
fixed at 30 px: ``diameter=None`` means no resizing, ``scale`` gives
``diameter = 30 / scale``. The Cellpose 3 names (``nuclei``, ``cyto3``...)
and Cellpose 3 files do not exist in Cellpose 4 (and ``cpsam`` not in 3):
asking for them gives :class:`ModelUnavailable` naming the version needed.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from opsef_opt.params import Param
from opsef_opt.segment.base import ModelUnavailable, Segmentation, Segmenter
from opsef_opt.segment.cellpose_confidence import (  # noqa: F401  (re-exported)
    FLOW_ERROR_SCALE, _cell_probability, _confidence, _flow_error,
)
from opsef_opt.segment.cellpose_weights import (  # noqa: F401  (re-exported)
    CP3_NAMES, CP3_URL, CP4_NAMES, CP4_URL, ENV_DIR, MAIN_NAMES, MissingBuiltin, _download_builtin, _major,
    cellpose_model_dir, cellpose_version, infer_widths, resolve_model,
)
from opsef_opt.segment.device import DEVICES
from opsef_opt.segment.registry import register_segmenter

__all__ = ["CellposeSegmenter", "cellpose_model_dir", "cellpose_version", "resolve_model", "infer_widths"]


@register_segmenter
class CellposeSegmenter(Segmenter):
    """Cellpose 3 (built-in ``nuclei``/``cyto*`` or a model file) or Cellpose 4 (``cpsam``)."""

    family = "cellpose"
    init_params = (
        Param("model", "str", "nuclei",
              help="built-in name (nuclei, cyto, cyto2, cyto3; cpsam with cellpose 4) or path of a model file"),
        Param("device", "categorical", "auto", choices=DEVICES, help="auto uses a CUDA GPU when torch sees one"),
    )
    params = (
        Param("diameter", "float", None, low=1.0, high=1000.0, nullable=True,
              help="object diameter in pixels (null: the model's own size); exclusive with scale"),
        Param("scale", "float", None, low=0.05, high=10.0, nullable=True,
              help="OpSeF resize factor, diameter = diam_mean / scale; exclusive with diameter"),
        Param("flow_threshold", "float", 0.4, low=0.0, high=3.0,
              help="max flow error of a kept object (higher keeps more, less regular, objects)"),
        Param("cellprob_threshold", "float", 0.0, low=-6.0, high=6.0,
              help="cell probability logit threshold (lower finds more and larger objects)"),
        Param("normalize", "bool", True, help="percentile-normalise (1-99%) the image first"),
        Param("invert", "bool", False, help="invert intensities (dark objects on a bright background)"),
    )

    @classmethod
    def availability(cls, model: str = "nuclei", device: str = "auto") -> tuple[bool, str]:
        try:
            found = resolve_model(model)
        except ModelUnavailable as e:
            return False, str(e)
        return True, f"weights {found.path}"

    def __init__(self, model: str = "nuclei", device: str = "auto") -> None:
        super().__init__(model=model, device=device)
        try:
            found = resolve_model(model)  # before importing cellpose: fails fast when offline
        except MissingBuiltin as missing:
            _download_builtin(model, missing)
            found = resolve_model(model)
        import torch
        from cellpose import models

        from opsef_opt.segment.device import torch_device

        self._device = torch_device(device)
        dev = torch.device(self._device)
        gpu = self._device == "cuda"
        self.version = cellpose_version() or "?"
        self.cp4 = _major(self.version) >= 4
        self.path = found.path
        if self.cp4:
            try:
                self._model = models.CellposeModel(gpu=gpu, device=dev, pretrained_model=str(found.path))
            except Exception as e:  # e.g. a Cellpose 3 file, or not a model at all
                raise ModelUnavailable(
                    f"cellpose model file {found.path} could not be read as a Cellpose {self.version} model: {e}"
                ) from None
            self.diam_mean = 30.0
            self.default_diameter: float | None = None  # Cellpose 4: no resizing by default
            self.widths = None
        elif found.kind == "builtin":
            if found.path.parent != Path(models.MODEL_DIR):  # cellpose was imported with another folder
                raise ModelUnavailable(
                    f"cellpose model {model!r}: cellpose was imported with MODEL_DIR={models.MODEL_DIR} "
                    f"but the weights were found in {found.path.parent}; set {ENV_DIR} before starting Python"
                )
            self._model = models.CellposeModel(gpu=gpu, device=dev, model_type=model)
            self.diam_mean = float(self._model.diam_mean)
            self.default_diameter = self.diam_mean
            self.widths = list(self._model.nbase)
        else:
            self._model = self._load_file(models, found.path, dev, gpu)
            self.diam_mean = float(self._model.diam_mean)
            self.default_diameter = float(self._model.diam_labels)
            self.widths = list(self._model.nbase)

    @staticmethod
    def _load_file(models, path: Path, dev, gpu: bool):
        """A Cellpose 3 model from a file, with the architecture its weights imply."""
        import torch
        from cellpose.resnet_torch import CPnet

        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(state, dict):
                raise TypeError(type(state).__name__)
        except Exception as e:
            raise ModelUnavailable(f"cellpose model file {path} could not be read as a Cellpose model: {e}") from None
        if "W2" in state:
            raise ModelUnavailable(
                f"cellpose model file {path} is a Cellpose 4 (Cellpose-SAM) model; installed: cellpose 3: "
                f"install cellpose>=4 or use a Cellpose 3 model"
            )
        try:
            widths = infer_widths(state)
            nout = int(state["output.2.weight"].shape[0])
        except KeyError as e:
            raise ModelUnavailable(f"cellpose model file {path} is not a Cellpose 3 model (no {e.args[0]})") from None
        cp = models.CellposeModel(gpu=gpu, device=dev, pretrained_model=False, nchan=widths[0])
        net = CPnet(list(widths), nout, sz=3, mkldnn=cp.mkldnn, max_pool=True).to(dev)
        net.load_state_dict(state, strict=True)
        net.eval()
        cp.net, cp.net_ortho = net, None
        cp.nbase, cp.nchan, cp.nclasses = list(widths), widths[0], nout
        cp.pretrained_model = str(path)
        cp.diam_mean = float(net.diam_mean.data.cpu().numpy()[0])
        cp.diam_labels = float(net.diam_labels.data.cpu().numpy()[0])
        return cp

    @property
    def device(self) -> str:
        return self._device

    def eval_diameter(self, diameter: float | None, scale: float | None) -> float | None:
        """The diameter passed to Cellpose for the given ``diameter``/``scale`` parameters."""
        if diameter is not None and scale is not None:
            raise ValueError(
                f"cellpose: give either diameter (object diameter in pixels) or scale "
                f"(resize factor, diameter = diam_mean / scale = {self.diam_mean:g} / scale), not both; "
                f"got diameter={diameter}, scale={scale}"
            )
        if scale is not None:
            return self.diam_mean / float(scale)
        if diameter is not None:
            return float(diameter)
        return self.default_diameter

    # diameter/scale set the resize factor, normalize and invert change the network's input;
    # flow_threshold and cellprob_threshold act on the flows and cell probability it returns
    inference_params = ("diameter", "scale", "normalize", "invert")

    def _eval_kwargs(self, d: float | None, normalize: bool) -> dict[str, Any]:
        kwargs: dict[str, Any] = dict(diameter=d, normalize=bool(normalize))
        if not self.cp4:
            kwargs["channels"] = [0, 0]
        return kwargs

    def infer(self, image: np.ndarray, diameter: float | None = None, scale: float | None = None,
              normalize: bool = True, invert: bool = False, flow_threshold: float = 0.4,
              cellprob_threshold: float = 0.0, **_: Any) -> dict[str, np.ndarray]:
        """Flows ``dP`` (2, Y, X) and ``cellprob`` (Y, X) at the image's size, and the diameter used.

        The network only (``compute_masks=False``), as ``eval`` runs it, in Cellpose 3 and 4.
        """
        img = np.asarray(image, dtype=np.float32)
        if img.ndim != 2:
            raise ValueError(f"cellpose expects a 2D (Y, X) image, got shape {img.shape}")
        d = self.eval_diameter(diameter, scale)
        if invert:  # here, not in Cellpose: Cellpose ignores invert when normalize is False
            img = 1.0 - img
        kwargs = self._eval_kwargs(d, normalize)
        _masks, flows, _styles = self._model.eval(img, compute_masks=False, **kwargs)[:3]
        return {"dP": np.asarray(flows[1]), "cellprob": np.asarray(flows[2]),
                "diameter": np.asarray(np.nan if d is None else d, np.float64)}

    def postprocess(self, raw: dict[str, np.ndarray], image: np.ndarray, flow_threshold: float = 0.4,
                    cellprob_threshold: float = 0.0, **_: Any) -> Segmentation:
        dP, cellprob = raw["dP"], raw["cellprob"]
        d = float(raw["diameter"])
        d = None if np.isnan(d) else d
        labels = self._masks(dP, cellprob, d, float(flow_threshold), float(cellprob_threshold))
        flows = [None, dP, cellprob]
        prob = _cell_probability(labels, flows)
        errors = _flow_error(labels, flows, getattr(self._model, "device", None)) if prob else None
        return Segmentation(labels, _confidence(prob, errors),
                            {"diameter": d, "cell_probability": prob, "flow_error": errors})

    def _masks(self, dP: np.ndarray, cellprob: np.ndarray, d: float | None, flow_threshold: float,
               cellprob_threshold: float) -> np.ndarray:
        """``eval``'s mask step for one 2D image, with its defaults (``niter`` from the rescale)."""
        h, w = cellprob.shape
        if self.cp4:  # Cellpose 4.x eval: rescale = 30 / diameter (none: 1), niter = int(200 / rescale)
            rescale = 30.0 / d if d is not None and d > 0 else 1.0
            masks = self._model._compute_masks((1, h, w), dP[:, None], cellprob[None], flow_threshold=flow_threshold,
                                               cellprob_threshold=cellprob_threshold, min_size=15,
                                               max_size_fraction=0.4, niter=int(200 / rescale),
                                               stitch_threshold=0.0, do_3D=False)
            return np.asarray(masks).squeeze().astype(np.int32, copy=False)
        if d is not None and d > 0:
            rescale = self.diam_mean / d
        else:
            rescale = self.diam_mean / self._model.diam_labels
        niter = 1 / rescale * 200  # eval: resample=True, niter=None
        masks = self._model._compute_masks((1, h, w), dP[:, None], cellprob[None], flow_threshold=flow_threshold,
                                           cellprob_threshold=cellprob_threshold, interp=True, min_size=15,
                                           max_size_fraction=0.4, niter=niter)
        return np.asarray(masks).squeeze().astype(np.int32, copy=False)
