"""Where Cellpose's weights are, found before Cellpose is imported or the network touched.

Cellpose, asked for a model whose weights are missing, downloads them, which
hangs or fails on an offline machine, and asked for a file that does not
exist it silently falls back to ``cyto3``.  A search over many candidates
needs to know at once, and in one line, whether a model can run and what to
do when it cannot; so the weights are located here, by Cellpose's own rules
(built-in names, its model folder, ``CELLPOSE_LOCAL_MODELS_PATH``, model
files), and a model file's architecture is read from its weight shapes.
See :mod:`opsef_opt.segment.cellpose_model` for the models and versions.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Mapping

from opsef_opt.segment.base import ModelUnavailable
from opsef_opt.segment.download import host_answers

__all__ = ["cellpose_model_dir", "cellpose_version", "resolve_model", "infer_widths", "MissingBuiltin"]

CP3_URL = "https://www.cellpose.org/models"
#: Cellpose 4's download folder (cellpose.models._MODEL_URL); a built-in's file is this + its name
CP4_URL = "https://huggingface.co/mouseland/cellpose-sam/resolve/main"
ENV_DIR = "CELLPOSE_LOCAL_MODELS_PATH"

#: Cellpose 3.1's built-in model names (cellpose.models.MODEL_NAMES)
CP3_NAMES = (
    "cyto3", "nuclei", "cyto2_cp3", "tissuenet_cp3", "livecell_cp3", "yeast_PhC_cp3",
    "yeast_BF_cp3", "bact_phase_cp3", "bact_fluor_cp3", "deepbacs_cp3", "cyto2", "cyto", "CPx",
    "transformer_cp3", "neurips_cellpose_default", "neurips_cellpose_transformer",
    "neurips_grayscale_cyto2", "CP", "TN1", "TN2", "TN3", "LC1", "LC2", "LC3", "LC4",
)
#: Cellpose 4's built-in model names (cellpose.models.MODEL_NAMES of 4.2; 4.0 and 4.1 have cpsam only)
CP4_NAMES = ("cpsam", "cpsam_v2", "cpdino", "cpdino-vitb")
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
        url = f"{CP4_URL}/{fname}" if major >= 4 else f"{CP3_URL}/{fname}"
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


def infer_widths(state_dict: Mapping) -> list[int]:
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
