"""Check the Cellpose 4 inference / post-processing split against Cellpose 4's own ``eval``.

Run in an environment with cellpose>=4 (the project pins 3.1, so use a
separate venv: ``python -m venv --system-site-packages v4 && v4/bin/pip install
cellpose==4.2.1.1``). Pretrained Cellpose-SAM weights cannot be downloaded on
offline machines, so this builds a randomly initialised Cellpose-SAM network
(``cellpose.vit.CPSAM``, 1.2 GB file) and compares, for two diameters and three
(cellprob, flow) threshold pairs, the labels of the adapter's ``infer`` +
``postprocess`` (one forward pass per diameter) with ``CellposeModel.eval``
on the same image (a forward pass each). Random weights give arbitrary flows;
a low cell-probability threshold still yields hundreds of objects to compare.

``--stub-torchvision``: where torchvision's wheel cannot load with the
installed torch (a CUDA-linked torchvision next to a CPU torch), install a
stand-in for the parts segment_anything imports but Cellpose-SAM's inference
never calls (its automatic mask generator and training augmentations).

Usage: python bench/cellpose4_split.py [--weights FILE] [--stub-torchvision]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np
import tifffile

IMAGE = Path(__file__).resolve().parents[1] / "opsef_opt" / "data" / "demo" / "images" / "dsb2018_256.tif"


def stub_torchvision() -> None:
    def unavailable(*_a, **_k):
        raise NotImplementedError("torchvision stand-in (bench/cellpose4_split.py --stub-torchvision)")

    mods = {name: types.ModuleType(name) for name in (
        "torchvision", "torchvision.ops", "torchvision.ops.boxes", "torchvision.transforms",
        "torchvision.transforms.functional", "torchvision.transforms._functional_tensor")}
    mods["torchvision.ops.boxes"].batched_nms = mods["torchvision.ops.boxes"].box_area = unavailable
    mods["torchvision.transforms.functional"].resize = unavailable
    mods["torchvision.transforms.functional"].to_pil_image = unavailable
    mods["torchvision"].ops, mods["torchvision"].transforms = mods["torchvision.ops"], mods["torchvision.transforms"]
    mods["torchvision.ops"].boxes = mods["torchvision.ops.boxes"]
    mods["torchvision.transforms"].functional = mods["torchvision.transforms.functional"]
    mods["torchvision.transforms"]._functional_tensor = mods["torchvision.transforms._functional_tensor"]
    sys.modules.update(mods)


def random_weights(path: Path) -> None:
    import torch
    from cellpose.vit import CPSAM

    torch.manual_seed(0)
    torch.save(CPSAM(dtype=torch.float32).state_dict(), path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", type=Path, help="a Cellpose 4 model file (default: random weights, built here)")
    ap.add_argument("--stub-torchvision", action="store_true")
    args = ap.parse_args()
    if args.stub_torchvision:
        stub_torchvision()
    from opsef_opt.segment.cellpose_model import CellposeSegmenter

    with tempfile.TemporaryDirectory() as tmp:
        weights = args.weights
        if weights is None:
            weights = Path(tmp) / "random_cpsam.pt"
            random_weights(weights)
        seg = CellposeSegmenter(model=str(weights), device="cpu")
        print(f"cellpose {seg.version}: inference params {seg.split_params({'diameter': 60.0})[0]}, "
              f"post-processing params {list(seg.split_params({'flow_threshold': 0.4, 'cellprob_threshold': 0.0})[1])}")
        image = tifffile.imread(IMAGE).astype(np.float32)[:128, :128]
        failed = 0
        for d in (None, 60.0):
            t0 = time.perf_counter()
            raw = seg.infer(image, diameter=d)
            t_infer = time.perf_counter() - t0
            for ct, ft in ((-6.0, 0.0), (-6.0, 3.0), (-3.0, 0.4)):
                t0 = time.perf_counter()
                split = seg.postprocess(raw, image, flow_threshold=ft, cellprob_threshold=ct).labels
                t_post = time.perf_counter() - t0
                t0 = time.perf_counter()
                direct = np.asarray(seg._model.eval(image, diameter=d, normalize=True, flow_threshold=ft,
                                                    cellprob_threshold=ct)[0]).astype(np.int32)
                t_eval = time.perf_counter() - t0
                same = np.array_equal(split, direct)
                failed += not same
                print(f"diameter {d}, cellprob {ct}, flow {ft}: {int(direct.max())} objects, split labels "
                      f"{'equal' if same else 'DIFFER'}; forward pass once {t_infer:.1f} s, post-processing "
                      f"{t_post:.2f} s, eval {t_eval:.1f} s")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
