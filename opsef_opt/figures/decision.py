"""The decision sheet: the best few pipelines side by side on every image, at a size to judge them.

Rows are candidates, best first (the ground truth first when the images have
labels); columns are images, one section per image. Each row header names the
trial (``coarse#18``), its score, its ground-truth F1 and AP when known, its
quality tag, a near-tie mark and the whole pipeline. Each column shows one
crop of its image: the window where the shown candidates disagree most
(:func:`opsef_opt.figures.crops.choose_crop`), enlarged so a nucleus
spans enough pixels to see a split or a merge. With ground truth, outlines are
coloured by outcome (true positive, false positive, missed: see
:mod:`opsef_opt.figures.overlay`) and each tile says that image's F1 and
counts; without, outlines are yellow and the tile says its object count.

Sizes: ``tile_px`` (default 256) per tile, a 340 px row header; a sheet of 6
candidates with ground truth on 4 images is about 1420 x 2000 px.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw

from opsef_opt.figures.crops import choose_crop
from opsef_opt.figures.overlay import (
    FN_RGB, FP_RGB, OUTLINE_RGB, TP_RGB, TRUTH_RGB, UNJUDGED_RGB, Match, match_objects,
)
from opsef_opt.figures.text import BACKGROUND_RGB, TEXT_RGB, draw_lines, font, text_width, wrap
from opsef_opt.figures.tiles import tile_rgb

__all__ = ["Candidate", "SheetImage", "SheetLayout", "decision_sheet"]

MUTED_RGB = (105, 105, 105)
RULE_RGB = (220, 220, 220)
TIE_RGB = (190, 60, 0)
#: the ground-truth row's header background
TRUTH_ROW_RGB = (238, 242, 248)
#: without ground truth: objects of a lower row that match no object of the first row (IoU 0.5)
DIFF_RGB = (255, 0, 255)


@dataclass
class Candidate:
    """One pipeline's results, as a row of the sheet."""

    name: str  # the trial's name, e.g. coarse#18
    score: float
    pipeline: str
    labels: Mapping[str, np.ndarray]  # image name -> label image (the whole image)
    tag: str | None = None
    gt: Mapping[str, float] = field(default_factory=dict)  # trial-level gt.f1, gt.ap, ...
    per_image: Mapping[str, Mapping[str, float]] = field(default_factory=dict)  # image -> its metrics
    tie: str = ""  # near-tie mark, e.g. "near-tie with #1" (the bundled font has no "≈")


@dataclass
class SheetImage:
    """One image, as a column (section) of the sheet."""

    name: str
    image: np.ndarray  # 2D background the outlines are drawn on
    truth: np.ndarray | None = None


@dataclass(frozen=True)
class SheetLayout:
    """Pixel geometry (boxes are ``(y0, x0, y1, x1)``, end exclusive)."""

    n_rows: int
    n_cols: int
    tile_px: int = 256
    legend: bool = False
    margin: int = 12
    gap: int = 10
    header_w: int = 340
    font_px: int = 13
    #: at least this wide (room for the colour legend on sheets of one image)
    min_width: int = 0

    @property
    def line_px(self) -> int:
        return round(self.font_px * 1.4)

    @property
    def title_h(self) -> int:
        return 2 * round((self.font_px + 5) * 1.4) + 6 + (self.line_px + 8 if self.legend else 0)

    @property
    def col_header_h(self) -> int:
        return 2 * self.line_px + 6

    @property
    def caption_h(self) -> int:
        return self.line_px + 6

    @property
    def row_h(self) -> int:
        return self.tile_px + self.caption_h

    @property
    def shape(self) -> tuple[int, int]:
        h = 2 * self.margin + self.title_h + self.col_header_h + self.n_rows * (self.row_h + self.gap)
        w = 2 * self.margin + self.header_w + self.n_cols * (self.tile_px + self.gap)
        return h, max(w, self.min_width)

    def tile_box(self, r: int, c: int) -> tuple[int, int, int, int]:
        y0 = self.margin + self.title_h + self.col_header_h + r * (self.row_h + self.gap)
        x0 = self.margin + self.header_w + c * (self.tile_px + self.gap)
        return y0, x0, y0 + self.tile_px, x0 + self.tile_px

    def caption_box(self, r: int, c: int) -> tuple[int, int, int, int]:
        y0, x0, y1, x1 = self.tile_box(r, c)
        return y1 + 2, x0, y1 + self.caption_h, x1

    def col_header_box(self, c: int) -> tuple[int, int, int, int]:
        y0, x0, _, x1 = self.tile_box(0, c)
        return y0 - self.col_header_h, x0, y0 - 4, x1

    def row_header_box(self, r: int) -> tuple[int, int, int, int]:
        y0, _, _, _ = self.tile_box(r, 0)
        return y0, self.margin, y0 + self.row_h, self.margin + self.header_w - self.gap


def _crop(image: SheetImage, candidates: Sequence[Candidate], crop_px: int) -> tuple[slice, slice]:
    labels = [c.labels[image.name] for c in candidates if image.name in c.labels]
    return choose_crop(image.image, labels, size=crop_px)


def _fmt(v) -> str:
    return f"{v:.3f}" if v is not None and v == v else "-"


def _tile_caption(cand: Candidate, image: str, match: Match | None, unlike: int | None = None) -> str:
    m = cand.per_image.get(image, {})
    if match is not None:
        c = match.counts
        f1 = m.get("gt.f1")
        head = f"F1 {_fmt(f1)}  " if f1 is not None else ""
        return f"{head}TP {c['tp']}  FP {c['fp']}  missed {c['fn']}"
    n = m.get("n_objects")
    n = int(np.max(cand.labels[image])) if n is None else int(n)
    proxy = m.get("proxy")
    return (f"{n} objects" + (f", {unlike} unlike row 1" if unlike is not None else "")
            + (f"  proxy {_fmt(proxy)}" if proxy is not None else ""))


def _row_header(draw: ImageDraw.ImageDraw, lay: SheetLayout, r: int, cand: Candidate, rank: int | None) -> None:
    from opsef_opt.track.contact_sheet import TAG_RGB, OTHER_TAG_RGB

    y0, x0, y1, x1 = lay.row_header_box(r)
    big, body = font(lay.font_px + 5), font(lay.font_px)
    head = f"{rank}. {cand.name}" if rank is not None else cand.name
    draw.text((x0, y0), head, font=big, fill=TEXT_RGB)
    x = x0 + text_width(head, big) + 10
    for text, rgb in ((cand.tag, TAG_RGB.get(cand.tag or "", OTHER_TAG_RGB)), (cand.tie, TIE_RGB)):
        if text:
            w = text_width(text, body) + 10
            draw.rounded_rectangle((x, y0 + 3, x + w, y0 + 3 + lay.line_px), radius=4, fill=rgb)
            draw.text((x + 5, y0 + 3 + (lay.line_px - body.size) // 2), text, font=body, fill=(255, 255, 255))
            x += w + 6
    y = y0 + round((lay.font_px + 5) * 1.4) + 4
    lines = [f"score {_fmt(cand.score)}"]
    if cand.gt:
        lines[0] += "   GT " + "  ".join(f"{k.upper()} {_fmt(v)}" for k, v in cand.gt.items())
    draw_lines(draw, lines, body, (y, x0, y + lay.line_px, x1), lay.line_px, TEXT_RGB)
    y += lay.line_px + 4
    room = max(1, (y1 - y) // lay.line_px)
    draw_lines(draw, wrap(cand.pipeline, body, x1 - x0, room), body, (y, x0, y1, x1), lay.line_px, MUTED_RGB)


def _legend(draw: ImageDraw.ImageDraw | None, lay: SheetLayout, y: int, sparse: bool, truth: bool) -> int:
    """Draw the colour legend at height ``y`` (``draw`` None: only measure); return its right end."""
    f = font(lay.font_px)
    x = lay.margin
    if draw is not None:
        draw.text((x, y + 2), "outlines:", font=f, fill=TEXT_RGB)
    x += text_width("outlines:", f) + 10
    if truth:
        entries = [("true positive", TP_RGB), ("false positive", FP_RGB), ("missed (true outline)", FN_RGB),
                   ("ground truth", TRUTH_RGB)]
        note = "(IoU 0.5; counts: whole image)"
    else:
        entries = [("also in row 1", OUTLINE_RGB), ("unlike row 1 (split, merged, extra, reshaped)", DIFF_RGB)]
        note = "(matched at IoU 0.5; counts: whole image)"
    if sparse and truth:
        entries.insert(3, ("not labelled (sparse truth)", UNJUDGED_RGB))
    for text, rgb in entries:
        if draw is not None:
            draw.rectangle((x, y + 3, x + 14, y + lay.line_px - 2), fill=(0, 0, 0))
            draw.rectangle((x + 3, y + 6, x + 11, y + lay.line_px - 5), fill=rgb)
            draw.text((x + 20, y + 2), text, font=f, fill=TEXT_RGB)
        x += 20
        x += text_width(text, f) + 16
    if draw is not None:
        draw.text((x, y + 2), note, font=f, fill=MUTED_RGB)
    return int(x + text_width(note, f))


def _unlike_first(first: Candidate, cand: Candidate, image: str, labels: np.ndarray):
    """(colour table by label id, count) of ``cand``'s objects that match no object of ``first`` at IoU 0.5.

    Without ground truth this is what tells near-equal candidates apart: the
    objects a candidate splits, merges, adds or reshapes relative to the top
    row. (None, None) for the first row itself or when ``first`` has no labels of the image.
    """
    ref = first.labels.get(image)
    if cand is first or ref is None or np.shape(ref) != labels.shape:
        return None, None
    m = match_objects(ref, labels)
    table = np.zeros((max(int(labels.max(initial=0)), 0) + 1, 3), np.uint8)
    table[:] = OUTLINE_RGB
    if m.fp:
        table[np.fromiter(m.fp, int)] = DIFF_RGB
    return table, len(m.fp)


def decision_sheet(candidates: Sequence[Candidate], images: Sequence[SheetImage], title: str = "",
                   tile_px: int = 256, crop_px: int = 160, sparse: bool = False, numbered: bool = True) -> np.ndarray:
    """RGB ``uint8`` sheet: a row per candidate (given best first), a column per image.

    ``crop_px``: side of the window shown of each image (the whole image when
    smaller), chosen where the candidates disagree most and drawn at
    ``tile_px``. Images with ground truth get a first row of true outlines and
    candidates coloured by outcome; ``sparse`` ground truth leaves predictions
    on unlabelled objects unjudged (grey). ``numbered``: rank numbers before the names.
    """
    images = [im for im in images if np.asarray(im.image).ndim == 2]
    if not candidates or not images:
        raise ValueError("a decision sheet needs at least one candidate and one 2D image")
    with_truth = any(im.truth is not None for im in images)
    rows: list[Candidate | None] = ([None] if with_truth else []) + list(candidates)
    legend = with_truth or len(candidates) > 1
    lay = SheetLayout(len(rows), len(images), tile_px, legend=legend)
    if legend:
        lay = SheetLayout(len(rows), len(images), tile_px, legend=True,
                          min_width=_legend(None, lay, 0, sparse, with_truth) + 2 * lay.margin)
    canvas = np.empty(lay.shape + (3,), np.uint8)
    canvas[:] = BACKGROUND_RGB
    captions: dict[tuple[int, int], str] = {}
    headers = []
    for c, im in enumerate(images):
        window = _crop(im, candidates, crop_px)
        bg = np.asarray(im.image)[window]
        h, w = np.asarray(im.image).shape
        headers.append((im.name, f"crop y {window[0].start}:{window[0].stop}, x {window[1].start}:{window[1].stop}"
                                 f" of {h} x {w}"))
        for r, cand in enumerate(rows):
            box = lay.tile_box(r, c)
            if cand is None:
                if im.truth is None:
                    continue
                truth = np.asarray(im.truth)
                rgb = tile_rgb(bg, truth[window], tile_px, TRUTH_RGB, what=f"truth of {im.name}")
                captions[r, c] = f"{len(np.unique(truth)) - 1} true objects in the image"
            elif im.name not in cand.labels:
                continue
            else:
                labels = np.asarray(cand.labels[im.name])
                match = None
                if im.truth is not None and np.shape(im.truth) == labels.shape:
                    match = match_objects(im.truth, labels, sparse=sparse)
                    rgb = tile_rgb(bg, labels[window], tile_px, truth=np.asarray(im.truth)[window], match=match,
                                   what=f"{cand.name} on {im.name}")
                    captions[r, c] = _tile_caption(cand, im.name, match)
                else:
                    table, unlike = _unlike_first(candidates[0], cand, im.name, labels)
                    rgb = tile_rgb(bg, labels[window], tile_px, table if table is not None else OUTLINE_RGB,
                                   what=f"{cand.name} on {im.name}")
                    captions[r, c] = _tile_caption(cand, im.name, None, unlike)
            y0, x0, _, _ = box
            th, tw = rgb.shape[:2]
            oy, ox = y0 + (tile_px - th) // 2, x0 + (tile_px - tw) // 2
            canvas[y0:y0 + tile_px, x0:x0 + tile_px] = (235, 235, 235)
            canvas[oy:oy + th, ox:ox + tw] = rgb

    img = Image.fromarray(canvas)
    draw = ImageDraw.Draw(img)
    body, title_font = font(lay.font_px), font(lay.font_px + 5)
    title_lines = wrap(title, title_font, lay.shape[1] - 2 * lay.margin, 2)
    draw_lines(draw, title_lines, title_font, (lay.margin, lay.margin, lay.margin + lay.title_h, lay.shape[1]),
               round((lay.font_px + 5) * 1.4), TEXT_RGB)
    if legend:
        _legend(draw, lay, lay.margin + 2 * round((lay.font_px + 5) * 1.4) + 6, sparse, with_truth)
    for c, (name, where) in enumerate(headers):
        y0, x0, y1, x1 = lay.col_header_box(c)
        draw_lines(draw, wrap(name, body, x1 - x0, 1) + wrap(where, body, x1 - x0, 1), body, (y0, x0, y1, x1),
                   lay.line_px, TEXT_RGB, valign="bottom")
    rank = 0
    for r, cand in enumerate(rows):
        y0, x0, y1, x1 = lay.row_header_box(r)
        if r:
            yy = y0 - lay.gap // 2 - 1
            draw.line((lay.margin, yy, lay.shape[1] - lay.margin, yy), fill=RULE_RGB, width=1)
        if cand is None:
            draw.rectangle((x0 - 4, y0, x1, y1 - 1), fill=TRUTH_ROW_RGB)
            draw.text((x0, y0 + 2), "ground truth", font=title_font, fill=TEXT_RGB)
            draw_lines(draw, ["the labelled objects, for reference"], body,
                       (y0 + 30, x0, y1, x1), lay.line_px, MUTED_RGB)
        else:
            rank += 1
            _row_header(draw, lay, r, cand, rank if numbered else None)
    for (r, c), text in captions.items():
        y0, x0, y1, x1 = lay.caption_box(r, c)
        draw_lines(draw, wrap(text, body, x1 - x0, 1), body, (y0, x0, y1, x1), lay.line_px, TEXT_RGB)
    return np.asarray(img)

