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
cell probability (sigmoid of Cellpose's ``cellprob`` output, ``flows[2]``)
over the object's pixels times its flow agreement ``clip(1 - flow_error /
0.4, 0, 1)``. The flow error is Cellpose's own per-object quality measure
(``cellpose.metrics.flow_error``: mean squared difference between the
network's flows and the flows of the object's final mask; ``flow_threshold``
removes objects by it, 0.4 by default, hence the scale: an object at the
default limit has agreement 0). It is recomputed on the returned masks, which
it only reads (Cellpose computes it internally but does not return it): a
small fraction of the call (0.01-0.05 s for 10-30 objects on 256 x 256,
0.1-0.4 s for ~115 objects on 512 x 512 on 2 shared CPU cores, 2-7 % of
the Cellpose call with the tiny model). ``extra`` keeps both parts (``cell_probability``, ``flow_error``).
Why both: with the tiny self-trained Cellpose model on the shared GT sets
(dsb2018_256, mitocheck, bbbc007_sparse, kromp2020 dense and low-S/N; 25
candidates each: 5 preprocessings x diameter, cellprob and flow thresholds),
the cell probability alone ranked candidates poorly (Spearman rho with GT F1
0.22 on average, regret 0.44), the product ranked them well: held-out rho
0.50 / 0.80 / 0.84 / 0.79 / 0.35, regret 0.05 / 0 / 0.08 / 0.02 / 0.18, the
scale 0.4 chosen by leave-one-dataset-out among 2, 1.2, 0.8, 0.6 and 0.4
(and no flow term) in every fold (the grid was widened after a first look
at 2 and 0.8; 0.4 is also Cellpose's own default limit). Only 5 sets and a
tiny model: a pretrained Cellpose may behave otherwise.

Cellpose 4 (Cellpose-SAM)
-------------------------
Not installed or tested here; the adapter follows Cellpose 4's API when its
major version is 4: the model is ``cpsam`` (file ``cpsam`` in the same
model folder, from
``https://huggingface.co/mouseland/cellpose-sam/resolve/main/cpsam``) or a
Cellpose 4 model file, loaded with ``models.CellposeModel(pretrained_model=
<file>)``; ``eval`` takes no ``channels`` argument (the transformer takes up
to 3 channels and is channel-order invariant), and the size convention is
fixed at 30 px: ``diameter=None`` means no resizing, ``scale`` gives
``diameter = 30 / scale``. The Cellpose 3 names (``nuclei``, ``cyto3``...)
and Cellpose 3 files do not exist in Cellpose 4 (and ``cpsam`` not in 3):
asking for them gives :class:`ModelUnavailable` naming the version needed.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from opsef_opt.params import Param
from opsef_opt.segment.download import host_answers
from opsef_opt.segment.base import ModelUnavailable, Segmentation, Segmenter
from opsef_opt.segment.device import DEVICES
from opsef_opt.segment.registry import register_segmenter

__all__ = ["CellposeSegmenter", "cellpose_model_dir", "cellpose_version", "resolve_model", "infer_widths"]

CP3_URL = "https://www.cellpose.org/models"
CPSAM_URL = "https://huggingface.co/mouseland/cellpose-sam/resolve/main/cpsam"
ENV_DIR = "CELLPOSE_LOCAL_MODELS_PATH"

#: Cellpose 3.1's built-in model names (cellpose.models.MODEL_NAMES)
CP3_NAMES = (
    "cyto3", "nuclei", "cyto2_cp3", "tissuenet_cp3", "livecell_cp3", "yeast_PhC_cp3",
    "yeast_BF_cp3", "bact_phase_cp3", "bact_fluor_cp3", "deepbacs_cp3", "cyto2", "cyto", "CPx",
    "transformer_cp3", "neurips_cellpose_default", "neurips_cellpose_transformer",
    "neurips_grayscale_cyto2", "CP", "TN1", "TN2", "TN3", "LC1", "LC2", "LC3", "LC4",
)
CP4_NAMES = ("cpsam",)
#: the names users pick from (others in CP3_NAMES work too)
MAIN_NAMES = ("nuclei", "cyto", "cyto2", "cyto3")


def cellpose_version() -> str | None:
    """Installed Cellpose version, without importing it (None when not installed)."""
    from importlib import metadata

    try:
        return metadata.version("cellpose")
    except metadata.PackageNotFoundError:
        return None


def _major(version: str) -> int:
    try:
        return int(version.split(".")[0])
    except ValueError:
        return 3


def cellpose_model_dir() -> Path:
    """The folder Cellpose loads built-in weights from, computed as Cellpose does.

    Cellpose reads ``CELLPOSE_LOCAL_MODELS_PATH`` once, at import; when it is
    already imported in this process its ``MODEL_DIR`` is what it will use.
    """
    mod = sys.modules.get("cellpose.models")
    if mod is not None and getattr(mod, "MODEL_DIR", None) is not None:
        return Path(mod.MODEL_DIR)
    env = os.environ.get(ENV_DIR)
    return Path(env) if env else Path.home() / ".cellpose" / "models"


def _builtin_file(name: str) -> str:
    """File name of a built-in model in the model folder (cellpose.models.model_path)."""
    return f"{name}torch_0" if name in ("cyto", "cyto2", "nuclei") else name


class MissingBuiltin(ModelUnavailable):
    """A built-in model whose weights are not in Cellpose's model folder (yet)."""

    def __init__(self, message: str, url: str) -> None:
        super().__init__(message)
        self.url = url


def _download_builtin(model: str, missing: MissingBuiltin, timeout: float = 5.0) -> None:
    """Let Cellpose download a built-in model into its own folder, if its host answers quickly."""
    why = host_answers(missing.url, timeout)
    if why is not None:
        raise ModelUnavailable(f"{missing} [no download: {why}]") from None
    from cellpose import models

    try:
        models.model_path(model)  # Cellpose's own download + cache (MODEL_DIR)
        if model in ("cyto", "cyto2", "cyto3", "nuclei"):
            models.size_model_path(model)
    except Exception as e:
        raise ModelUnavailable(f"{missing} [download failed: {type(e).__name__}: {e}]") from None


class _Resolved:
    """Where a model's weights are: ``builtin`` (name, folder file, URL) or ``file``."""

    def __init__(self, kind: str, name: str, path: Path, url: str | None = None) -> None:
        self.kind, self.name, self.path, self.url = kind, name, path, url


def _fix_hint() -> str:
    return "or point the config at a local model file: study.search.models.<label>.init.model=/path/to/model"


def resolve_model(model: str) -> _Resolved:
    """Find the weights file of ``model`` without loading anything or using the network.

    Raises :class:`ModelUnavailable` (one line: what is missing, where it was
    looked for, where it comes from, how to configure a local file).
    """
    version = cellpose_version()
    if version is None:
        raise ModelUnavailable(
            "cellpose is not installed: pip install 'opsef-opt[cellpose]' (or 'cellpose>=3.1,<5')"
        )
    major = _major(version)
    names, other = (CP4_NAMES, CP3_NAMES) if major >= 4 else (CP3_NAMES, CP4_NAMES)
    folder = cellpose_model_dir()
    if model in names:
        fname = _builtin_file(model)
        url = CPSAM_URL if major >= 4 else f"{CP3_URL}/{fname}"
        path = folder / fname
        if not path.is_file():
            raise MissingBuiltin(
                f"cellpose model {model!r}: weights file {fname} not found in {folder} "
                f"(Cellpose's model folder: ~/.cellpose/models or ${ENV_DIR}); "
                f"fetch {url} and put it in that folder (or set {ENV_DIR} to the folder holding it), "
                + _fix_hint(),
                url=url,
            )
        return _Resolved("builtin", model, path, url)
    if model in other:
        need = "cellpose>=4" if model in CP4_NAMES else "cellpose>=3.1,<4"
        raise ModelUnavailable(
            f"cellpose model {model!r} needs {need} (installed: cellpose {version}); "
            f"use one of {', '.join(MAIN_NAMES if major < 4 else CP4_NAMES)}, " + _fix_hint()
        )
    path = Path(model).expanduser()
    if path.is_file():
        return _Resolved("file", model, path)
    if not path.is_absolute() and len(path.parts) == 1 and (folder / model).is_file():
        return _Resolved("file", model, folder / model)  # a model added to Cellpose's folder (GUI)
    builtins = ", ".join(MAIN_NAMES if major < 4 else CP4_NAMES)
    raise ModelUnavailable(
        f"cellpose model file {path} does not exist (and {model!r} is not a built-in model name: {builtins}); "
        f"train one with opsef_opt.train.cellpose_train.train_cellpose, use a built-in name, " + _fix_hint()
    )


def infer_widths(state_dict: dict) -> list[int]:
    """Cellpose 3 ``nbase`` (input channels, then the U-Net level widths) from a state dict."""
    widths = []
    i = 0
    while f"downsample.down.res_down_{i}.proj.1.weight" in state_dict:
        w = state_dict[f"downsample.down.res_down_{i}.proj.1.weight"]
        if i == 0:
            widths.append(int(w.shape[1]))
        widths.append(int(w.shape[0]))
        i += 1
    if not widths:
        raise KeyError("downsample.down.res_down_0.proj.1.weight")
    return widths


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

    def split_params(self, params: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        if self.cp4:  # Cellpose 4's mask step is not split here (untested): one whole call, all params inference
            return {k: v for k, v in params.items() if k != "stats"}, {}
        return super().split_params(params)

    def _eval_kwargs(self, d: float | None, normalize: bool) -> dict[str, Any]:
        kwargs: dict[str, Any] = dict(diameter=d, normalize=bool(normalize))
        if not self.cp4:
            kwargs["channels"] = [0, 0]
        return kwargs

    def infer(self, image: np.ndarray, diameter: float | None = None, scale: float | None = None,
              normalize: bool = True, invert: bool = False, flow_threshold: float = 0.4,
              cellprob_threshold: float = 0.0, **_: Any) -> dict[str, np.ndarray]:
        """Flows ``dP`` (2, Y, X) and ``cellprob`` (Y, X) at the image's size, and the diameter used.

        Cellpose 3: the network only (``compute_masks=False``), as ``eval`` runs it. Cellpose 4: the
        whole ``eval`` (masks included; the thresholds are then inference params, see ``split_params``).
        """
        img = np.asarray(image, dtype=np.float32)
        if img.ndim != 2:
            raise ValueError(f"cellpose expects a 2D (Y, X) image, got shape {img.shape}")
        d = self.eval_diameter(diameter, scale)
        if invert:  # here, not in Cellpose: Cellpose ignores invert when normalize is False
            img = 1.0 - img
        kwargs = self._eval_kwargs(d, normalize)
        if self.cp4:
            masks, flows, _styles = self._model.eval(img, flow_threshold=float(flow_threshold),
                                                     cellprob_threshold=float(cellprob_threshold), **kwargs)[:3]
            return {"masks": np.asarray(masks).astype(np.int32, copy=False), "dP": np.asarray(flows[1]),
                    "cellprob": np.asarray(flows[2]), "diameter": np.asarray(np.nan if d is None else d)}
        _masks, flows, _styles = self._model.eval(img, compute_masks=False, **kwargs)[:3]
        return {"dP": np.asarray(flows[1]), "cellprob": np.asarray(flows[2]),
                "diameter": np.asarray(np.nan if d is None else d, np.float64)}

    def postprocess(self, raw: dict[str, np.ndarray], image: np.ndarray, flow_threshold: float = 0.4,
                    cellprob_threshold: float = 0.0, **_: Any) -> Segmentation:
        dP, cellprob = raw["dP"], raw["cellprob"]
        d = float(raw["diameter"])
        d = None if np.isnan(d) else d
        if self.cp4:
            labels = np.asarray(raw["masks"]).astype(np.int32, copy=False)
        else:
            labels = self._masks(dP, cellprob, d, float(flow_threshold), float(cellprob_threshold))
        flows = [None, dP, cellprob]
        prob = _cell_probability(labels, flows)
        errors = _flow_error(labels, flows, getattr(self._model, "device", None)) if prob else None
        return Segmentation(labels, _confidence(prob, errors),
                            {"diameter": d, "cell_probability": prob, "flow_error": errors})

    def _masks(self, dP: np.ndarray, cellprob: np.ndarray, d: float | None, flow_threshold: float,
               cellprob_threshold: float) -> np.ndarray:
        """Cellpose 3 ``eval``'s mask step for one 2D image, with its defaults (``niter`` from the rescale)."""
        if d is not None and d > 0:
            rescale = self.diam_mean / d
        else:
            rescale = self.diam_mean / self._model.diam_labels
        niter = 1 / rescale * 200  # eval: resample=True, niter=None
        h, w = cellprob.shape
        masks = self._model._compute_masks((1, h, w), dP[:, None], cellprob[None], flow_threshold=flow_threshold,
                                           cellprob_threshold=cellprob_threshold, interp=True, min_size=15,
                                           max_size_fraction=0.4, niter=niter)
        return np.asarray(masks).squeeze().astype(np.int32, copy=False)


def _cell_probability(labels: np.ndarray, flows) -> dict[int, float] | None:
    """Mean sigmoid(cellprob) per object, or None when Cellpose did not return the map."""
    try:
        cellprob = np.asarray(flows[2], dtype=np.float32)
    except (IndexError, TypeError):
        return None
    if cellprob.shape != labels.shape:
        return None
    ids = np.unique(labels)
    ids = ids[ids > 0]
    if ids.size == 0:
        return {}
    from scipy import ndimage

    prob = 1.0 / (1.0 + np.exp(-np.clip(cellprob, -80, 80)))
    means = ndimage.mean(prob, labels=labels, index=ids)
    return {int(i): float(m) for i, m in zip(ids, means)}


def _flow_error(labels: np.ndarray, flows, device=None) -> dict[int, float] | None:
    """Cellpose's own quality measure per object, or None when it cannot be computed.

    ``cellpose.metrics.flow_error``: the mean squared difference between the
    flows the network predicted (``flows[1] / 5``, unit vectors at full
    strength) and the flows of the object's final mask (what Cellpose's
    ``flow_threshold`` removes objects by, measured here on the returned
    masks). It only reads the labels. 0 = the mask is the shape the network's
    flows describe; 2 = unrelated directions (for unit vectors the error is
    2 - 2 cos(angle)).
    """
    try:
        import torch
        from cellpose import metrics

        dP = np.asarray(flows[1], dtype=np.float32)
        if dP.ndim != 3 or dP.shape[1:] != labels.shape or labels.max() == 0:
            return {} if labels.max() == 0 else None
        errors, _ = metrics.flow_error(np.ascontiguousarray(labels), dP,
                                       device if device is not None else torch.device("cpu"))
    except Exception:  # noqa: BLE001 - a Cellpose version without it, an odd output: no flow error
        return None
    present = np.unique(labels)
    return {int(i): float(errors[i - 1]) for i in present[present > 0] if np.isfinite(errors[i - 1])}


#: flow error at which an object's flow agreement reaches 0: Cellpose's default ``flow_threshold``
FLOW_ERROR_SCALE = 0.4


def _confidence(prob: dict[int, float] | None, errors: dict[int, float] | None) -> dict[int, float] | None:
    """Per object: mean cell probability x flow agreement ``clip(1 - flow_error / 0.4, 0, 1)``, in [0, 1].

    Objects without a flow error (not computable) keep the cell probability alone; None when
    Cellpose gave no cell probability map. See the module docstring for why both.
    """
    if prob is None:
        return None
    errors = errors or {}
    out = {}
    for i, p in prob.items():
        e = errors.get(i)
        agree = 1.0 if e is None else min(max(1.0 - e / FLOW_ERROR_SCALE, 0.0), 1.0)
        out[i] = float(min(max(p, 0.0), 1.0) * agree)
    return out
