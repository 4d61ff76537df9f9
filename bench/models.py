"""Load time and inference speed of every model family on a 512 x 512 nuclei image.

Prints, per model: load time (construction, incl. the library import the
first model of a library pays), median seconds per 512 x 512 image over
repeated calls, and the ratio to the fastest model. OpSeF IV reported
StarDist ~1.5x and Cellpose 3.5-5x the time of its U-Net; compare side by side.

Pretrained Cellpose/StarDist weights cannot be downloaded on offline
machines. Speed does not depend on the weights' values, so when the
pretrained files are absent the bench builds the *same architecture* with
untrained weights (Cellpose's default net, StarDist's 2D_versatile_fluo
config) and says so in the table; segmentation quality is not measured here.

Usage: python bench/models.py [--repeats 5] [--device auto]
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np


def _image() -> np.ndarray:
    from stardist.data import test_image_nuclei_2d

    from opsef_opt.preprocess import run_chain

    return run_chain(test_image_nuclei_2d(), "YX", [])[0]


def _barely_trained(family: str, tmp: Path) -> Path:
    """A model with the pretrained models' architecture, trained for one short epoch (speed only)."""
    from stardist.data import test_image_nuclei_2d

    image, labels = test_image_nuclei_2d(return_mask=True)
    if family == "cellpose":
        from opsef_opt.train.cellpose_train import train_cellpose

        # Cellpose's default net (nbase 2-32-64-128-256), as in the pretrained nuclei/cyto models
        return train_cellpose([image], [labels], tmp / "cellpose", n_epochs=1, widths=(32, 64, 128, 256))
    from opsef_opt.train.stardist_train import train_stardist

    # StarDist's 2D_versatile_fluo configuration: 32 rays, grid 2, U-Net depth 3 with 32 base filters
    return train_stardist([image], [labels], tmp / "stardist", epochs=1, steps_per_epoch=2, n_rays=32,
                          grid=2, unet_n_depth=3, unet_n_filter_base=32, optimize_thresholds=False)


def _candidates(tmp: Path, device: str) -> list[tuple[str, str, Callable[[], Any]]]:
    """(label, note, constructor) per model to time."""
    from opsef_opt.segment import SEGMENTERS

    out: list[tuple[str, str, Callable[[], Any]]] = [
        ("classical", "threshold + watershed", lambda: SEGMENTERS.get("classical")()),
        ("bioimageio_unet (onnx)", "pretrained unet2d_nuclei_broad",
         lambda: SEGMENTERS.get("bioimageio_unet")(weights="onnx", device=device)),
        ("bioimageio_unet (torchscript)", "pretrained unet2d_nuclei_broad",
         lambda: SEGMENTERS.get("bioimageio_unet")(weights="torchscript", device=device)),
    ]
    if "cellpose" in SEGMENTERS:
        cls = SEGMENTERS.get("cellpose")
        ok, _ = cls.availability(model="nuclei")
        if ok:
            out.append(("cellpose nuclei", "pretrained", lambda cls=cls: cls(model="nuclei", device=device)))
        else:
            path = _barely_trained("cellpose", tmp)
            out.append(("cellpose (nuclei architecture)", "architecture of the pretrained model, barely trained: speed only",
                        lambda cls=cls, path=path: cls(model=str(path), device=device)))
    if "stardist" in SEGMENTERS:
        cls = SEGMENTERS.get("stardist")
        ok, _ = cls.availability(model="2D_versatile_fluo")
        if ok:
            out.append(("stardist 2D_versatile_fluo", "pretrained", lambda cls=cls: cls(model="2D_versatile_fluo")))
        else:
            folder = _barely_trained("stardist", tmp)
            out.append(("stardist (versatile architecture)", "architecture of the pretrained model, barely trained: speed only",
                        lambda cls=cls, folder=folder: cls(model=str(folder))))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    args = ap.parse_args()
    image = _image()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, note, make in _candidates(Path(tmp), args.device):
            t0 = time.perf_counter()
            model = make()
            load = time.perf_counter() - t0
            model(image, "YX")  # warm-up (lazy initialisation, kernel selection)
            times = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                result = model(image, "YX")
                times.append(time.perf_counter() - t0)
            rows.append((label, note, load, statistics.median(times), int(result.labels.max()), model.device))
    fastest = min(r[3] for r in rows)
    fastest_deep = min((r[3] for r in rows if not r[0].startswith("classical")), default=fastest)
    print(f"{'model':36s} {'device':6s} {'load s':>7s} {'s/image':>8s} {'x fastest':>9s} {'x U-Net':>8s} "
          f"{'objects':>7s}  note")
    for label, note, load, sec, n, dev in rows:
        print(f"{label:36s} {dev:6s} {load:7.2f} {sec:8.3f} {sec / fastest:9.1f} {sec / fastest_deep:8.1f} "
              f"{n:7d}  {note}")
    print(f"\n512 x 512 image, median of {args.repeats} calls after one warm-up; "
          f"'x U-Net' = relative to the fastest deep model.")


if __name__ == "__main__":
    main()
