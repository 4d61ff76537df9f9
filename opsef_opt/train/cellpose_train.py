"""Train a small Cellpose network from scratch on the user's own images and labels.

What this is: a *tiny* Cellpose 3 net (U-Net level widths
``(8, 16, 32, 64, 256)`` instead of Cellpose's ``(32, 64, 128, 256)``),
trained from random weights for ~100 epochs on 64×64 crops, with objects
resized to a diameter of 12 px. On three 256×256 tiles of the DSB 2018
nuclei image (stardist's ``test_image_nuclei_2d``) it trains in 30-40 s on
one CPU thread (plus ~10 s to import Cellpose) and reaches F1 ≈ 0.9 (IoU 0.5)
on the held-out fourth tile and ≈ 0.8 on another DSB image (``diameter=9``). That is enough for tests, and
for users with labels of their own who need a model quickly and offline.

What this is not: a replacement for the pretrained ``nuclei``/``cyto3``
models, which were trained for many more epochs on large and varied image
collections and generalise to data they have not seen. A tiny net trained on
a few images knows only those images' look; fewer than ~60 epochs often give
a net that finds (almost) nothing; more epochs and more labelled images help.

The saved file is a plain Cellpose state dict (``CPnet.save_model``); the
architecture is implied by the weight shapes, so
:class:`opsef_opt.segment.cellpose_model.CellposeSegmenter` rebuilds it when
loading: ``study.search.models.<label>.init.model=/path/to/cellpose_tiny``.

Scale convention: the net is trained with each image resized so that its
objects have diameter ``diam_mean`` (stored in the file together with
``diam_labels``, the mean object diameter of the training labels). The
adapter's defaults (``diameter=None``, ``scale=None``) assume new images
have objects of the training size; give ``diameter`` (pixels) for images
whose objects are larger or smaller.
"""
from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Sequence

import numpy as np

__all__ = ["train_cellpose", "TINY_WIDTHS"]

log = logging.getLogger(__name__)

#: widths of the U-Net levels (Cellpose's ``nbase`` without the 2 input channels); Cellpose 3
#: inference needs the last (the style vector length) to be 256
TINY_WIDTHS = (8, 16, 32, 64, 256)


def train_cellpose(
    images: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    out_dir: str | Path,
    n_epochs: int = 100,
    widths: Sequence[int] = TINY_WIDTHS,
    seed: int = 0,
    *,
    diam_mean: float | None = 12.0,
    learning_rate: float = 0.2,
    batch_size: int = 8,
    bsize: int = 64,
    nimg_per_epoch: int | None = 8,
    weight_decay: float = 1e-5,
    min_train_masks: int = 1,
    model_name: str = "cellpose_tiny",
    device: str = "auto",
    cpu_threads: int | None = 1,
) -> Path:
    """Train a Cellpose net from random weights and return the saved model file.

    Parameters
    ----------
    images : list of (Y, X) arrays
        Grayscale training images, any dtype (each is percentile-normalised
        as Cellpose does at inference with ``normalize=True``).
    labels : list of (Y, X) int arrays
        Instance labels (0 = background) matching ``images``. Not modified
        (Cellpose renumbers label arrays in place, so copies are passed).
    out_dir : path
        Folder for the model file ``out_dir / model_name`` (created).
    n_epochs : int
        Training epochs; each sees ``nimg_per_epoch`` random crops of
        ``bsize`` × ``bsize`` pixels of the resized images (rotated, flipped,
        rescaled ×0.5–1.5).
    widths : sequence of int
        Widths of the U-Net levels, coarse levels last (2 to 6 levels); the
        last one is the length of Cellpose's style vector, which Cellpose 3
        inference requires to be 256. Cellpose's default net is
        ``(32, 64, 128, 256)``; the default here is much cheaper (its
        coarsest, 256-wide level works on 1/16 of the crop, not 1/8).
    seed : int
        Seeds torch's weight initialisation (Cellpose seeds numpy per epoch
        itself), so a run is repeatable on the same machine and device.
    diam_mean : float or None
        Object diameter (pixels) the net is trained at: images are resized
        by ``diam_mean / (their median object diameter)``. The small default
        with 64-pixel crops keeps training cheap; ``None`` trains at the
        mean training-object diameter (no resizing; use a larger ``bsize``,
        about 5 × that diameter).
    bsize : int
        Training crop size; a multiple of ``2 ** (len(widths) - 1)``.
    learning_rate, batch_size, weight_decay :
        SGD (momentum 0.9) settings; Cellpose warms the rate up over 10 epochs.
    min_train_masks : int
        Images with fewer labelled objects are skipped.
    device : {"auto", "cpu", "cuda"}
        ``auto`` uses a CUDA GPU when torch sees one.
    cpu_threads : int or None
        Torch threads while training on the CPU (restored afterwards);
        ``None`` keeps torch's setting. One thread is the default: the tiny
        net's layers are too small to gain much from more, and on a busy
        machine two OpenMP threads were up to 10x slower than one.

    Returns
    -------
    Path
        The saved model file (about 21 MB with the default widths).

    Examples
    --------
    One epoch on a 128 x 128 crop only shows the calls (a usable net needs
    the default 100 epochs and more of the image):

    >>> import tempfile
    >>> from stardist.data import test_image_nuclei_2d
    >>> img, lbl = test_image_nuclei_2d(return_mask=True)
    >>> img, lbl = img[:128, :128], lbl[:128, :128]
    >>> out = tempfile.TemporaryDirectory()
    >>> path = train_cellpose([img], [lbl], out.name, n_epochs=1)
    >>> path.name
    'cellpose_tiny'
    >>> from opsef_opt.segment import load_segmenter
    >>> model = load_segmenter("cellpose", model=str(path), device="cpu")
    >>> model.segment(img / img.max()).labels.shape
    (128, 128)
    >>> out.cleanup()
    """
    if len(images) == 0 or len(images) != len(labels):
        raise ValueError(f"train_cellpose needs as many label images as images (got {len(images)} and {len(labels)})")
    imgs, lbls = [], []
    for i, (img, lbl) in enumerate(zip(images, labels)):
        img = np.asarray(img)
        lbl = np.asarray(lbl)
        if img.ndim != 2 or img.shape != lbl.shape:
            raise ValueError(
                f"train_cellpose: image {i} must be 2D (Y, X) with labels of the same shape; "
                f"got image {img.shape} and labels {lbl.shape}"
            )
        imgs.append(img.astype(np.float32))
        lbls.append(lbl.astype(np.int32))  # a copy: cellpose renumbers labels in place
    widths = [int(w) for w in widths]
    # at most 6 levels: Cellpose's 224-px inference tiles can be halved 5 times
    if not 2 <= len(widths) <= 6 or min(widths) < 1 or widths[-1] != 256:
        raise ValueError(
            f"train_cellpose: widths must list 2 to 6 positive ints ending with 256 "
            f"(Cellpose 3 inference expects a 256-long style vector), got {widths}"
        )
    step = 2 ** (len(widths) - 1)
    if bsize % step:
        raise ValueError(f"train_cellpose: bsize={bsize} must be a multiple of {step} for {len(widths)} levels")

    import torch
    from cellpose import train, utils
    from cellpose.resnet_torch import CPnet

    from opsef_opt.segment.device import torch_device

    if diam_mean is None:
        diams = [max(utils.diameters(lbl)[0], 5.0) for lbl in lbls if lbl.max() > 0]
        if not diams:
            raise ValueError("train_cellpose: the label images contain no objects")
        diam_mean = float(np.mean(diams))

    dev = torch.device(torch_device(device))
    torch.manual_seed(seed)
    # the network CellposeModel builds, with other widths; random weights, nothing downloaded
    net = CPnet([2, *widths], nout=3, sz=3, mkldnn=False, max_pool=True, diam_mean=diam_mean).to(dev)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    models_dir_existed = (out_dir / "models").exists()
    t0 = time.perf_counter()
    # After ~60 epochs some activations/gradients of the tiny net become denormal floats, which
    # made each CPU epoch ~20x slower; flushing them to zero keeps epochs fast (same losses).
    flushed = dev.type == "cpu" and torch.set_flush_denormal(True)
    threads = torch.get_num_threads()
    if dev.type == "cpu" and cpu_threads:
        torch.set_num_threads(int(cpu_threads))
    try:
        saved, _, _ = train.train_seg(
            net, train_data=imgs, train_labels=lbls, channels=[0, 0], normalize=True,
            n_epochs=n_epochs, learning_rate=learning_rate, weight_decay=weight_decay, SGD=True,
            batch_size=batch_size, bsize=bsize, nimg_per_epoch=nimg_per_epoch, rescale=True,
            min_train_masks=min_train_masks, save_path=out_dir, save_every=n_epochs + 1,
            model_name=model_name,
        )
    finally:
        torch.set_num_threads(threads)
        if flushed:
            torch.set_flush_denormal(False)  # torch's default
    target = out_dir / model_name
    shutil.move(str(saved), target)  # cellpose writes to out_dir/models/<name>
    if not models_dir_existed:
        try:
            (out_dir / "models").rmdir()
        except OSError:
            pass
    log.info("trained cellpose net %s (%d epochs) in %.1f s -> %s", widths, n_epochs,
             time.perf_counter() - t0, target)
    return target
