"""Outlines that stand out on any image, ground-truth colouring and colour-coded label images.

Every outline is a bright line with a one-pixel dark halo on both sides, so it
reads on dark fluorescence, bright brightfield and coloured H&E backgrounds
alike. With ground truth, predicted objects are matched one-to-one at IoU 0.5
(StarDist's matching, computed by :mod:`opsef_opt.score.matching`) and drawn

* **true positives** in green (:data:`TP_RGB`),
* **false positives** in magenta with a light magenta tint (:data:`FP_RGB`),
* **missed** ground-truth objects (false negatives) as their true outline in
  cyan with a light cyan tint (:data:`FN_RGB`),
* with sparse ground truth, predictions on unlabelled objects (neither right
  nor wrong) in light grey (:data:`UNJUDGED_RGB`).

Green, magenta and cyan stay distinct for red-green colour-blind readers.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["OUTLINE_RGB", "HALO_RGB", "TP_RGB", "FP_RGB", "FN_RGB", "UNJUDGED_RGB", "TRUTH_RGB",
           "Match", "match_objects", "to_uint8", "draw_outlines", "outline_rgb", "truth_overlay",
           "label_rgb", "display_scale", "legend_strip", "line_width", "enlarge"]

#: outlines without ground truth: saturated yellow (with the dark halo it reads on any background)
OUTLINE_RGB = (255, 255, 0)
#: the halo around every outline
HALO_RGB = (0, 0, 0)
TP_RGB = (0, 230, 64)
FP_RGB = (255, 0, 255)
FN_RGB = (0, 230, 255)
UNJUDGED_RGB = (200, 200, 200)
#: ground-truth outlines shown on their own (the reference tile of a contact sheet)
TRUTH_RGB = (255, 255, 255)
#: opacity of the tint that fills false positives and misses
TINT = 0.28


def to_uint8(image: np.ndarray) -> np.ndarray:
    """(Y, X) image scaled to 8 bits between its 0.5th and 99.8th percentiles (RGB ``uint8`` kept).

    A few hot pixels do not darken the whole image (as a min-max stretch
    would); a flat image becomes black.
    """
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] in (3, 4) and image.dtype == np.uint8:
        return image[..., :3]
    img = image.astype(np.float32)
    if img.ndim == 3 and img.shape[-1] in (3, 4):
        img = img[..., :3]
    finite = img[np.isfinite(img)]
    if finite.size == 0:
        return np.zeros(img.shape, np.uint8)
    # (percentiles of a regular subsample of at most ~250 000 values: 5 x faster on 1 MP, same display)
    lo, hi = np.percentile(finite[::max(1, finite.size // 250_000)], (0.5, 99.8))
    if hi <= lo:
        lo, hi = float(finite.min()), float(finite.max())
    if hi <= lo:
        return np.zeros(img.shape, np.uint8)
    out = np.clip((np.nan_to_num(img, nan=lo) - lo) / (hi - lo), 0, 1)
    return np.round(out * 255).astype(np.uint8)


def _rgb(img8: np.ndarray) -> np.ndarray:
    return np.stack([img8] * 3, axis=-1) if img8.ndim == 2 else img8[..., :3].copy()


def display_scale(shape: tuple[int, ...], target: int = 768, most: int = 4) -> int:
    """Integer enlargement for a small image so it shows at about ``target`` px (1 to ``most``)."""
    side = max(shape[:2])
    return int(min(most, max(1, target // max(side, 1))))


def enlarge(img8: np.ndarray, labels: np.ndarray | None, scale: int):
    """The 8-bit image (bilinear) and labels (nearest) enlarged ``scale`` times."""
    if scale == 1:
        return img8, labels
    h, w = img8.shape[:2]
    size = (w * scale, h * scale)
    big = np.asarray(Image.fromarray(img8).resize(size, Image.Resampling.BILINEAR))
    lab = None if labels is None else np.repeat(np.repeat(np.asarray(labels), scale, 0), scale, 1)
    return big, lab


def _pairs(ndim: int, axis: int) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
    """Index pairs selecting each pixel and its next neighbour along ``axis``."""
    a = [slice(None)] * ndim
    b = [slice(None)] * ndim
    a[axis], b[axis] = slice(1, None), slice(None, -1)
    return tuple(a), tuple(b)


def _differs_from_neighbour(labels: np.ndarray) -> np.ndarray:
    """Pixels with a 4-neighbour of another value (image borders count as the pixel itself)."""
    out = np.zeros(labels.shape, bool)
    for axis in range(labels.ndim):
        a, b = _pairs(labels.ndim, axis)
        diff = labels[a] != labels[b]
        out[a] |= diff
        out[b] |= diff
    return out


def _grow(mask: np.ndarray, full: bool) -> np.ndarray:
    """Binary dilation by one pixel: the 4-neighbourhood (``full=False``) or the 3 x 3 square (separably)."""
    out = mask.copy()
    for axis in range(mask.ndim):
        a, b = _pairs(mask.ndim, axis)
        src = out.copy() if full else mask
        out[a] |= src[b]
        out[b] |= src[a]
    return out


def _line_and_halo(labels: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Outline pixels (``width`` px inside each object) and the 1-px halo on both sides of them.

    The same pixels as ``find_boundaries(mode="inner")`` and ``ndi.binary_dilation`` (tested), with
    array shifts: outlines are drawn on enlarged images for every trial, where those cost ~25 ms each.
    """
    line = _differs_from_neighbour(labels) & (labels > 0)
    for _ in range(width - 1):
        line = _grow(line, full=False) & (labels > 0)
    halo = _grow(line, full=True) & ~line
    return line, halo


def draw_outlines(rgb: np.ndarray, labels: np.ndarray, colors: np.ndarray | tuple[int, int, int],
                  width: int = 1, halo: bool = True, tint: np.ndarray | None = None) -> np.ndarray:
    """Draw the outlines of ``labels`` on ``rgb`` (in place, returned).

    ``colors``: one RGB for every object, or a ``(max_id + 1, 3)`` table by
    label id. ``tint``: optional ``(max_id + 1,)`` opacities filling objects
    with their colour. Halos never cover another outline drawn in the same call.
    """
    labels = np.asarray(labels)
    if not labels.any():
        return rgb
    table = np.asarray(colors, np.uint8)
    if table.ndim == 1:
        table = np.broadcast_to(table, (int(labels.max()) + 1, 3))
    if tint is not None:
        alpha = np.asarray(tint, np.float32)[labels][..., None]
        filled = alpha[..., 0] > 0
        rgb[filled] = np.round(rgb[filled] * (1 - alpha[filled]) + table[labels][filled] * alpha[filled]).astype(np.uint8)
    line, ring = _line_and_halo(labels, width)
    if halo:
        rgb[ring] = HALO_RGB
    rgb[line] = table[labels[line]]
    return rgb


def line_width(scale: float) -> int:
    """Outline width in display pixels for an image shown ``scale`` times enlarged: 1, 2 or 3."""
    return 1 if scale < 1.5 else (2 if scale < 3 else 3)


def outline_rgb(image: np.ndarray, labels: np.ndarray, color: tuple[int, int, int] = OUTLINE_RGB,
                scale: int = 1, width: int | None = None) -> np.ndarray:
    """8-bit RGB of ``image`` with every object of ``labels`` outlined in ``color`` on a dark halo.

    ``scale`` enlarges the image first (outlines then :func:`line_width` px wide).
    """
    img8, lab = enlarge(to_uint8(image), np.asarray(labels), scale)
    return draw_outlines(_rgb(img8), lab, color, width=width or line_width(scale))


@dataclass(frozen=True)
class Match:
    """Predicted and true objects sorted into outcomes at one IoU threshold (ids of each label image)."""

    tp: frozenset[int]  # predicted ids matched to a true object
    fp: frozenset[int]  # predicted ids matching nothing
    fn: frozenset[int]  # true ids nobody matched (misses)
    unjudged: frozenset[int] = frozenset()  # predicted ids on unlabelled objects (sparse ground truth)

    @property
    def counts(self) -> dict[str, int]:
        return {"tp": len(self.tp), "fp": len(self.fp), "fn": len(self.fn)}


def match_objects(truth: np.ndarray, pred: np.ndarray, iou: float = 0.5, sparse: bool = False) -> Match:
    """One-to-one matching of ``pred`` against ``truth`` at ``iou`` (the score's matching, per object).

    ``sparse``: predictions lying mostly off the labelled objects are neither
    true nor false (:func:`opsef_opt.score.gt.restrict_to_labelled`).
    """
    from opsef_opt.score.gt import restrict_to_labelled
    from opsef_opt.score.matching import matched_pairs

    truth = np.asarray(truth).astype(np.int32)
    pred = np.asarray(pred).astype(np.int32)
    unjudged: set[int] = set()
    if sparse:
        kept = restrict_to_labelled(truth, pred)
        unjudged = set(np.unique(pred[(pred > 0) & (kept == 0)]).tolist())
        pred = kept
    pred_ids = set(np.unique(pred).tolist()) - {0}
    true_ids = set(np.unique(truth).tolist()) - {0}
    if not pred_ids or not true_ids:
        return Match(frozenset(), frozenset(pred_ids), frozenset(true_ids), frozenset(unjudged))
    pairs = matched_pairs(truth, pred, iou)
    tp_true = {t for t, _ in pairs}
    tp_pred = {p for _, p in pairs}
    return Match(frozenset(tp_pred), frozenset(pred_ids - tp_pred), frozenset(true_ids - tp_true),
                 frozenset(unjudged))


def _table(n: int, ids_colors: list[tuple[set | frozenset, tuple[int, int, int]]]) -> np.ndarray:
    table = np.zeros((n + 1, 3), np.uint8)
    for ids, rgb in ids_colors:
        if ids:
            table[np.fromiter(ids, int)] = rgb
    return table


def _member(labels: np.ndarray, ids: set | frozenset, n: int) -> np.ndarray:
    """``np.isin(labels, ids)`` for non-negative labels and ids up to ``n``, by table lookup (no sort of the image)."""
    table = np.zeros(n + 1, bool)
    table[np.fromiter(ids, int, len(ids))] = True
    return table[labels]


def truth_overlay(image: np.ndarray, labels: np.ndarray, truth: np.ndarray, match: Match | None = None,
                  scale: int = 1, sparse: bool = False, width: int | None = None) -> tuple[np.ndarray, Match]:
    """``image`` with true positives, false positives and misses coloured; and the :class:`Match`.

    Misses are drawn first (their true outline), predictions on top.
    """
    labels, truth = np.asarray(labels), np.asarray(truth)
    if match is None:
        match = match_objects(truth, labels, sparse=sparse)
    img8, lab = enlarge(to_uint8(image), labels, scale)
    tru = truth if scale == 1 else np.repeat(np.repeat(truth, scale, 0), scale, 1)
    width = width or line_width(scale)
    rgb = _rgb(img8)
    # ids of the whole image's matching (a crop may hold fewer objects than the tables must cover)
    n_true = max(int(tru.max(initial=0)), max(match.fn, default=0))
    n = max(int(lab.max(initial=0)), max(match.tp | match.fp | match.unjudged, default=0))
    missed = np.where(_member(tru, match.fn, n_true), tru, 0) if match.fn else np.zeros_like(tru)
    fn_table = _table(n_true, [(match.fn, FN_RGB)])
    table = _table(n, [(match.tp, TP_RGB), (match.fp, FP_RGB), (match.unjudged, UNJUDGED_RGB)])
    # tints first (misses, then false positives), then the outlines on top: no tint dims a line
    for ids, lab_img, tab in ((match.fn, missed, fn_table), (match.fp, lab, table)):
        if ids:
            inside = _member(lab_img, ids, max(n, n_true))
            rgb[inside] = np.round(rgb[inside] * (1 - TINT) + tab[lab_img[inside]] * TINT).astype(np.uint8)
    draw_outlines(rgb, missed, fn_table, width)
    draw_outlines(rgb, lab, table, width)
    return rgb, match


def label_rgb(labels: np.ndarray) -> np.ndarray:
    """Colour-coded label image: background black, each object a bright colour, neighbours unlike.

    Colours come from the golden-ratio sequence of hues (id ``i`` gets hue
    ``0.618 i mod 1``), so consecutive ids (usually neighbours) differ strongly;
    the same id always gets the same colour.
    """
    from matplotlib.colors import hsv_to_rgb

    labels = np.asarray(labels)
    n = int(labels.max(initial=0))
    ids = np.arange(n + 1)
    hsv = np.stack([(ids * 0.6180339887) % 1.0, 0.55 + 0.45 * ((ids * 0.37) % 1.0), 0.75 + 0.25 * ((ids * 0.53) % 1.0)], -1)
    table = np.round(hsv_to_rgb(hsv) * 255).astype(np.uint8)
    table[0] = 0
    return table[labels]


def legend_strip(width: int, entries: list[tuple[str, tuple[int, int, int]]], height: int = 24) -> np.ndarray:
    """A dark strip with coloured swatches and their meaning (put under an overlay)."""
    from opsef_opt.figures.text import font

    img = Image.new("RGB", (width, height), (30, 30, 30))
    draw = ImageDraw.Draw(img)
    f = font(max(10, height - 10))
    x = 6
    for text, rgb in entries:
        draw.rectangle((x, 6, x + height - 12, height - 7), fill=rgb)
        x += height - 6
        draw.text((x, (height - f.size) // 2 - 1), text, font=f, fill=(240, 240, 240))
        x += int(f.getlength(text)) + 14
    return np.asarray(img)
