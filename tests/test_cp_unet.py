"""CellProfiler ClassifyPixels-UNet: architecture, weight loading, and instances from the 3 classes."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import tifffile
from conftest import REPO, shared, randomize_cp_unet
from scipy import ndimage as ndi
from skimage import filters, segmentation

from opsef_opt.score.gt import instance_metrics
from opsef_opt.segment import ModelUnavailable, load_segmenter
from opsef_opt.segment.cp_unet import (
    WEIGHTS_URL,
    CPUNetSegmenter,
    labels_from_classes,
    predict_classes,
)

# ------------------------------------------------------------------ helpers


def _save_keras2_weights(model, path) -> None:
    """Write ``model``'s weights as a Keras 2 ``save_weights``/ModelCheckpoint HDF5 file.

    That is the layout of the published ``unet-checkpoint.hdf5``: root
    attributes ``layer_names``/``keras_version``/``backend``, one group per
    layer (Keras 2 auto names, e.g. ``conv2d_1``) with ``weight_names``.
    The names differ from ours on purpose: the plugin loads by layer order.
    """
    import h5py

    counts: dict[str, int] = {}
    kinds = {"InputLayer": "input", "Conv2D": "conv2d", "BatchNormalization": "batch_normalization",
             "MaxPooling2D": "max_pooling2d", "UpSampling2D": "up_sampling2d",
             "Concatenate": "concatenate", "Activation": "activation"}
    with h5py.File(path, "w") as f:
        names = []
        for layer in model.layers:
            kind = kinds[type(layer).__name__]
            counts[kind] = counts.get(kind, 0) + 1
            name = f"{kind}_{counts[kind]}"
            names.append(name.encode())
            g = f.create_group(name)
            ws = layer.get_weights()
            suffixes = {2: ("kernel", "bias"), 4: ("gamma", "beta", "moving_mean", "moving_variance")}.get(len(ws), ())
            wnames = [f"{name}/{s}:0".encode() for s in suffixes]
            g.attrs["weight_names"] = wnames
            for wn, w in zip(wnames, ws):
                g.create_dataset(wn.decode(), data=w)
        f.attrs["layer_names"] = names
        f.attrs["backend"] = b"tensorflow"
        f.attrs["keras_version"] = b"2.0.8"


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """(model with deterministic random weights, its weights file in the published layout)."""
    from opsef_opt.segment.cp_unet import build_cp_unet

    model = build_cp_unet()
    randomize_cp_unet(model)
    path = tmp_path_factory.mktemp("cp_unet") / "unet-checkpoint.hdf5"
    _save_keras2_weights(model, path)
    return model, path


def _gt():
    return tifffile.imread(shared("gt", "dsb2018_256", "labels.tif")).astype(np.int32)


def _class_maps(labels: np.ndarray, soften: float = 0.0) -> np.ndarray:
    """3-class map (background, interior, boundary) of ground truth; softened by a Gaussian if asked."""
    rim = segmentation.find_boundaries(labels, mode="inner")  # each object's own border pixels
    onehot = np.stack([labels == 0, (labels > 0) & ~rim, rim], axis=-1).astype(np.float32)
    if soften <= 0:
        return onehot
    soft = np.stack([filters.gaussian(onehot[..., k], soften) for k in range(3)], axis=-1)
    return (soft / soft.sum(-1, keepdims=True)).astype(np.float32)


def _touching_pairs(labels: np.ndarray) -> set[tuple[int, int]]:
    pairs = set()
    for a, b in ((labels[:-1], labels[1:]), (labels[:, :-1], labels[:, 1:])):
        m = (a > 0) & (b > 0) & (a != b)
        pairs |= {(int(min(x, y)), int(max(x, y))) for x, y in zip(a[m], b[m])}
    return pairs


def _merged_pairs(truth: np.ndarray, pred: np.ndarray, pairs) -> list[tuple[int, int]]:
    """Touching true objects whose majority predicted label is the same object."""
    def owner(i):
        v = pred[truth == i]
        v = v[v > 0]
        return int(np.bincount(v).argmax()) if v.size else 0

    return [(i, j) for i, j in pairs if owner(i) == owner(j) != 0]


def _opsef_iv_cell_components(probs: np.ndarray, boundary_channel: int, sigma: float = 0.0) -> np.ndarray:
    """OpSeF IV ``UNet_Watershed`` cell mask (``cell > bckg & cell > bounda``) as connected components.

    OpSeF IV set ``bounda = gaussian(p[:, :, 0])``, the background channel;
    ``boundary_channel=2`` is what it meant.
    """
    def g(a):
        return filters.gaussian(a, sigma) if sigma > 0 else a

    bckg, cell, bounda = g(probs[..., 0]), g(probs[..., 1]), g(probs[..., boundary_channel])
    return ndi.label((cell > bckg) & (cell > bounda))[0]


# ------------------------------------------------------------------ module and architecture


def test_import_is_light_and_registers():
    code = (
        "import sys, opsef_opt.segment.cp_unet as m;"
        "from opsef_opt.segment import SEGMENTERS;"
        "assert SEGMENTERS.get('cp_unet') is m.CPUNetSegmenter;"
        "heavy = [k for k in ('tensorflow', 'keras') if k in sys.modules];"
        "assert not heavy, heavy"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


def test_architecture(reference):
    model, _ = reference
    kinds = [type(layer).__name__ for layer in model.layers]
    convs = [layer for layer in model.layers if type(layer).__name__ == "Conv2D"]
    assert kinds.count("MaxPooling2D") == 3 and kinds.count("UpSampling2D") == 3
    assert kinds.count("Concatenate") == 3
    assert kinds.count("BatchNormalization") == 14 == len(convs) - 1  # every 3x3 conv is batch-normalised
    assert [c.filters for c in convs] == [64, 64, 128, 128, 256, 256, 512, 512, 256, 256, 128, 128, 64, 64, 3]
    assert all(c.kernel_size == (3, 3) for c in convs[:-1]) and convs[-1].kernel_size == (1, 1)
    assert all(c.padding == "same" for c in convs)
    # BN follows each 3x3 conv, in the plugin's order (the published weights load by order)
    weighted = [k for k in kinds if k in ("Conv2D", "BatchNormalization")]
    assert weighted == ["Conv2D", "BatchNormalization"] * 14 + ["Conv2D"]
    assert kinds[-1] == "Activation" and model.layers[-1].get_config()["activation"] == "softmax"
    assert model.output_shape == (None, None, None, 3)
    assert model.count_params() == 7_793_155

    image = np.random.default_rng(1).random((45, 61)).astype(np.float32)  # not multiples of 8, not square
    probs = predict_classes(model, image)
    assert probs.shape == (45, 61, 3) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)


def test_tiling_agrees_with_whole_image():
    """Tiles with a halo at least the receptive-field radius reproduce the whole-image prediction."""

    class Local:  # stand-in network: a zero-padded 41 x 41 box filter (radius 20 < halo)
        def __call__(self, x, training=False):
            y = ndi.uniform_filter(np.asarray(x)[0, :, :, 0], size=41, mode="constant")
            return np.stack([y, 2 * y, 3 * y], axis=-1)[None]

    image = np.random.default_rng(2).random((150, 101)).astype(np.float32)
    whole = predict_classes(Local(), image)
    tiled = predict_classes(Local(), image, tile=32, halo=24)
    assert tiled.shape == whole.shape == (150, 101, 3)
    np.testing.assert_allclose(tiled, whole, atol=1e-6)
    with pytest.raises(ValueError, match="multiples of 8"):
        predict_classes(Local(), image, tile=30)


# ------------------------------------------------------------------ weights


def test_published_layout_weights_load_through_segmenter(reference):
    model, path = reference
    seg = load_segmenter("cp_unet", weights=str(path), device="cpu")
    assert isinstance(seg, CPUNetSegmenter) and seg.device == "cpu"
    assert CPUNetSegmenter.availability(weights=str(path))[0]
    for mine, ref in zip(seg.model.weights, model.weights):
        np.testing.assert_array_equal(np.asarray(mine), np.asarray(ref))

    image = np.random.default_rng(3).random((45, 61)).astype(np.float32)
    image = filters.gaussian(image, 2).astype(np.float32)
    first = seg(image, "YX", interior_threshold=0.4, min_size=0)
    seg._probs.clear()  # predict again, not from the cache
    again = seg(image, "YX", interior_threshold=0.4, min_size=0)
    assert first.labels.dtype == np.int32 and first.labels.shape == (45, 61)
    assert first.labels.max() > 0
    np.testing.assert_array_equal(first.labels, again.labels)
    np.testing.assert_allclose(first.extra["class_probabilities"], predict_classes(model, image), atol=1e-5)
    assert set(first.confidence) == set(range(1, int(first.labels.max()) + 1))


def test_missing_weights_say_which_file_and_where_to_get_it(tmp_path):
    missing = tmp_path / "nowhere" / "unet-checkpoint.hdf5"
    ok, reason = CPUNetSegmenter.availability(weights=str(missing))
    assert not ok and str(missing) in reason and WEIGHTS_URL in reason
    with pytest.raises(ModelUnavailable) as e:
        CPUNetSegmenter(weights=str(missing))
    msg = str(e.value)
    assert "\n" not in msg
    assert str(missing) in msg and WEIGHTS_URL in msg and "study.search.models.<label>.init.weights=" in msg
    with pytest.raises(ModelUnavailable, match="init.weights is empty"):
        CPUNetSegmenter()


def test_unreadable_weights_are_model_unavailable(tmp_path):
    bad = tmp_path / "unet-checkpoint.hdf5"
    bad.write_bytes(b"not an HDF5 file")
    with pytest.raises(ModelUnavailable) as e:
        CPUNetSegmenter(weights=str(bad), device="cpu")
    assert str(bad) in str(e.value) and WEIGHTS_URL in str(e.value) and "\n" not in str(e.value)


# ------------------------------------------------------------------ instances from the classes


@pytest.mark.parametrize("soften", [0.0, 1.0], ids=["one-hot", "softened"])
def test_labels_from_classes_recovers_ground_truth(soften):
    truth = _gt()
    pairs = _touching_pairs(truth)
    assert len(pairs) >= 5  # the image has touching nuclei that share a boundary
    pred = labels_from_classes(_class_maps(truth, soften))
    assert pred.dtype == np.int32 and pred.shape == truth.shape
    assert instance_metrics(truth, pred, iou=0.5)["f1"] >= 0.95
    assert _merged_pairs(truth, pred, pairs) == []


def test_boundary_from_background_channel_merges_touching_nuclei():
    """Regression: OpSeF IV read the boundary from channel 0 (background) and merged touching nuclei."""
    truth = _gt()
    pairs = _touching_pairs(truth)
    probs = _class_maps(truth, soften=1.0)
    opsef_iv = _opsef_iv_cell_components(probs, boundary_channel=0)
    meant = _opsef_iv_cell_components(probs, boundary_channel=2)
    ours = labels_from_classes(probs)
    assert len(_merged_pairs(truth, opsef_iv, pairs)) == len(pairs)  # every touching pair merged
    assert _merged_pairs(truth, meant, pairs) == []  # the channel is the cause
    assert _merged_pairs(truth, ours, pairs) == []
    assert instance_metrics(truth, ours)["f1"] > instance_metrics(truth, opsef_iv)["f1"]


def test_labels_from_classes_edge_cases():
    empty = np.zeros((20, 30, 3), np.float32)
    empty[..., 0] = 1
    assert labels_from_classes(empty).max() == 0
    with pytest.raises(ValueError, match="class map"):
        labels_from_classes(np.zeros((20, 30), np.float32))
    # a boundary-only fragment (no interior) is not an object; min_size drops small ones
    probs = empty.copy()
    probs[2:8, 2:8] = (0, 0, 1)
    probs[10:18, 10:28] = (0, 0, 1)
    probs[11:17, 11:27] = (0, 1, 0)
    out = labels_from_classes(probs, min_size=0)
    assert out.max() == 1 and (out > 0).sum() == 8 * 18
    assert labels_from_classes(probs, min_size=8 * 18 + 1).max() == 0
