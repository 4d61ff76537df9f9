"""CellProfiler "ClassifyPixels-UNet" nuclei model (the U-Net OpSeF IV used), with correct instances.

The network
-----------
:func:`build_cp_unet` rebuilds the 3-class nuclei U-Net of the CellProfiler
plugin ``classifypixelsunet.py`` (CellProfiler-plugins; Becker, Caicedo,
McQuin; trained as in github.com/jr0th/segmentation and
github.com/carpenterlab/unet4nuclei) in Keras 3:

* encoder: four levels of two 3x3 ``Conv2D`` (ReLU, ``same`` padding), each
  followed by ``BatchNormalization`` (momentum 0.9), with 64, 128, 256 and
  512 filters and a 2x2 ``MaxPooling2D`` after the first three levels;
* decoder: three times ``UpSampling2D`` (x2), concatenation with the encoder
  level of the same size, two 3x3 ``Conv2D`` + ``BatchNormalization``
  (256, 128, 64 filters);
* head: a 1x1 ``Conv2D`` with 3 filters -- with a ReLU, as in the plugin,
  whose conv options carry ``activation="relu"`` into the head too -- then a
  softmax over the classes.

Output channel order is the plugin's: 0 = background, 1 = nucleus interior,
2 = nucleus boundary. 7,793,155 parameters (7,787,523 trainable). The layers
with weights (15 Conv2D, 14 BatchNormalization) are created in the plugin's
order, so the published Keras weights file loads by layer order
(``model.load_weights``, as the plugin did).

The weights
-----------
The plugin downloaded its weights from Google Drive (file id
``1I9j4oABbcV8EnvO_ufACXP9e4KyfHMtE``, see :data:`WEIGHTS_URL`) into
CellProfiler's cache as ``unet-checkpoint.hdf5``: a Keras 2 weights-only
HDF5 checkpoint. opsef-opt never downloads it: fetch it once and point the
model's config at it, e.g.
``study.search.models.<label>.init.weights=/path/to/unet-checkpoint.hdf5``.
Files written by Keras 3 (``.weights.h5``) load too.

Input processing
----------------
As in the plugin, every image is min-max scaled to [0, 1] (``x - min``, then
divided by the new maximum). The plugin *resized* images to a multiple of 8
(3 poolings); here the scaled image is reflect-padded to a multiple of 8 and
the prediction cropped back, so pixels are never resampled. Large images are
predicted in tiles whose halo exceeds the network's receptive field, so tiled
and whole-image predictions agree.

From classes to instances
-------------------------
See :func:`labels_from_classes`. OpSeF IV (``UNet_Watershed``) read its
"boundary" map from channel 0 (the background) instead of channel 2, so its
cell mask ``cell > background and cell > boundary`` reduced to
``cell > background``, which is true across the thin boundary between two
touching nuclei once the maps are smoothed: touching nuclei merged. Here the
boundary class is used where it belongs: objects are seeded by the interior
class only and grown with a watershed whose relief is the boundary class.
"""
from __future__ import annotations

import hashlib
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage as ndi
from skimage import filters, segmentation

from opsef_opt.params import Param
from opsef_opt.segment.base import ModelUnavailable, Segmentation, Segmenter
from opsef_opt.segment.instances import split_foreground
from opsef_opt.segment.registry import register_segmenter

__all__ = [
    "CLASSES",
    "WEIGHTS_URL",
    "CPUNetSegmenter",
    "build_cp_unet",
    "labels_from_classes",
    "load_cp_unet",
    "normalize_image",
    "predict_classes",
]

#: output channels of the network, in order
CLASSES = ("background", "interior", "boundary")
#: where the ClassifyPixels-UNet plugin downloads its weights (Google Drive id 1I9j4oABbcV8EnvO_ufACXP9e4KyfHMtE)
WEIGHTS_URL = "https://docs.google.com/uc?export=download&id=1I9j4oABbcV8EnvO_ufACXP9e4KyfHMtE"
#: file name the plugin stores them under
WEIGHTS_NAME = "unet-checkpoint.hdf5"
#: image sizes must be multiples of this (3 max-poolings)
MULTIPLE = 8
#: receptive field of the network is 96 px (radius 48); tiles overlap by more than that
HALO = 64
#: side of the core of a tile; images up to TILE x TILE pixels are predicted in one pass
TILE = 1024

_CONFIG_HINT = "study.search.models.<label>.init.weights=/path/to/" + WEIGHTS_NAME


# ------------------------------------------------------------------ network


def build_cp_unet(input_shape: tuple[int | None, int | None, int] = (None, None, 1)):
    """The ClassifyPixels-UNet architecture as a Keras 3 model (random weights).

    ``input_shape`` is (H, W, 1); ``None`` sizes accept any multiple of 8.
    Layers are created in the plugin's order so the published weights load by
    layer order; their names (``enc1_conv1``, ...) are descriptive only.
    """
    import keras
    from keras import layers

    conv = dict(kernel_size=(3, 3), activation="relu", padding="same")
    bn = dict(momentum=0.9)

    def block(x, filters, name):
        for i in (1, 2):
            x = layers.Conv2D(filters, name=f"{name}_conv{i}", **conv)(x)
            x = layers.BatchNormalization(name=f"{name}_bn{i}", **bn)(x)
        return x

    inp = keras.Input(shape=tuple(input_shape), name="image")
    a = block(inp, 64, "enc1")
    b = block(layers.MaxPooling2D(name="pool1")(a), 128, "enc2")
    c = block(layers.MaxPooling2D(name="pool2")(b), 256, "enc3")
    d = block(layers.MaxPooling2D(name="pool3")(c), 512, "enc4")
    e = layers.Concatenate(axis=3, name="skip3")([layers.UpSampling2D(name="up3")(d), c])
    e = block(e, 256, "dec3")
    f = layers.Concatenate(axis=3, name="skip2")([layers.UpSampling2D(name="up2")(e), b])
    f = block(f, 128, "dec2")
    y = layers.Concatenate(axis=3, name="skip1")([layers.UpSampling2D(name="up1")(f), a])
    y = block(y, 64, "dec1")
    y = layers.Conv2D(3, (1, 1), activation="relu", padding="same", name="classes")(y)
    y = layers.Activation("softmax", name="softmax")(y)
    return keras.Model(inp, y, name="cp_unet")


def _missing_message(weights: str) -> str:
    if not weights:
        where = "no weights file is set (init.weights is empty)"
    else:
        where = f"weights file {str(Path(weights).expanduser())!r} not found"
    return (
        f"cp_unet: {where}; download the published ClassifyPixels-UNet nuclei weights "
        f"({WEIGHTS_NAME}) from {WEIGHTS_URL} and set {_CONFIG_HINT}"
    )


def load_cp_unet(weights: str | Path):
    """Build the network and load a Keras HDF5 weights file; unusable file -> :class:`ModelUnavailable`."""
    path = Path(str(weights)).expanduser()
    if not str(weights) or not path.is_file():
        raise ModelUnavailable(_missing_message(str(weights)))
    model = build_cp_unet()
    try:
        if path.name.endswith((".h5", ".hdf5", ".keras")):
            model.load_weights(str(path))
        else:  # a legacy HDF5 file under another name: keras dispatches on the suffix
            import h5py
            from keras.src.legacy.saving import legacy_h5_format

            with h5py.File(path, "r") as f:
                group = f["model_weights"] if "layer_names" not in f.attrs and "model_weights" in f else f
                legacy_h5_format.load_weights_from_hdf5_group(group, model)
    except Exception as e:  # noqa: BLE001 - any failure means the file is not these weights
        msg = " ".join(str(e).split())[:300]
        raise ModelUnavailable(
            f"cp_unet: cannot load weights from {str(path)!r} ({type(e).__name__}: {msg}); it must be the "
            f"ClassifyPixels-UNet nuclei weights ({WEIGHTS_NAME}) from {WEIGHTS_URL}, set with {_CONFIG_HINT}"
        ) from e
    return model


# ------------------------------------------------------------------ prediction


def normalize_image(image: np.ndarray) -> np.ndarray:
    """Per-image min-max scaling to [0, 1] as the plugin did (a constant image becomes zeros)."""
    x = np.asarray(image, np.float32)
    x = x - np.min(x)
    top = float(np.max(x))
    return x / top if top > 0 else np.zeros_like(x)


def _pad_to_multiple(x: np.ndarray, multiple: int = MULTIPLE) -> np.ndarray:
    h, w = x.shape
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph == 0 and pw == 0:
        return x
    return np.pad(x, ((0, ph), (0, pw)), mode="symmetric")


def _windows(size: int, tile: int, halo: int) -> list[tuple[int, int, int, int]]:
    """(window start, window stop, core start, core stop) along one axis of a padded image."""
    out = []
    for s in range(0, size, tile):
        e = min(size, s + tile)
        out.append((max(0, s - halo), min(size, e + halo), s, e))
    return out


def predict_classes(model, image: np.ndarray, tile: int = TILE, halo: int = HALO) -> np.ndarray:
    """Class probabilities (H, W, 3) of a 2D image of any size.

    Min-max scales the image, pads it to a multiple of 8, predicts it whole
    or -- when it has more than ``tile`` x ``tile`` pixels -- in tiles of
    ``tile`` px with ``halo`` px of context (``tile`` and ``halo`` multiples
    of 8, ``halo`` > 46 for exact agreement), and crops back.
    """
    if tile % MULTIPLE or halo % MULTIPLE:
        raise ValueError(f"tile ({tile}) and halo ({halo}) must be multiples of {MULTIPLE}")
    img = np.asarray(image)
    if img.ndim != 2:
        raise ValueError(f"cp_unet expects a 2D (YX) image, got shape {img.shape}")
    h, w = img.shape
    x = _pad_to_multiple(normalize_image(img))

    def run(patch: np.ndarray) -> np.ndarray:
        out = model(patch[None, :, :, None], training=False)
        return np.asarray(out)[0]

    if x.size <= tile * tile:
        probs = run(x)
    else:
        probs = np.empty(x.shape + (len(CLASSES),), np.float32)
        for y0, y1, cy0, cy1 in _windows(x.shape[0], tile, halo):
            for x0, x1, cx0, cx1 in _windows(x.shape[1], tile, halo):
                p = run(x[y0:y1, x0:x1])
                probs[cy0:cy1, cx0:cx1] = p[cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0]
    return np.ascontiguousarray(probs[:h, :w], dtype=np.float32)


# ------------------------------------------------------------------ instances


def labels_from_classes(
    probs: np.ndarray,
    interior_threshold: float = 0.5,
    min_size: int = 20,
    foreground_threshold: float = 0.5,
    smooth_sigma: float = 0.0,
    min_distance: int = 0,
) -> np.ndarray:
    """Instance labels from the 3-class map (background, interior, boundary).

    Derivation
    ----------
    The network labels each pixel of a nucleus as *interior* or, in a thin
    rim, as *boundary*; where two nuclei touch, the rims of both form a
    boundary band that separates their interiors. Hence:

    1. **Objects = interior.** Seeds are the 4-connected components of
       ``P(interior) > interior_threshold``; the boundary band between
       touching nuclei keeps their seeds apart. With ``min_distance`` > 0 a
       seed is split further by a distance-transform watershed (for
       interiors that still touch, e.g. at low thresholds).
    2. **Extent = not background.** Each object may grow over
       ``P(interior) + P(boundary) > foreground_threshold`` (= ``1 -
       P(background)`` for a softmax), i.e. its boundary rim is given back.
    3. **Borders between objects = boundary class.** The growth is a
       marker watershed on the relief ``P(boundary)``: seeds flood the low
       interior first and meet on the boundary ridge, so touching nuclei
       are split along the predicted boundary, not along the background.

    Foreground without a seed (boundary-only fragments) is dropped; objects
    smaller than ``min_size`` pixels are removed. ``smooth_sigma`` > 0
    smooths each class map first (Gaussian), as OpSeF IV did with sigma 2.
    The background channel is used only for the extent (step 2) -- never
    as the boundary (OpSeF IV's bug, which merged touching nuclei).

    Parameters
    ----------
    probs : (Y, X, 3) float array, channels in :data:`CLASSES` order.

    Returns
    -------
    (Y, X) int32 labels 1..N.
    """
    p = np.asarray(probs, np.float32)
    if p.ndim != 3 or p.shape[-1] != len(CLASSES):
        raise ValueError(f"expected a (Y, X, 3) class map {CLASSES}, got shape {p.shape}")
    if smooth_sigma > 0:
        p = np.stack([filters.gaussian(p[..., k], sigma=smooth_sigma, preserve_range=True)
                      for k in range(p.shape[-1])], axis=-1)
    interior, boundary = p[..., 1], p[..., 2]

    seed_mask = interior > interior_threshold
    if min_distance > 0:
        seeds = split_foreground(seed_mask, min_distance=int(min_distance))
    else:
        seeds, _ = ndi.label(seed_mask)
    if seeds.max() == 0:
        return np.zeros(seed_mask.shape, np.int32)
    extent = ((interior + boundary) > foreground_threshold) | seed_mask
    labels = segmentation.watershed(boundary, markers=seeds, mask=extent)
    if min_size > 1:
        small = np.bincount(labels.ravel()) < int(min_size)
        small[0] = False
        labels[small[labels]] = 0
    labels, _, _ = segmentation.relabel_sequential(labels)
    return labels.astype(np.int32)


# ------------------------------------------------------------------ segmenter


@register_segmenter
class CPUNetSegmenter(Segmenter):
    """CellProfiler ClassifyPixels-UNet (3-class nuclei U-Net, Keras) + interior-seeded watershed.

    Needs the published weights file (not shipped, see :data:`WEIGHTS_URL`).
    """

    family = "cp_unet"
    init_params = (
        Param("weights", "str", "",
              help=f"path to the ClassifyPixels-UNet weights ({WEIGHTS_NAME}, from {WEIGHTS_URL})"),
        Param("device", "categorical", "auto", choices=("auto", "cpu"),
              help="auto: a GPU when TensorFlow sees one; cpu: force the CPU"),
    )
    params = (
        Param("interior_threshold", "float", 0.5, low=0.05, high=0.95,
              help="P(interior) above which pixels seed an object"),
        Param("min_size", "int", 20, low=0, high=10000, help="remove objects smaller than this (px)"),
        Param("foreground_threshold", "float", 0.5, low=0.05, high=0.95,
              help="P(interior)+P(boundary) above which objects may grow"),
        Param("smooth_sigma", "float", 0.0, low=0.0, high=5.0,
              help="Gaussian smoothing of the class maps before deriving objects (px)"),
        Param("min_distance", "int", 0, low=0, high=100,
              help="split seeds by distance-transform watershed with this min seed distance (0 = off)"),
    )

    _CACHE_SIZE = 4

    @classmethod
    def availability(cls, weights: str = "", device: str = "auto", **_: Any) -> tuple[bool, str]:
        path = Path(str(weights)).expanduser()
        if not str(weights) or not path.is_file():
            return False, _missing_message(str(weights))
        return True, f"weights {path}"

    def __init__(self, weights: str = "", device: str = "auto") -> None:
        super().__init__(weights=weights, device=device)
        ok, reason = self.availability(weights=weights, device=device)
        if not ok:
            raise ModelUnavailable(reason)
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        self._device = "gpu" if (device == "auto" and gpus) else "cpu"
        self._tf_device = "/GPU:0" if self._device == "gpu" else "/CPU:0"
        with tf.device(self._tf_device):
            self.model = load_cp_unet(weights)
        self._probs: OrderedDict[str, np.ndarray] = OrderedDict()

    @property
    def device(self) -> str:
        return self._device

    def probabilities(self, image: np.ndarray) -> np.ndarray:
        """(Y, X, 3) class probabilities; the last few images are cached, as trials re-use them."""
        img = np.ascontiguousarray(image, np.float32)
        key = hashlib.blake2b(img.tobytes(), digest_size=16).hexdigest() + str(img.shape)
        if key in self._probs:
            self._probs.move_to_end(key)
            return self._probs[key]
        import tensorflow as tf

        with tf.device(self._tf_device):
            probs = predict_classes(self.model, img)
        self._probs[key] = probs
        while len(self._probs) > self._CACHE_SIZE:
            self._probs.popitem(last=False)
        return probs

    # min-max input scaling is fixed: every tunable parameter acts on the class maps
    inference_params = ()

    def infer(self, image: np.ndarray, stats: dict | None = None, **_: Any) -> dict[str, np.ndarray]:
        # through the per-instance cache of the last few images, as whole calls did before the split
        return {"class_probabilities": self.probabilities(image)}

    def postprocess(self, raw: dict[str, np.ndarray], image: np.ndarray, stats: dict | None = None,
                    **params: Any) -> Segmentation:
        probs = raw["class_probabilities"]
        labels = labels_from_classes(probs, **params)
        ids = np.arange(1, int(labels.max()) + 1)
        conf = ndi.mean(probs[..., 1], labels, ids) if ids.size else []
        return Segmentation(
            labels,
            confidence={int(i): float(c) for i, c in zip(ids, conf)},
            extra={"class_probabilities": probs},
        )
