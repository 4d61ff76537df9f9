"""On a CUDA machine, the shipped U-Net on the GPU gives what it gives on the CPU (skipped without CUDA).

CI has no GPU, so this runs where one is lent (see the README's "GPU" note); it
needs only torch, scikit-image and the package, no conftest.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

torch = pytest.importorskip("torch")

DEMO = Path(__file__).resolve().parents[1] / "opsef_opt" / "data" / "demo" / "images"

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: the GPU path cannot run here")


@pytest.mark.parametrize("name", ["dsb2018_256", "mitocheck_hela"])
def test_unet_on_cuda_matches_the_cpu(name):
    from opsef_opt.segment.bioimageio_unet import BioimageioUNet

    image = tifffile.imread(DEMO / f"{name}.tif").astype(np.float32)
    if image.ndim == 3:
        image = image.mean(axis=-1)
    cpu = BioimageioUNet(weights="torchscript", device="cpu")
    gpu = BioimageioUNet(weights="torchscript", device="auto")
    assert cpu.device == "cpu" and gpu.device == "cuda"
    p_cpu, p_gpu = cpu.probability(image), gpu.probability(image)
    assert p_cpu.shape == p_gpu.shape == image.shape
    assert np.abs(p_cpu - p_gpu).max() < 1e-3  # float32 kernels differ (cuDNN vs. CPU), not the model
    l_cpu, l_gpu = cpu.segment(image).labels, gpu.segment(image).labels
    assert l_cpu.max() > 5
    # labels from nearly equal maps: the same objects, up to pixels at the 0.5 threshold
    assert abs(int(l_cpu.max()) - int(l_gpu.max())) <= 1
    assert np.mean((l_cpu > 0) == (l_gpu > 0)) > 0.999
