"""Train a small Cellpose or StarDist model from scratch on your own images and label images.

    python -m opsef_opt.train cellpose --images DIR --labels DIR --out DIR [--epochs N]
    python -m opsef_opt.train stardist --images DIR --labels DIR --out DIR [--epochs N]

Images and labels are paired by file name (``<stem>.tif`` in both folders).
The result (a Cellpose model file or a StarDist model folder) is used in a
study as ``init: {model: /path/printed/here}``. These are small nets trained
from random weights, useful for your own data and for testing; they do not
replace the pretrained models.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np


def _pairs(images: Path, labels: Path, pattern: str) -> tuple[list[np.ndarray], list[np.ndarray]]:
    from opsef_opt.io import read_image

    xs, ys = [], []
    for path in sorted(images.glob(pattern)):
        lab = labels / path.name
        if not lab.is_file():
            print(f"skipping {path.name}: no {lab}", file=sys.stderr)
            continue
        (img,) = read_image(path)
        (lbl,) = read_image(lab)
        if img.axes != "YX" or lbl.axes != "YX":
            print(f"skipping {path.name}: only 2D grayscale images are supported", file=sys.stderr)
            continue
        xs.append(img.data)
        ys.append(lbl.data.astype(np.int32))
    if not xs:
        sys.exit(f"no image/label pairs found in {images} and {labels} ({pattern})")
    return xs, ys


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m opsef_opt.train", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("family", choices=("cellpose", "stardist"))
    ap.add_argument("--images", type=Path, required=True)
    ap.add_argument("--labels", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--pattern", default="*.tif")
    ap.add_argument("--epochs", type=int, default=None, help="default: the family's tested default")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--name", default="tiny", help="StarDist model folder name inside --out")
    args = ap.parse_args(argv)
    images, labels = _pairs(args.images, args.labels, args.pattern)
    if args.family == "cellpose":
        from opsef_opt.train.cellpose_train import train_cellpose

        kw = {"n_epochs": args.epochs} if args.epochs else {}
        out = train_cellpose(images, labels, args.out, seed=args.seed, **kw)
    else:
        from opsef_opt.train.stardist_train import train_stardist

        kw = {"epochs": args.epochs} if args.epochs else {}
        out = train_stardist(images, labels, args.out, name=args.name, seed=args.seed, **kw)
    print(f"trained {args.family} model: {out}")
    print(f"use it in a study: init: {{model: {out}}}")


if __name__ == "__main__":
    main()
