"""Plausibility veto: catches segmentations that are broken in a way the other proxies reward.

Why a veto and not one more proxy: a pipeline that segments the *background*
(a brightfield image without ``invert``, the haematoxylin channel inverted, a
fluorescence image inverted) produces many objects of plausible shape and
size, with a strong boundary contrast, that agree with each other and are
stable under perturbation. Every averaged proxy likes them: on an H&E grid
half the space did this (GT F1 exactly 0) and still scored 0.51-0.59 against
0.66 at the top, while ``sanity`` was 1.0 everywhere. Such a result must rank
below every plausible one: :func:`~opsef_opt.score.proxies.combine.combine`
maps a result whose ``plausible`` value is 0 below 0, under every result
that passes (see there).

Value: 1.0 when every check passes, 0.0 when any fails (a trial's logged
value is the mean over its images: the share of plausible images). A label
image without objects is no segmentation and scores 0, as it does for every
proxy (no check's flag is set; ``sanity`` is 0 too). The
thresholds are general priors about images of cells and nuclei, not values
fitted to particular images; all are options (``study.score.proxies.
plausible``).

Polarity (``plausible.polarity``, ``plausible.expected``)
----------------------------------------------------------
What objects look like comes from the raw image itself, never from the
candidates (half of a space may be inverted, so a majority vote fails). Cue:
an *empty background* (the slide, the medium: nothing but noise) is the most
frequent intensity, a **narrow** peak of the histogram, at one **end** of
the intensity range: dark in fluorescence, bright (the glass) in brightfield
and H&E; objects are on the other side. ``plausible.background_level`` is
the position of the histogram's mode in the 0.5-99.5 percentile range (0 =
darkest, 1 = brightest) and ``plausible.background_width`` the full width
at half maximum of its peak, as a share of that range (one bin per grey
level for quantised images, values outside the range left out, so neither
empty bins nor clipped tails make a peak look narrow). The polarity is clear
only when the peak is at most ``max_peak_width`` (default 0.15) wide and
lies within ``peak_end`` (default 0.25) of an end: then ``expected`` is +1
(peak at the dark end: bright objects) or -1 (bright end: dark objects).
Otherwise ``expected`` is 0 and the check passes: it never vetoes on
ambiguity. Why these and not mean vs mode or skewness: where objects cover
most of the field (a crop of dense lymphocytes in H&E, a confluent patch of
nuclei) the mode is the objects' own intensity and every histogram-shape
statistic points the wrong way; what tells the background from such a mode
is that it is narrow (objects are textured, an empty background is not).
Measured over 708 images and crops (the H&E and IHC images in 128-512 px
crops, every fluorescence GT image whole and in 128/256 px crops): the
mode's peak sat at the wrong end 8 times, always wider than 0.28; at the
right end 588 times, 553 of them at most 0.15 wide.

The measured value is ``polarity = expected * (mean inside objects - mean
outside) / (1-99 percentile range)`` on ``result.raw`` (the same reference
for every candidate); the check fails when ``polarity < min_polarity``
(default 0.05: the objects must stand out from the rest of the image, on the
side where the image says objects are, by at least 5% of its intensity
range; objects on the background's side, or without any contrast such as
salt noise, fail). ``polarity`` is 0 when the image is ambiguous. Set
``expect`` to ``bright`` or ``dark`` when the polarity is known (e.g.
``dark`` for a brightfield / H&E study whose tiles are all tissue, where
``auto`` is mostly ambiguous), or to ``any`` to switch the check off.

Measured (classical Otsu threshold + watershed, raw = channels averaged):
the GT labels of dsb2018_256, mitocheck, bbbc007_sparse (6), kromp2020
dense (3) and low-S/N/confocal (4) all pass, polarity +0.39 to +0.67
(background level <= 0.05, width <= 0.08); the same images segmented after
``invert`` all fail, polarity -0.50 to -0.85. The shared H&E image
(background level 0.96, width 0.01): grey + invert and haematoxylin +0.47
to +0.52, grey and inverted haematoxylin -0.46 to -0.53 (fail).

Tiling (``plausible.enclosed``)
-------------------------------
A segmentation of the background cuts the background field into pieces, and
what it leaves as "background" are the holes where the real objects are:
pockets enclosed by objects. In a segmentation of objects, the background is
one field reaching the image border. ``enclosed`` is the share of the
background core (the background eroded by a 3x3 block, outside the image
counting as background, so that 1-2 px gaps such as watershed lines neither
connect the pockets nor count) in components that do not touch the image
border; 1 when no core is left. The check fails when ``enclosed >
max_enclosed`` (default 0.5: most of the background enclosed by objects)
**and** the objects cover more than ``min_fg_tiling`` (default 0.5) of the
image. Measured: 0.00-0.07 for every GT image and 256 px crop; 0.42-1.00
for the inverted fluorescence segmentations of the whole GT images, 0.62-1.00 for inverted haematoxylin
on H&E. Blind spot: a right-polarity segmentation that merges dense tissue
into masses covering most of a crop also encloses the gaps (4 of 16 grey +
invert segmentations of 512 px H&E crops failed this way).

Mostly one object (``plausible.largest_share``)
------------------------------------------------
The largest object's share of the *foreground* (not of the image: ``sanity``
gates one object over a sixth of the image). One object larger than all the
others together while at least ``min_others`` (default 10: more than a
handful) other objects of at least ``min_area`` px lie beside it is a merge
of a cluster or a piece of background taken as an object, not one nucleus
among its peers; fails above ``max_largest_share`` (default 0.5). Measured:
GT labels at most 0.38 of the foreground.

Flags ``plausible.wrong_polarity``, ``plausible.tiling`` and
``plausible.one_object`` (1 = that check failed) let a benchmark count what
each check caught.

Works for 2D and 3D labels (the histogram, the erosion and the border are
n-dimensional). Without a usable reference image (no ``raw`` and an
``image`` of another shape) the polarity check is skipped (its details
NaN). Cost: O(pixels), about 15 ms of CPU for a 1024x1024 label image.
"""
from __future__ import annotations

import math

import numpy as np
from scipy import ndimage as ndi

from opsef_opt.params import Param
from opsef_opt.score.proxies.contrast import reference_image
from opsef_opt.score.proxies.shape import MIN_AREA
from opsef_opt.score.registry import ImageResult, register_proxy

__all__ = ["background_peak", "expected_polarity", "polarity", "enclosed_background", "largest_share",
           "plausible_score"]

EXPECT = ("auto", "bright", "dark", "any")


def _sample(image: np.ndarray, limit: int = 1 << 16) -> np.ndarray:
    flat = np.asarray(image).ravel()
    return flat[:: max(flat.size // limit, 1)]


def background_peak(raw: np.ndarray, bins: int = 256) -> tuple[float, float]:
    """Position and width of the raw image's most frequent intensity, as fractions of its intensity range.

    The histogram covers the 0.5-99.5 percentile range of (a regular
    subsample of at most 2^16 pixels of) ``raw``; values outside it are left
    out, not piled into the end bins. It has ``bins`` bins, or one bin per
    grey level when the image has fewer levels in that range (so that a
    quantised image has no empty bins between its levels), smoothed by a
    Gaussian of one bin. Returns ``(level, width)``: the mode's position in
    the range (0 = darkest, 1 = brightest) and the full width at half maximum
    of its peak. ``(nan, nan)`` for a constant image.
    """
    values = _sample(raw)
    values = values[np.isfinite(values)].astype(np.float64)
    if values.size == 0:
        return math.nan, math.nan
    lo, hi = np.percentile(values, (0.5, 99.5))
    if not hi > lo:
        return math.nan, math.nan
    values = values[(values >= lo) & (values <= hi)]
    levels = np.unique(values)
    if levels.size <= bins:  # one bin centred on each grey level
        step = float(np.min(np.diff(levels))) if levels.size > 1 else hi - lo
        bins = int(round((hi - lo) / step)) + 1
        if bins > 4 * levels.size:  # irregular levels (e.g. a float image): a plain histogram
            bins, start, width = levels.size, lo, (hi - lo) / levels.size
        else:
            start, width = lo - step / 2, (hi - lo + step) / bins
    else:
        start, width = lo, (hi - lo) / bins
    idx = np.clip(((values - start) / width).astype(np.int64), 0, bins - 1)
    hist = ndi.gaussian_filter1d(np.bincount(idx, minlength=bins).astype(np.float64), 1.0, mode="constant")
    top = int(np.argmax(hist))
    half = hist[top] / 2
    left = right = top
    while left > 0 and hist[left - 1] >= half:
        left -= 1
    while right < bins - 1 and hist[right + 1] >= half:
        right += 1
    return float((top + 0.5) / bins), float((right - left + 1) / bins)


def _expected(level: float, width: float, max_width: float, end: float) -> float:
    if not (math.isfinite(level) and width <= max_width):
        return 0.0
    return 1.0 if level <= end else -1.0 if level >= 1.0 - end else 0.0


def expected_polarity(raw: np.ndarray, max_width: float = 0.15, end: float = 0.25) -> float:
    """+1.0 (bright objects), -1.0 (dark objects) or 0.0 (no clear polarity) from the raw image alone.

    Clear only when the most frequent intensity is a narrow peak (width at
    most ``max_width`` of the range: an empty background, nothing but noise)
    at one end of the range (within ``end`` of the darkest or the brightest
    value); see the module docstring.
    """
    return _expected(*background_peak(raw), max_width, end)


def polarity(labels: np.ndarray, raw: np.ndarray, sign: float, spread: float | None = None) -> float:
    """``sign * (mean inside objects - mean outside) / spread``; NaN without both.

    ``spread``: the 1-99 percentile range of ``raw`` (computed on a
    subsample when not given).
    """
    fg = (np.asarray(labels) > 0).ravel()
    flat = np.asarray(raw, np.float32).ravel()
    n_fg = int(np.count_nonzero(fg))
    if n_fg == 0 or n_fg == fg.size:
        return math.nan
    if spread is None:
        lo, hi = np.percentile(_sample(flat), (1, 99))
        spread = float(hi - lo)
    total = float(flat.sum(dtype=np.float64))
    inside = float(np.dot(flat, fg.view(np.uint8).astype(np.float32)))
    diff = inside / n_fg - (total - inside) / (fg.size - n_fg)
    return float(np.sign(sign) * diff / max(spread, 1e-6))


def _erode_padded(mask: np.ndarray) -> np.ndarray:
    """Binary erosion by a full 3x3(x3) block, outside the image counting as True (separable, in numpy)."""
    out = mask.copy()
    for ax in range(mask.ndim):
        src = out.copy()
        lo = [slice(None)] * mask.ndim
        hi = [slice(None)] * mask.ndim
        lo[ax], hi[ax] = slice(None, -1), slice(1, None)
        out[tuple(lo)] &= src[tuple(hi)]
        out[tuple(hi)] &= src[tuple(lo)]
    return out


def enclosed_background(labels: np.ndarray) -> float:
    """Share of the background core in components that do not touch the image border; 1 if no core is left.

    The core is the background eroded by a 3x3 block (outside the image
    counts as background), so that 1-2 px gaps between objects (watershed
    lines) neither connect the pockets they separate nor count.
    """
    bg = np.asarray(labels) == 0
    core = _erode_padded(bg) if bg.any() else bg
    total = int(np.count_nonzero(core))
    if total == 0:
        return 1.0
    comp, n = ndi.label(core)
    touches = np.zeros(n + 1, bool)
    for ax in range(comp.ndim):
        for i in (0, -1):
            touches[np.take(comp, i, axis=ax).ravel()] = True
    sizes = np.bincount(comp.ravel(), minlength=n + 1)
    return float(sizes[1:][~touches[1:]].sum() / total)


def largest_share(areas: np.ndarray, min_area: int = MIN_AREA) -> tuple[float, int]:
    """The largest object's share of the foreground, and how many *other* objects have >= ``min_area`` px."""
    areas = np.asarray(areas)
    areas = areas[areas > 0]
    if areas.size == 0:
        return 0.0, 0
    big = int(np.argmax(areas))
    others = int(np.count_nonzero(areas >= min_area)) - int(areas[big] >= min_area)
    return float(areas[big] / areas.sum()), others


@register_proxy(
    "plausible", weight=0.0,  # a veto (see combine), not averaged in
    params=[
        Param("expect", "categorical", "auto", choices=EXPECT,
              help="object polarity: auto (from the raw image's background peak), bright, dark, or any (no check)"),
        Param("max_peak_width", "float", 0.15, low=0.0, high=1.0,
              help="auto: the background peak must be at most this wide (share of the intensity range) ..."),
        Param("peak_end", "float", 0.25, low=0.0, high=0.5,
              help="... and lie within this share of the range from its dark or bright end; else no polarity check"),
        Param("min_polarity", "float", 0.05, low=-1.0, high=1.0,
              help="fail when (inside - outside) / range, signed by the expected polarity, is below this"),
        Param("max_enclosed", "float", 0.5, low=0.0, high=1.0,
              help="fail when more than this share of the background is enclosed by objects (tiling) ..."),
        Param("min_fg_tiling", "float", 0.5, low=0.0, high=1.0,
              help="... and the objects cover more than this share of the image"),
        Param("max_largest_share", "float", 0.5, low=0.0, high=1.0,
              help="fail when the largest object is more than this share of the foreground ..."),
        Param("min_others", "int", 10, low=1, high=1_000_000,
              help="... and at least this many other objects (of min_area px or more) lie beside it"),
        Param("min_area", "int", MIN_AREA, low=1, high=1_000_000,
              help="objects smaller than this (px) do not count as others"),
    ],
)
def plausible_score(result: ImageResult, expect: str = "auto", max_peak_width: float = 0.15, peak_end: float = 0.25,
                    min_polarity: float = 0.05, max_enclosed: float = 0.5, min_fg_tiling: float = 0.5,
                    max_largest_share: float = 0.5, min_others: int = 10, min_area: int = MIN_AREA) -> dict[str, float]:
    """1.0 when the segmentation passes every plausibility check (polarity, tiling, one object), else 0.0."""
    if expect not in EXPECT:
        raise ValueError(f"expect must be one of {', '.join(EXPECT)}, got {expect!r}")
    labels = np.asarray(result.labels)
    if labels.size and labels.dtype.kind not in "iu":
        raise ValueError(f"labels must be integers, got {labels.dtype}")
    if not labels.size:
        areas = np.zeros(0, np.int64)
    elif int(labels.max()) <= labels.size:
        areas = np.bincount(labels.ravel().astype(np.intp, copy=False), minlength=1)[1:]
    else:  # sparse huge ids: count the ids present only
        ids, counts = np.unique(labels, return_counts=True)
        areas = counts[ids > 0]
    nan = math.nan
    if not np.any(areas):  # no segmentation: 0 as for every proxy, no check's flag set
        return {"plausible": 0.0, "plausible.polarity": nan, "plausible.expected": nan,
                "plausible.background_level": nan, "plausible.background_width": nan,
                "plausible.enclosed": 0.0, "plausible.largest_share": 0.0, "plausible.wrong_polarity": 0.0,
                "plausible.tiling": 0.0, "plausible.one_object": 0.0}
    try:
        raw = reference_image(result)
    except (ValueError, TypeError):
        raw = None
    level = width = sign = pol = nan
    wrong = False
    if raw is not None and raw.shape == labels.shape:
        level, width = background_peak(raw)
        if expect == "auto":
            sign = _expected(level, width, max_peak_width, peak_end)
        else:
            sign = {"bright": 1.0, "dark": -1.0, "any": 0.0}[expect]
        pol = polarity(labels, raw, sign) if sign else 0.0
        wrong = bool(sign != 0 and math.isfinite(pol) and pol < min_polarity)
    enclosed = enclosed_background(labels)
    fg = float(areas.sum() / labels.size)
    share, others = largest_share(areas, min_area)
    tiling = enclosed > max_enclosed and fg > min_fg_tiling
    one = share > max_largest_share and others >= min_others
    ok = not (wrong or tiling or one)
    return {"plausible": float(ok), "plausible.polarity": pol, "plausible.expected": sign,
            "plausible.background_level": level, "plausible.background_width": width,
            "plausible.enclosed": enclosed, "plausible.largest_share": share,
            "plausible.wrong_polarity": float(wrong), "plausible.tiling": float(tiling),
            "plausible.one_object": float(one)}
