"""Stability proxy: does the pipeline give the same objects when the input changes slightly?

Why it tracks quality: a real nucleus is still there after a little camera
noise, a shift by a few pixels or a 10% change of magnification, so a
pipeline that has found the real objects finds them again. Objects that
depend on chance (noise picked up as objects, watershed splits decided by a
single grey level, thresholds sitting on the edge of a histogram mode)
change under such perturbations. The proxy re-runs the trial's whole
pipeline (``result.segment``) on perturbed copies of the input, maps the
labels back to the original grid and measures the F1 (IoU 0.5) with the
original labels.

By design it cannot see *consistent* errors: a pipeline that merges every
pair of touching nuclei does so on the perturbed images too.

Cost: one more forward pass per image and perturbation. In a search the
perturbed forward pass is cached like any other (per inference key and
perturbation, :mod:`opsef_opt.search.infercache`), so trials that differ
only in post-processing share it; and the search does not run this proxy
at all unless an enabled score uses it (a weight > 0, the gate, the
``proxy.stability`` objective, or a tag-scored objective): it is registered
with ``cost="model"``, and the search gives a re-segmenter only when such a
proxy is enabled (``opsef_opt.search.trial._needs_model_runs``); its value
is NaN otherwise.

Perturbations (only along Y and X, so inputs with Z or RGB channels and
pipelines that project Z to a 2D label image all work):

``noise``
    additive Gaussian noise, sigma = ``noise`` x the input's 1-99 percentile
    range, from a seeded generator (reproducible).
``shift``
    translation by ``shift`` pixels down and right, edges filled by
    reflection; only the region both images see is compared.
``zoom_in`` / ``zoom_out``
    rescaling by 1 +/- ``zoom`` (linear interpolation); labels come back by
    nearest neighbour.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage as ndi

from opsef_opt.params import Param
from opsef_opt.score.proxies._match import match_instances
from opsef_opt.score.registry import ImageResult, register_proxy

__all__ = ["PERTURBATIONS", "perturb", "unperturb_labels", "valid_region", "stability_score"]

#: the perturbations :func:`perturb` knows
PERTURBATIONS = ("noise", "shift", "zoom_in", "zoom_out")

#: default: one extra model run per image (the best single perturbation in
#: bench/proxy_validity.py); stability is logged for every trial, for the tag
#: model and for users who weight it, but is not in the default combination
DEFAULT_PERTURBATIONS = "noise"


def _yx(axes: str, ndim: int) -> tuple[int, int]:
    if len(axes) != ndim or "Y" not in axes or "X" not in axes:
        raise ValueError(f"axes {axes!r} do not describe a {ndim}D array with Y and X")
    return axes.index("Y"), axes.index("X")


def _zoom_factor(name: str, zoom: float) -> float:
    return 1.0 + zoom if name == "zoom_in" else 1.0 - zoom


def _check_name(name: str) -> None:
    if name not in PERTURBATIONS:
        raise ValueError(f"unknown perturbation {name!r}; expected one of {', '.join(PERTURBATIONS)}")


def perturb(source: np.ndarray, axes: str, name: str, seed: int = 0, *,
            noise: float = 0.05, shift: int = 3, zoom: float = 0.1, order: int = 1) -> np.ndarray:
    """A perturbed copy of ``source`` (only its Y and X axes change).

    Parameters
    ----------
    source : array with axes ``axes`` (e.g. ``"YX"``, ``"YXC"``, ``"ZYX"``).
    name : {"noise", "shift", "zoom_in", "zoom_out"}
    seed : int
        Seed of the noise generator.
    noise : float
        Noise sigma as a fraction of the 1-99 percentile range.
    shift : int
        Translation in pixels along Y and X (content moves down and right).
    zoom : float
        Relative scale change of ``zoom_in`` / ``zoom_out``.
    order : {1, 0}
        Interpolation of the zooms: linear for images, 0 (nearest) to move a
        label image the same way (then the dtype is kept).

    Returns
    -------
    float32 array (``order=1``); the same shape except for zooms, whose Y
    and X sizes are scaled. Pipelines normalise their input, so the dtype
    change is harmless.
    """
    _check_name(name)
    src = np.asarray(source)
    ay, ax = _yx(axes, src.ndim)
    if name == "noise":
        flat = src.ravel()
        step = max(flat.size // 1_000_000, 1)  # percentiles of a large stack from a subsample
        lo, hi = np.percentile(flat[::step], (1, 99))
        spread = float(hi - lo) or float(np.ptp(flat)) or 1.0
        rng = np.random.default_rng(seed)
        out = src.astype(np.float32)
        out += rng.normal(0.0, noise * spread, src.shape).astype(np.float32)
        return out
    if name == "shift":
        s = min(int(shift), src.shape[ay] - 1, src.shape[ax] - 1)
        pad = [(0, 0)] * src.ndim
        pad[ay] = pad[ax] = (s, 0)
        out = np.pad(src, pad, mode="reflect")
        sl = [slice(None)] * src.ndim
        sl[ay] = slice(0, src.shape[ay])
        sl[ax] = slice(0, src.shape[ax])
        return out[tuple(sl)] if order == 0 else out[tuple(sl)].astype(np.float32)
    f = _zoom_factor(name, zoom)
    factors = [1.0] * src.ndim
    for a in (ay, ax):
        factors[a] = max(round(src.shape[a] * f), 1) / src.shape[a]
    if order == 0:
        return ndi.zoom(src, factors, order=0, mode="nearest", grid_mode=True)
    return ndi.zoom(src.astype(np.float32), factors, order=1, mode="reflect", grid_mode=True)


def unperturb_labels(labels: np.ndarray, name: str, shape: Sequence[int], *,
                     shift: int = 3) -> np.ndarray:
    """Map labels of a perturbed input back onto the original grid of ``shape``.

    ``labels``' last two axes are Y and X (of the perturbed input), ``shape``
    is the original labels' shape. Shifted labels are moved back (the strip
    the perturbed image did not see is 0: compare only :func:`valid_region`);
    zoomed labels are resampled by nearest neighbour.
    """
    _check_name(name)
    labels = np.asarray(labels)
    shape = tuple(int(s) for s in shape)
    if labels.ndim != len(shape) or labels.shape[:-2] != shape[:-2]:
        raise ValueError(f"perturbed labels of shape {labels.shape} do not fit original shape {shape}")
    if name == "noise":
        if labels.shape != shape:
            raise ValueError(f"labels shape {labels.shape} differs from {shape}")
        return labels
    if name == "shift":
        if labels.shape != shape:
            raise ValueError(f"labels shape {labels.shape} differs from {shape}")
        s = min(int(shift), shape[-2] - 1, shape[-1] - 1)
        out = np.zeros_like(labels)
        out[..., : shape[-2] - s, : shape[-1] - s] = labels[..., s:, s:]
        return out
    idx = []
    for n_out, n_in in zip(shape[-2:], labels.shape[-2:]):
        # pixel centres of the original grid, in the perturbed grid (grid_mode zoom)
        centre = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
        idx.append(np.clip(np.round(centre), 0, n_in - 1).astype(np.intp))
    return labels.take(idx[0], axis=-2).take(idx[1], axis=-1)


def valid_region(name: str, shape: Sequence[int], *, shift: int = 3) -> tuple[slice, ...]:
    """Slices of the original grid that the perturbed input also saw (all of it except for ``shift``)."""
    _check_name(name)
    shape = tuple(int(s) for s in shape)
    sl = [slice(None)] * len(shape)
    if name == "shift":
        s = min(int(shift), shape[-2] - 1, shape[-1] - 1)
        sl[-2] = slice(0, shape[-2] - s)
        sl[-1] = slice(0, shape[-1] - s)
    return tuple(sl)


def _perturbation_id(name: str, seed: int, *, noise: float, shift: int, zoom: float) -> str:
    """What determines one perturbed input besides the source: its name and the settings it uses."""
    settings = {"noise": f"noise={noise!r},seed={seed}", "shift": f"shift={int(shift)}"}.get(name, f"zoom={zoom!r}")
    return f"{name}:{settings}"


def _names(perturbations: str | Sequence[str]) -> list[str]:
    if isinstance(perturbations, str):
        names = [p.strip() for p in perturbations.split(",") if p.strip()]
    else:
        names = list(perturbations)
    for n in names:
        _check_name(n)
    return names


@register_proxy(
    "stability", weight=0.0,  # logged, not weighted: see "Default weights" in __init__
    params=[
        Param("perturbations", "list", list(_names(DEFAULT_PERTURBATIONS)), choices=PERTURBATIONS,
              help="perturbations to apply, from noise, shift, zoom_in, zoom_out "
                   "(each one is one more model run per image)"),
        Param("noise", "float", 0.05, low=0.0, high=1.0, help="noise sigma / 1-99 percentile range"),
        Param("shift", "int", 3, low=1, high=64, help="shift in pixels along Y and X"),
        Param("zoom", "float", 0.1, low=0.01, high=0.5, help="relative rescaling of zoom_in / zoom_out"),
        Param("seed", "int", 0, low=0, high=2**31 - 1, help="seed of the noise"),
        Param("iou", "float", 0.5, low=0.5, high=0.95, help="IoU threshold for matching objects"),
    ],
    cost="model",
)
def stability_score(result: ImageResult, perturbations: str | Sequence[str] = DEFAULT_PERTURBATIONS,
                    noise: float = 0.05, shift: int = 3, zoom: float = 0.1, seed: int = 0,
                    iou: float = 0.5) -> dict[str, float]:
    """Mean F1 between the labels and the labels of the pipeline re-run on perturbed inputs.

    Value: mean over ``perturbations`` (a list, or a comma-separated string)
    of the F1 at ``iou`` between ``result.labels`` and the perturbed run's
    labels mapped back; details ``stability.<perturbation>``. NaN when the
    result has no ``segment`` function or ``source``; 0 when the labels are
    empty (nothing to be stable about; no model run). 2D and 3D labels.
    """
    names = _names(perturbations)
    nan = float("nan")
    if result.segment is None or result.source is None or not names:
        return {"stability": nan, **{f"stability.{n}": nan for n in names}}
    labels = np.asarray(result.labels)
    if not labels.any():
        return {"stability": 0.0, **{f"stability.{n}": 0.0 for n in names}}
    out: dict[str, float] = {}
    # a pipeline that caches its forward passes (the search's) keys the perturbed one by what was done
    cached = getattr(result.segment, "accepts_perturbation", False)
    for name in names:
        moved = perturb(result.source, result.source_axes, name, seed, noise=noise, shift=shift, zoom=zoom)
        what = _perturbation_id(name, seed, noise=noise, shift=shift, zoom=zoom)
        labels_p = result.segment(moved, perturbation=what) if cached else result.segment(moved)
        back = unperturb_labels(np.asarray(labels_p), name, labels.shape, shift=shift)
        region = valid_region(name, labels.shape, shift=shift)
        out[f"stability.{name}"] = match_instances(labels[region], back[region], thresh=iou).f1
    return {"stability": float(np.mean(list(out.values()))), **out}
