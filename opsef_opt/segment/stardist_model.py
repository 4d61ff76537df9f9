"""StarDist 2D: star-convex polygon detection of nuclei (TensorFlow).

``model`` is either a pretrained name of the StarDist registry
(``2D_versatile_fluo``, ``2D_versatile_he`` (RGB H&E input), ``2D_paper_dsb2018``)
or the path of a StarDist model folder (``config.json``, ``weights*.h5`` and
optionally ``thresholds.json``), e.g. one written by
:func:`opsef_opt.train.stardist_train.train_stardist`.

Pretrained weights live where StarDist itself caches them: the Keras cache,
``$KERAS_HOME/models/StarDist2D/<name>/`` (``KERAS_HOME`` defaults to
``~/.keras``), holding the downloaded ``<name>.zip`` and its unpacked folder.
:meth:`StarDistSegmenter.availability` only looks there (no network, no
TensorFlow import). Loading a model that is not cached downloads the zip from
the URL of StarDist's registry when ``download`` is true and the host answers
within a few seconds (like ``StarDist2D.from_pretrained``, but bounded, and
without leaving empty folders behind); otherwise it raises
:class:`~opsef_opt.segment.base.ModelUnavailable` with one line saying which
files were looked for, where to put them and the URL.

TensorFlow and StarDist are imported only when a model is constructed.
TensorFlow is told to grow its GPU memory on demand, so a PyTorch model in
the same process still finds free GPU memory.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import math
import os
import shutil
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

from opsef_opt.params import Param
from opsef_opt.segment.download import host_answers
from opsef_opt.segment.base import ModelUnavailable, Segmentation, Segmenter
from opsef_opt.segment.registry import register_segmenter

__all__ = [
    "PRETRAINED",
    "StarDistSegmenter",
    "keras_home",
    "pretrained_cache_dir",
    "n_tiles_for",
    "MAX_TILE",
]

log = logging.getLogger(__name__)

#: StarDist's registry of 2D pretrained models (``stardist/models/__init__.py``,
#: stardist 0.9): download URL, sha256 of the zip, aliases. Copied so that
#: availability checks need no TensorFlow import; a test compares it with the library.
PRETRAINED: dict[str, dict[str, Any]] = {
    "2D_versatile_fluo": dict(
        url="https://github.com/stardist/stardist-models/releases/download/v0.1/python_2D_versatile_fluo.zip",
        hash="4ad678d0758eed6e55625f1b5ae30771e59adb79f1239e09b9772eac8846c3dd",
        aliases=("Versatile (fluorescent nuclei)",),
    ),
    "2D_versatile_he": dict(
        url="https://github.com/stardist/stardist-models/releases/download/v0.1/python_2D_versatile_he.zip",
        hash="f1696ef0631bd7e1c0e5c0d3017e2b4c6a95e284c6aab9c22fc2f08317817b28",
        aliases=("Versatile (H&E nuclei)",),
    ),
    "2D_paper_dsb2018": dict(
        url="https://github.com/stardist/stardist-models/releases/download/v0.1/python_2D_paper_dsb2018.zip",
        hash="4c11cf68512341d9e8ce3d1278c64ceb8ac400582739f85fcab079a2e82840d2",
        aliases=("DSB 2018 (from StarDist 2D paper)",),
    ),
}

#: Largest tile side (pixels) predicted in one piece. Larger images are split
#: into ceil(side / MAX_TILE) tiles per axis (StarDist adds the overlap the
#: network's receptive field needs and stitches the polygons), so memory stays
#: bounded (~1 MP per network call) whatever the image size.
MAX_TILE = 1024

#: Seconds to wait for the download host to resolve and answer before giving up.
DOWNLOAD_CONNECT_TIMEOUT = 5.0

_CONFIG_HINT = "study.search.models.<label>.init.model=/path/to/model_folder"


# --------------------------------------------------------------------------- cache lookup

def keras_home() -> Path:
    """The Keras cache folder, resolved as Keras does (``$KERAS_HOME``, else ``~/.keras``).

    Read at call time: Keras itself reads ``KERAS_HOME`` once, when it is
    imported, so change it before TensorFlow is imported. Like Keras'
    ``get_file``, an existing but read-only folder falls back to ``/tmp/.keras``.
    """
    if "KERAS_HOME" in os.environ:
        home = Path(os.environ["KERAS_HOME"]).expanduser()
    else:
        base = Path("~").expanduser()
        home = (base if os.access(base, os.W_OK) else Path("/tmp")) / ".keras"
    if home.exists() and not os.access(home, os.W_OK):
        home = Path("/tmp") / ".keras"
    return home


def _pretrained_key(name: str) -> str | None:
    if name in PRETRAINED:
        return name
    for key, entry in PRETRAINED.items():
        if name in entry["aliases"]:
            return key
    return None


def pretrained_cache_dir(key: str) -> Path:
    """``<keras home>/models/StarDist2D/<key>``: where StarDist keeps ``<key>.zip`` and its unpacked files."""
    return keras_home() / "models" / "StarDist2D" / key


def _weights(folder: Path) -> list[Path]:
    return sorted(p for ext in ("*.h5", "*.hdf5") for p in folder.glob(ext))


def _is_model_folder(folder: Path) -> bool:
    return folder.is_dir() and (folder / "config.json").is_file() and bool(_weights(folder))


def _cached_folder(datadir: Path, key: str) -> Path | None:
    """The unpacked model in the cache, for every layout StarDist/Keras versions use."""
    # Keras >= 3.6 unpacks into <key>_extracted (csbdeep adds a <key> symlink to it);
    # older Keras unpacked the zip's files next to it, into <datadir> itself.
    for folder in (datadir / key, datadir / f"{key}_extracted", datadir):
        if _is_model_folder(folder):
            return folder
    return None


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _missing_message(key: str, datadir: Path, why: str) -> str:
    url = PRETRAINED[key]["url"]
    return (
        f"StarDist pretrained model {key!r} is not available ({why}): looked in {datadir} for {key}.zip "
        f"or an unzipped model (config.json + weights_best.h5); download {url} into that folder "
        f"(StarDist unpacks it there on first use; KERAS_HOME moves the cache), or unzip it anywhere "
        f"and set {_CONFIG_HINT}"
    )


def _custom_message(folder: Path, model: str) -> str:
    if not folder.exists():
        names = ", ".join(PRETRAINED)
        return (
            f"StarDist model {model!r} is neither a pretrained name ({names}) nor an existing model folder "
            f"(looked for {folder}): set {_CONFIG_HINT} (a folder with config.json and weights_best.h5, "
            f"e.g. written by opsef_opt.train.stardist_train.train_stardist) or use a pretrained name"
        )
    found = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else ["(not a folder)"]
    return (
        f"StarDist model folder {folder} is incomplete: needs config.json and weights (*.h5), found "
        f"{', '.join(found) or 'nothing'}; copy a complete StarDist model folder there (config.json, "
        f"thresholds.json, weights_best.h5) and set {_CONFIG_HINT}"
    )


def _resolve(model: str) -> tuple[str | None, Path | None, bool, str]:
    """Where ``model`` is, without network: (pretrained key or None, model folder or None,
    whether a cached zip waits to be unpacked, reason/description for users)."""
    key = _pretrained_key(model)
    if key is not None:
        datadir = pretrained_cache_dir(key)
        folder = _cached_folder(datadir, key)
        if folder is not None:
            return key, folder, False, f"cached at {folder}"
        zipped = datadir / f"{key}.zip"
        if zipped.is_file():
            return key, None, True, f"cached as {zipped} (unpacked on first use)"
        return key, None, False, _missing_message(key, datadir, "not in the Keras cache")
    folder = Path(model).expanduser().absolute()
    if _is_model_folder(folder):
        return None, folder, False, f"model folder {folder}"
    return None, None, False, _custom_message(folder, model)


# --------------------------------------------------------------------------- download

def _remove_empty_dirs(path: Path, stop: Path) -> None:
    """Remove ``path`` and its parents up to (excluding) ``stop`` while they are empty."""
    path, stop = path.absolute(), stop.absolute()
    while path != stop and stop in path.parents:
        try:
            path.rmdir()
        except OSError:
            return
        path = path.parent


def _download(key: str, datadir: Path, timeout: float) -> None:
    """Fetch ``<key>.zip`` into the Keras cache, checking its hash; on failure leave nothing behind."""
    entry = PRETRAINED[key]
    why = host_answers(entry["url"], timeout)
    if why is not None:
        raise ModelUnavailable(_missing_message(key, datadir, f"not in the Keras cache and no download: {why}"))
    home = keras_home()
    target = datadir / f"{key}.zip"
    part = datadir / f"{key}.zip.part"
    log.info("downloading StarDist model %s from %s", key, entry["url"])
    try:
        datadir.mkdir(parents=True, exist_ok=True)
        with urllib.request.urlopen(entry["url"], timeout=max(timeout, 30.0)) as r, open(part, "wb") as f:
            shutil.copyfileobj(r, f, 1 << 20)
        if _sha256(part) != entry["hash"]:
            raise ValueError("the downloaded file's sha256 differs from the registry's")
        part.replace(target)
    except Exception as e:
        part.unlink(missing_ok=True)
        _remove_empty_dirs(datadir, home)
        raise ModelUnavailable(
            _missing_message(key, datadir, f"not in the Keras cache and the download failed: {type(e).__name__}: {e}")
        ) from None


def _unpack(key: str, datadir: Path) -> Path:
    """Unpack the cached zip with Keras' ``get_file`` (StarDist's own cache call; no network when the hash matches)."""
    entry = PRETRAINED[key]
    zipped = datadir / f"{key}.zip"
    if _sha256(zipped) != entry["hash"]:
        raise ModelUnavailable(_missing_message(
            key, datadir, f"{zipped} is incomplete or corrupt (sha256 differs from StarDist's registry), delete it"))
    from keras.utils import get_file

    get_file(fname=f"{key}.zip", origin=entry["url"], file_hash=entry["hash"],
             cache_subdir=str(Path("models") / "StarDist2D" / key), extract=True, cache_dir=str(keras_home()))
    folder = _cached_folder(datadir, key)
    if folder is None:
        raise ModelUnavailable(_missing_message(key, datadir, f"{zipped} holds no StarDist model"))
    return folder


# --------------------------------------------------------------------------- model

def n_tiles_for(shape: tuple[int, ...], axes: str = "YX", max_tile: int = MAX_TILE) -> tuple[int, ...]:
    """Tiles per axis so that no tile side exceeds ``max_tile`` pixels (1 for the channel axis).

    >>> n_tiles_for((512, 512))
    (1, 1)
    >>> n_tiles_for((3000, 1500, 3), "YXC")
    (3, 2, 1)
    """
    return tuple(1 if a == "C" else max(1, math.ceil(s / max_tile)) for s, a in zip(shape, axes))


def _tf():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    for gpu in tf.config.list_physical_devices("GPU"):
        try:  # do not reserve all GPU memory (a torch model may share the GPU)
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:  # TensorFlow already initialised its GPUs
            pass
    return tf


@register_segmenter
class StarDistSegmenter(Segmenter):
    """StarDist 2D (pretrained or own model folder): star-convex polygons + non-maximum suppression."""

    family = "stardist"
    init_params = (
        Param("model", "str", "2D_versatile_fluo",
              help="pretrained name (2D_versatile_fluo, 2D_versatile_he for RGB H&E, 2D_paper_dsb2018) "
                   "or path of a StarDist model folder (config.json + weights_best.h5)"),
        Param("device", "categorical", "auto", choices=("auto", "cpu", "cuda"),
              help="auto: a GPU when TensorFlow sees one"),
        Param("download", "bool", True,
              help="fetch a pretrained model that is not in the Keras cache (needs network)"),
    )
    params = (
        # low=0.01, not 0: at 0 every pixel of the output grid becomes a candidate object
        # (a 512 x 512 image took 19 s instead of 1.4 s, 2048 x 2048 over 4 minutes)
        Param("prob_thresh", "float", None, low=0.01, high=1.0, nullable=True,
              help="object probability threshold (null: the model's optimised value)"),
        Param("nms_thresh", "float", None, low=0.0, high=1.0, nullable=True,
              help="polygon overlap allowed by non-maximum suppression (null: the model's value)"),
        Param("pmin", "float", 1.0, low=0.0, high=50.0, help="low percentile of the input normalisation"),
        Param("pmax", "float", 99.8, low=50.0, high=100.0, help="high percentile of the input normalisation"),
    )
    # grayscale models take YX, models with n_channel_in == 3 (2D_versatile_he) take RGB YXC;
    # each loaded instance narrows this to what its model takes
    input_axes = ("YX", "YXC")

    @classmethod
    def availability(cls, model: str = "2D_versatile_fluo", device: str = "auto",
                     download: bool = True) -> tuple[bool, str]:
        _, folder, zipped, reason = _resolve(model)
        return folder is not None or zipped, reason

    def __init__(self, model: str = "2D_versatile_fluo", device: str = "auto", download: bool = True) -> None:
        super().__init__(model=model, device=device, download=download)
        key, folder, zipped, reason = _resolve(model)
        if folder is None:
            if key is None:
                raise ModelUnavailable(reason)
            datadir = pretrained_cache_dir(key)
            if not zipped:
                if not download:
                    raise ModelUnavailable(_missing_message(key, datadir, "not in the Keras cache, download=false"))
                _download(key, datadir, DOWNLOAD_CONNECT_TIMEOUT)
        tf = _tf()
        if device == "cuda" and not tf.config.list_physical_devices("GPU"):
            raise RuntimeError("device=cuda was requested but TensorFlow sees no GPU; use device=auto or cpu")
        self._device = "cuda" if device != "cpu" and tf.config.list_physical_devices("GPU") else "cpu"
        self._scope = (lambda: tf.device("/CPU:0")) if self._device == "cpu" else contextlib.nullcontext
        if folder is None:
            folder = _unpack(key, pretrained_cache_dir(key))
        self.folder = folder
        from stardist.models import StarDist2D

        out = io.StringIO()
        with self._scope(), contextlib.redirect_stdout(out):
            self.model = StarDist2D(None, name=folder.name, basedir=str(folder.parent))
        log.debug("stardist %s: %s", folder, out.getvalue().strip().replace("\n", "; "))
        if self.model.config.n_dim != 2:
            raise ModelUnavailable(f"StarDist model folder {folder} holds a {self.model.config.n_dim}D model; "
                                   f"only 2D models are supported")
        self.model.basedir = None  # read-only: never write thresholds/weights into the cache or user folder
        self.n_channel_in = int(self.model.config.n_channel_in)
        self.input_axes = ("YX",) if self.n_channel_in == 1 else ("YXC",)
        self.max_tile = MAX_TILE

    @property
    def device(self) -> str:
        return self._device

    @property
    def thresholds(self) -> dict[str, float]:
        """The model's own (optimised) probability and NMS thresholds."""
        return {"prob": float(self.model.thresholds.prob), "nms": float(self.model.thresholds.nms)}

    def n_tiles(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """Tiles per axis used for an image of ``shape`` (see :data:`MAX_TILE`)."""
        return n_tiles_for(shape, "YXC" if len(shape) == 3 else "YX", self.max_tile)

    def image_stats(self, sample: np.ndarray, pmin: float = 1.0, pmax: float = 99.8, **params) -> dict[str, float]:
        return {"lo": float(np.percentile(sample, pmin)), "hi": float(np.percentile(sample, pmax))}

    # the normalisation percentiles change the network's input (n_tiles follows from the image
    # size); prob_thresh and nms_thresh act on the predicted probabilities and distances
    inference_params = ("pmin", "pmax")
    #: candidate points are kept down to this probability by :meth:`infer` (the lowest ``prob_thresh``
    #: allowed); :meth:`postprocess` keeps those above the trial's threshold
    RAW_PROB_FLOOR = 0.01

    def infer(self, image: np.ndarray, pmin: float = 1.0, pmax: float = 99.8,
              stats: dict[str, float] | None = None) -> dict[str, np.ndarray]:
        """StarDist's sparse prediction (``predict_sparse``, as ``predict_instances`` runs it) down to
        a probability floor: per candidate point its probability, ray distances and position."""
        from csbdeep.utils import normalize, normalize_mi_ma

        img = np.asarray(image, np.float32)
        axes = "YX" if img.ndim == 2 else "YXC"
        if img.ndim == 3 and img.shape[2] != self.n_channel_in:
            raise ValueError(f"StarDist model {self.folder} takes {self.n_channel_in} channels, "
                             f"got an image of shape {img.shape}")
        # one joint normalisation over all pixels (and channels, as StarDist does for H&E)
        x = (normalize_mi_ma(img, stats["lo"], stats["hi"]) if stats  # a tile: the whole image's percentiles
             else normalize(img, pmin, pmax, axis=None))
        n_tiles = self.n_tiles(img.shape)
        floor = min(self.RAW_PROB_FLOOR, self.thresholds["prob"])
        with self._scope():
            res = self.model.predict_sparse(x, axes=axes, n_tiles=n_tiles, prob_thresh=floor,
                                            show_tile_progress=False)
        raw = {"prob": np.asarray(res[0]), "dist": np.asarray(res[1]), "points": np.asarray(res[-1]),
               "floor": np.asarray(floor, np.float64), "n_tiles": np.asarray(n_tiles, np.int64),
               "shape": np.asarray(img.shape[:2], np.int64)}
        if len(res) == 4:  # a multi-class model
            raw["prob_class"] = np.asarray(res[2])
        return raw

    def postprocess(self, raw: dict[str, np.ndarray], image: np.ndarray, prob_thresh: float | None = None,
                    nms_thresh: float | None = None, stats: dict[str, float] | None = None) -> Segmentation:
        used = self.thresholds
        thr = used["prob"] if prob_thresh is None else float(prob_thresh)
        if thr < float(raw["floor"]):
            raise ValueError(f"stardist: prob_thresh {thr} is below the cached prediction's floor "
                             f"{float(raw['floor'])}")
        # exactly the candidates predict_instances would have kept at this threshold, in the same order
        keep = raw["prob"] > thr
        prob_class = raw["prob_class"][keep] if "prob_class" in raw else None
        with self._scope():
            labels, details = self.model._instances_from_prediction(
                tuple(int(v) for v in raw["shape"]), raw["prob"][keep], raw["dist"][keep],
                points=raw["points"][keep], prob_class=prob_class, prob_thresh=prob_thresh, nms_thresh=nms_thresh,
                scale=None, return_labels=True, overlap_label=None, verbose=False)
        labels = labels.astype(np.int32, copy=False)
        # label i+1 is polygon i of details (StarDist renders them in that order);
        # a polygon fully covered by others has no pixels and is left out
        prob = np.asarray(details["prob"], float)
        present = np.unique(labels)
        present = present[(present > 0) & (present <= prob.size)]
        confidence = {int(i): float(prob[i - 1]) for i in present}
        extra = {
            "n_tiles": tuple(int(v) for v in raw["n_tiles"]),
            "prob_thresh": thr,
            "nms_thresh": used["nms"] if nms_thresh is None else float(nms_thresh),
        }
        return Segmentation(labels, confidence=confidence, extra=extra)

    def describe(self) -> dict[str, Any]:
        return {"model": str(self.folder), "device": self._device, "channels": self.n_channel_in,
                "thresholds": self.thresholds, "max_tile": self.max_tile}
