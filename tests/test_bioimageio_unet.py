"""The real pretrained bioimage.io U-Net (shipped in the package) behind the segmenter interface."""
from __future__ import annotations

import shutil

import numpy as np
import pytest

from opsef_opt.preprocess import run_chain
from opsef_opt.score.gt import instance_metrics
from opsef_opt.segment import ModelUnavailable, load_segmenter
from opsef_opt.segment.bioimageio_unet import BioimageioUNet, apply_processing

from conftest import shared


@pytest.fixture(scope="module")
def dsb512():
    from stardist.data import test_image_nuclei_2d

    image, truth = test_image_nuclei_2d(return_mask=True)
    return run_chain(image, "YX", [])[0], truth


@pytest.mark.parametrize("weights", ["onnx", "torchscript"])
def test_reproduces_reference_output(weights):
    folder = shared("models", "unet2d_nuclei_broad")
    x, ref = np.load(folder / "test_input.npy"), np.load(folder / "test_output.npy")
    model = load_segmenter("bioimageio_unet", weights=weights)
    assert model.kind == weights
    pkg = model.package
    out = apply_processing(model.predict(apply_processing(x, pkg.preprocessing, pkg.in_axes)),
                           pkg.postprocessing, pkg.out_axes)
    np.testing.assert_allclose(out, ref, atol=1e-4)
    np.testing.assert_allclose(model.probability(x[0, 0]), ref[0, 0], atol=1e-4)


def test_f1_on_dsb512(dsb512):
    image, truth = dsb512
    result = load_segmenter("bioimageio_unet")(image, "YX")
    f1 = instance_metrics(truth, result.labels)["f1"]
    assert f1 >= 0.65, f1
    assert set(result.confidence) == set(range(1, result.labels.max() + 1))
    assert all(0.5 <= c <= 1 for c in result.confidence.values())


def test_any_image_size_small_and_large(dsb512):
    image, truth = dsb512
    model = load_segmenter("bioimageio_unet")
    small = model.probability(image[:200, :300])
    assert small.shape == (200, 300) and 0 <= small.min() and small.max() <= 1
    big = np.pad(image, ((0, 300), (0, 250)), mode="reflect")  # 812 x 762: tiled with halo
    labels = model(big, "YX").labels
    assert labels.shape == big.shape
    assert instance_metrics(truth, labels[:512, :512])["f1"] >= 0.65


def test_model_loaded_once():
    assert load_segmenter("bioimageio_unet") is load_segmenter("bioimageio_unet")


def test_missing_weights_and_missing_package(tmp_path):
    broken = tmp_path / "pkg"
    shutil.copytree(shared("models", "unet2d_nuclei_broad"), broken)
    (broken / "weights.onnx").unlink()
    ok, reason = BioimageioUNet.availability(package=str(broken), weights="onnx")
    assert not ok and "weights.onnx" in reason
    with pytest.raises(ModelUnavailable, match="weights.onnx"):
        BioimageioUNet(package=str(broken), weights="onnx")
    assert BioimageioUNet(package=str(broken)).kind == "torchscript"  # auto falls back
    with pytest.raises(ModelUnavailable, match="no bioimageio.yaml or rdf.yaml"):
        BioimageioUNet(package=str(tmp_path / "nowhere"))
