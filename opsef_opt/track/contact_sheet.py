"""Contact sheets: one PNG comparing segmentations of the same image crop.

Like the comparison figures of OpSeF (Rasse et al. 2020): rows are
preprocessing pipelines, columns are model settings, and each cell shows the
object outlines (on a dark halo, drawn at display resolution:
:func:`opsef_opt.figures.tiles.tile_rgb`; TP / FP / missed colours when the
cell carries ground truth) on the same crop, captioned with the trial name
(``coarse#18``), its score and, once an analyst has judged it, a colour-coded
quality tag.  :func:`render_list` lays out the same cells in a plain reading
order (for tagging runs by name). The stage's decision sheet (best candidates
on every image) is :mod:`opsef_opt.figures.decision`.

Every size is fixed by :class:`Layout` (a function of the cell size and the
number of rows and columns only), so a sheet's pixel size is known before it
is drawn: :func:`grid_shape` and :func:`list_shape`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

from opsef_opt.figures.text import BACKGROUND_RGB, TEXT_RGB, draw_lines, font, text_width, wrap
from opsef_opt.figures.crops import choose_crop
from opsef_opt.figures.overlay import OUTLINE_RGB, Match
from opsef_opt.figures.tiles import tile_rgb

__all__ = [
    "Cell", "Layout", "TAG_RGB", "EMPTY_RGB", "BACKGROUND_RGB",
    "choose_crop", "grid_shape", "list_shape", "render_grid", "render_list", "save_png",
]

#: grid positions without a trial: neutral grey, with a darker dash in the middle
EMPTY_RGB = (205, 205, 205)
DASH_RGB = (140, 140, 140)
#: padding around a crop that is not square (letterbox), slightly darker than the page
LETTERBOX_RGB = (235, 235, 235)
MUTED_RGB = (110, 110, 110)
#: quality tags: badge in the caption and a frame around the cell
TAG_RGB: dict[str, tuple[int, int, int]] = {
    "correct": (0, 140, 60),    # green
    "over": (225, 115, 0),      # orange
    "under": (30, 90, 215),     # blue
    "failed": (210, 30, 30),    # red
}
#: tags not listed above (custom vocabularies) get a neutral badge
OTHER_TAG_RGB = (90, 90, 90)


@dataclass(frozen=True)
class Cell:
    """One trial's segmentation of the shared crop.

    Parameters
    ----------
    row : str
        Preprocessing label (a grid row).
    col : str
        Model-setting label (a grid column).
    image : numpy.ndarray
        2D background crop of any dtype (scaled to 8 bits between its 0.5th
        and 99.5th percentiles), or an RGB(A) ``uint8`` crop shown as is.
    labels : numpy.ndarray
        Crop of the instance labels, same (Y, X) shape as ``image``.
    caption : str
        Text under the cell, e.g. ``"#12  0.873"``.
    tag : str or None
        The analyst's quality tag (``correct``, ``over``, ``under``, ``failed``).
    """

    row: str
    col: str
    image: np.ndarray
    labels: np.ndarray
    caption: str
    tag: str | None = None
    #: outline colour when the cell is not coloured against ground truth
    color: tuple[int, int, int] = OUTLINE_RGB
    #: crop of the ground truth and the matching of the whole image (colours TP / FP / misses)
    truth: np.ndarray | None = None
    match: Match | None = None


# --------------------------------------------------------------------------- layout

@dataclass(frozen=True)
class Layout:
    """Pixel geometry of a sheet; every box is ``(y0, x0, y1, x1)``, end exclusive.

    Parameters
    ----------
    n_rows, n_cols : int
        Grid positions.
    cell_px : int
        Side of the square in which each crop is drawn.
    headers : bool
        True for :func:`render_grid` (row headers on the left, column headers
        on top); False for :func:`render_list` (labels go into the captions).
    caption_lines : int
        Text lines under each cell.
    """

    n_rows: int
    n_cols: int
    cell_px: int = 192
    headers: bool = True
    caption_lines: int = 2

    @property
    def font_px(self) -> int:
        """Body text size: 12 px for 192 px cells, never below 10 px."""
        return max(10, round(self.cell_px / 16))

    @property
    def title_font_px(self) -> int:
        return self.font_px + 4

    @property
    def line_px(self) -> int:
        return round(self.font_px * 1.4)

    @property
    def title_line_px(self) -> int:
        return round(self.title_font_px * 1.4)

    @property
    def margin(self) -> int:
        return 10

    @property
    def gap(self) -> int:
        return 8

    @property
    def title_h(self) -> int:
        """Two title lines plus a little air below."""
        return 2 * self.title_line_px + 6

    @property
    def col_header_h(self) -> int:
        """Four lines of column header text (0 without headers)."""
        return 4 * self.line_px + 6 if self.headers else 0

    @property
    def row_header_w(self) -> int:
        """Row header column: as wide as a cell, at least 160 px (0 without headers)."""
        return max(160, self.cell_px) + self.gap if self.headers else 0

    @property
    def caption_h(self) -> int:
        return self.caption_lines * self.line_px + 6

    @property
    def block_h(self) -> int:
        """Height of one grid position: the crop and its caption."""
        return self.cell_px + self.caption_h

    @property
    def shape(self) -> tuple[int, int]:
        """(height, width) of the whole sheet in pixels."""
        height = (2 * self.margin + self.title_h + self.col_header_h
                  + self.n_rows * self.block_h + max(self.n_rows - 1, 0) * self.gap)
        width = (2 * self.margin + self.row_header_w
                 + self.n_cols * self.cell_px + max(self.n_cols - 1, 0) * self.gap)
        return height, width

    def title_box(self) -> tuple[int, int, int, int]:
        return self.margin, self.margin, self.margin + self.title_h, self.shape[1] - self.margin

    def cell_box(self, r: int, c: int) -> tuple[int, int, int, int]:
        """Where the crop of grid position (r, c) is drawn."""
        y0 = self.margin + self.title_h + self.col_header_h + r * (self.block_h + self.gap)
        x0 = self.margin + self.row_header_w + c * (self.cell_px + self.gap)
        return y0, x0, y0 + self.cell_px, x0 + self.cell_px

    def caption_box(self, r: int, c: int) -> tuple[int, int, int, int]:
        y0, x0, y1, x1 = self.cell_box(r, c)
        return y1, x0, y1 + self.caption_h, x1

    def col_header_box(self, c: int) -> tuple[int, int, int, int]:
        y1, x0, _, x1 = self.cell_box(0, c)
        return y1 - self.col_header_h, x0, y1, x1

    def row_header_box(self, r: int) -> tuple[int, int, int, int]:
        y0, x1, _, _ = self.cell_box(r, 0)
        return y0, self.margin, y0 + self.block_h, x1 - self.gap


def grid_shape(n_rows: int, n_cols: int, cell_px: int = 192) -> tuple[int, int]:
    """(height, width) in pixels of a :func:`render_grid` sheet with this many rows and columns.

    With the default 192 px cells (12 px text on 17 px lines, 16 px title):
    10 px margins, a 50 px title band (2 lines), 74 px of column headers
    (4 lines), a 200 px row-header column (192 px of text and an 8 px gap),
    40 px captions (2 lines) under each crop and 8 px between cells, so a
    3 x 4 grid is ``(10 + 50 + 74 + 3 * (192 + 40) + 2 * 8 + 10,
    10 + 200 + 4 * 192 + 3 * 8 + 10)`` = (856, 1012).
    """
    return Layout(n_rows, n_cols, cell_px).shape


def list_shape(n_cells: int, ncols: int = 6, cell_px: int = 192) -> tuple[int, int]:
    """(height, width) in pixels of a :func:`render_list` sheet of ``n_cells`` cells."""
    return _list_layout(n_cells, ncols, cell_px).shape


def _list_layout(n_cells: int, ncols: int, cell_px: int) -> Layout:
    ncols = max(1, min(ncols, n_cells))
    n_rows = -(-n_cells // ncols) if n_cells else 0
    return Layout(n_rows, ncols, cell_px, headers=False, caption_lines=5)


# --------------------------------------------------------------------------- text

_font, _width, _draw_lines = font, text_width, draw_lines  # the names this module's drawing uses


# --------------------------------------------------------------------------- crops

def _cell_rgb(cell: Cell, side: int) -> np.ndarray:
    """The cell's overlay, its longer side ``side`` px (:func:`opsef_opt.figures.tiles.tile_rgb`)."""
    return tile_rgb(cell.image, cell.labels, side, cell.color, cell.truth, cell.match, f"cell {cell.caption!r}")


# --------------------------------------------------------------------------- drawing

def _paste(canvas: np.ndarray, rgb: np.ndarray, box: tuple[int, int, int, int]) -> None:
    """Centre ``rgb`` in ``box`` on a letterbox background."""
    y0, x0, y1, x1 = box
    canvas[y0:y1, x0:x1] = LETTERBOX_RGB
    h, w = rgb.shape[:2]
    oy, ox = y0 + (y1 - y0 - h) // 2, x0 + (x1 - x0 - w) // 2
    canvas[oy:oy + h, ox:ox + w] = rgb


def _draw_empty(draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int]) -> None:
    y0, x0, y1, x1 = box
    draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=EMPTY_RGB)
    cy, cx, half = (y0 + y1) // 2, (x0 + x1) // 2, max(6, (x1 - x0) // 10)
    draw.rectangle((cx - half, cy - 2, cx + half, cy + 1), fill=DASH_RGB)


def _tag_rgb(tag: str) -> tuple[int, int, int]:
    return TAG_RGB.get(tag, OTHER_TAG_RGB)


def _draw_frame(draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], rgb, width: int = 4) -> None:
    y0, x0, y1, x1 = box
    draw.rectangle((x0, y0, x1 - 1, y1 - 1), outline=rgb, width=width)


def _draw_caption(draw: ImageDraw.ImageDraw, lay: Layout, cell: Cell, box: tuple[int, int, int, int],
                  extra: Sequence[str] = (), extra_rgb: Sequence[tuple[int, int, int]] = ()) -> None:
    """Caption text (with the tag as a coloured badge on its first line), then ``extra`` lines.

    Without ``extra``, a caption too long for the first line continues on the second.
    """
    font = _font(lay.font_px)
    y0, x0, _, x1 = box
    y0 += 3
    badge_w = 0
    if cell.tag:
        pad = 5
        badge_w = int(_width(cell.tag, font)) + 2 * pad
        bx1 = x1
        bx0 = bx1 - badge_w
        draw.rounded_rectangle((bx0, y0 + 1, bx1 - 1, y0 + lay.line_px - 1), radius=4, fill=_tag_rgb(cell.tag))
        _draw_lines(draw, [cell.tag], font, (y0, bx0, y0 + lay.line_px, bx1), lay.line_px,
                    (255, 255, 255), align="center")
        badge_w += 6
    first = wrap(cell.caption, font, (x1 - x0) - badge_w, 1)
    _draw_lines(draw, first, font, (y0, x0, y0 + lay.line_px, x1 - badge_w), lay.line_px, TEXT_RGB)
    rest = cell.caption[len(first[0].removesuffix("...")):].strip() if first else ""
    if not extra:
        extra = wrap(rest, font, x1 - x0, 1) if rest else []
        extra_rgb = [TEXT_RGB] * len(extra)
    for i, (line, rgb) in enumerate(zip(list(extra)[:lay.caption_lines - 1], extra_rgb)):
        y = y0 + (i + 1) * lay.line_px
        _draw_lines(draw, [line], font, (y, x0, y + lay.line_px, x1), lay.line_px, rgb)


def _draw_cell(canvas: np.ndarray, lay: Layout, cell: Cell, box: tuple[int, int, int, int]) -> None:
    _paste(canvas, _cell_rgb(cell, lay.cell_px), box)


def _draw_title(draw: ImageDraw.ImageDraw, lay: Layout, title: str) -> None:
    font = _font(lay.title_font_px)
    y0, x0, y1, x1 = lay.title_box()
    lines = wrap(title, font, x1 - x0, 2)
    _draw_lines(draw, lines, font, (y0, x0, y1 - 6, x1), lay.title_line_px, TEXT_RGB)


def _order(cells: Sequence[Cell], attr: str, given: Sequence[str] | None) -> list[str]:
    seen = dict.fromkeys(given or ())
    for cell in cells:
        seen.setdefault(getattr(cell, attr), None)
    return list(seen)


def render_grid(cells: Sequence[Cell], title: str = "", cell_px: int = 192, max_rows: int | None = None,
                max_cols: int | None = None, rows: Sequence[str] | None = None,
                cols: Sequence[str] | None = None) -> np.ndarray:
    """Contact sheet: preprocessings as rows, model settings as columns.

    Parameters
    ----------
    cells : sequence of Cell
        One per trial.  When several share a (row, col) position, the first is
        shown (pass them best first).
    title : str
        Title line on top.  When ``max_rows`` / ``max_cols`` hide rows or
        columns it is followed by e.g. ``(showing 16 of 40 preprocessings)``.
    cell_px : int
        Side of each crop in pixels; text sizes follow it (12 px at 192).
    max_rows, max_cols : int or None
        Show only the first rows / columns.
    rows, cols : sequence of str or None
        Order of rows / columns; labels missing from them follow in order of
        first appearance, which is also the default order.

    Returns
    -------
    numpy.ndarray
        RGB ``uint8`` image of shape ``grid_shape(n_rows, n_cols, cell_px) + (3,)``.
    """
    all_rows, all_cols = _order(cells, "row", rows), _order(cells, "col", cols)
    shown_rows = all_rows[:max_rows] if max_rows is not None else all_rows
    shown_cols = all_cols[:max_cols] if max_cols is not None else all_cols
    notes = []
    if len(shown_rows) < len(all_rows):
        notes.append(f"{len(shown_rows)} of {len(all_rows)} preprocessings")
    if len(shown_cols) < len(all_cols):
        notes.append(f"{len(shown_cols)} of {len(all_cols)} model settings")
    if notes:
        note = "showing " + ", ".join(notes)
        title = f"{title} ({note})" if title else note.capitalize()

    lay = Layout(len(shown_rows), len(shown_cols), cell_px)
    canvas = np.empty(lay.shape + (3,), np.uint8)
    canvas[:] = BACKGROUND_RGB
    at: dict[tuple[str, str], Cell] = {}
    for cell in cells:
        at.setdefault((cell.row, cell.col), cell)
    for r, row in enumerate(shown_rows):
        for c, col in enumerate(shown_cols):
            if (row, col) in at:
                _draw_cell(canvas, lay, at[row, col], lay.cell_box(r, c))

    img = Image.fromarray(canvas)
    draw = ImageDraw.Draw(img)
    font = _font(lay.font_px)
    _draw_title(draw, lay, title)
    if shown_rows and shown_cols:  # axis names in the top-left corner
        y0, _, y1, x1 = lay.col_header_box(0)
        _draw_lines(draw, ["rows: preprocessing", "columns: model setting"], font,
                    (y0, lay.margin, y1 - 3, x1), lay.line_px, MUTED_RGB, valign="bottom")
    for c, col in enumerate(shown_cols):
        y0, x0, y1, x1 = lay.col_header_box(c)
        lines = wrap(col, font, x1 - x0 - 4, 4)
        _draw_lines(draw, lines, font, (y0, x0, y1 - 3, x1), lay.line_px, TEXT_RGB, align="center", valign="bottom")
    for r, row in enumerate(shown_rows):
        y0, x0, y1, x1 = lay.row_header_box(r)
        if r:  # thin rule between rows, across the whole sheet
            yy = y0 - lay.gap // 2 - 1
            draw.line((lay.margin, yy, lay.shape[1] - lay.margin, yy), fill=(225, 225, 225), width=1)
        lines = wrap(row, font, x1 - x0 - 6, max(1, lay.cell_px // lay.line_px))
        _draw_lines(draw, lines, font, (y0, x0, y0 + lay.cell_px, x1), lay.line_px, TEXT_RGB, valign="middle")
        for c, col in enumerate(shown_cols):
            box = lay.cell_box(r, c)
            cell = at.get((row, col))
            if cell is None:
                _draw_empty(draw, box)
                continue
            if cell.tag:
                _draw_frame(draw, box, _tag_rgb(cell.tag))
            _draw_caption(draw, lay, cell, lay.caption_box(r, c))
    return np.asarray(img)


def render_list(cells: Sequence[Cell], title: str = "", ncols: int = 6, cell_px: int = 192) -> np.ndarray:
    """Cells in the given order, ``ncols`` per line, each with its caption, row and column label.

    For tagging: show the untagged runs with their numbers in the captions.
    The caption area holds the caption (and tag badge) on its first line,
    then the row label (preprocessing, up to 2 lines, grey) and the column
    label (model setting, dark).

    Returns
    -------
    numpy.ndarray
        RGB ``uint8`` image of shape ``list_shape(len(cells), ncols, cell_px) + (3,)``.
    """
    lay = _list_layout(len(cells), ncols, cell_px)
    canvas = np.empty(lay.shape + (3,), np.uint8)
    canvas[:] = BACKGROUND_RGB
    for i, cell in enumerate(cells):
        _draw_cell(canvas, lay, cell, lay.cell_box(*divmod(i, lay.n_cols)))
    img = Image.fromarray(canvas)
    draw = ImageDraw.Draw(img)
    font = _font(lay.font_px)
    _draw_title(draw, lay, title)
    for i, cell in enumerate(cells):
        r, c = divmod(i, lay.n_cols)
        box = lay.cell_box(r, c)
        if cell.tag:
            _draw_frame(draw, box, _tag_rgb(cell.tag))
        width = box[3] - box[1]
        row_lines = wrap(cell.row, font, width, 2)
        col_lines = wrap(cell.col, font, width, lay.caption_lines - 1 - len(row_lines))
        _draw_caption(draw, lay, cell, lay.caption_box(r, c), extra=row_lines + col_lines,
                      extra_rgb=[MUTED_RGB] * len(row_lines) + [TEXT_RGB] * len(col_lines))
    return np.asarray(img)


def save_png(rgb: np.ndarray, path: Path) -> Path:
    """Write ``rgb`` as a PNG at ``path`` (parent folders are created); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(rgb, dtype=np.uint8)).save(path, format="PNG", optimize=False)
    return path
