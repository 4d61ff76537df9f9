"""Contact sheets on a real image: layout, empty cells, headers, tag colours, crops."""
from __future__ import annotations

import numpy as np
import pytest
import tifffile
from PIL import Image
from skimage.measure import label
from skimage.morphology import disk, erosion
from skimage.segmentation import expand_labels

from opsef_opt.track.contact_sheet import (
    BACKGROUND_RGB, EMPTY_RGB, TAG_RGB, Cell, Layout, choose_crop, grid_shape, list_shape,
    render_grid, render_list, save_png, wrap, _font,
)

from conftest import shared

ROWS = ["filter=median(size=3) | background=tophat(radius=15)", "none",
        "normalize(p_low=1, p_high=99.8) | clahe(kernel_size=64)"]
COLS = ["stardist 2D_versatile_fluo prob_thresh=0.5", "cellpose nuclei diameter=30",
        "classical otsu + watershed(min_distance=5)", "cellpose cyto3 diameter=17"]


@pytest.fixture(scope="module")
def real():
    image = tifffile.imread(shared("gt", "dsb2018_256", "image.tif"))
    gt = tifffile.imread(shared("gt", "dsb2018_256", "labels.tif")).astype(np.int32)
    return image, gt


def _split(labels: np.ndarray) -> np.ndarray:
    """Every object cut in two at its centroid column (over-segmentation)."""
    out = labels.copy()
    xx = np.broadcast_to(np.arange(labels.shape[1]), labels.shape)
    for i in np.unique(labels)[1:]:
        mask = labels == i
        out[mask & (xx > xx[mask].mean())] = labels.max() + i
    return out


def _segmentations(gt: np.ndarray) -> dict[str, np.ndarray]:
    return {
        "gt": gt,
        "eroded": np.where(erosion(gt > 0, disk(2)), gt, 0),
        "merged": label(expand_labels(gt, 6) > 0) * (gt > 0),  # neighbours fused
        "split": _split(gt),
    }


def _box_pixels(sheet: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    y0, x0, y1, x1 = box
    return sheet[y0:y1, x0:x1].reshape(-1, 3)


def _has_colour(pixels: np.ndarray, rgb) -> bool:
    return bool(np.all(pixels == np.asarray(rgb, np.uint8), axis=1).any())


def _not_background(pixels: np.ndarray) -> int:
    return int(np.any(pixels != np.asarray(BACKGROUND_RGB, np.uint8), axis=1).sum())


@pytest.fixture(scope="module")
def grid_cells(real):
    """3 x 4 grid, two positions left empty, each tag used at least once."""
    image, gt = real
    segs = _segmentations(gt)
    crop = choose_crop(image, list(segs.values()), size=128)
    plan = {(0, 0): ("gt", "correct"), (0, 1): ("split", "over"), (0, 2): ("merged", "under"),
            (0, 3): ("eroded", None), (1, 0): ("eroded", "correct"), (1, 2): ("split", "failed"),
            (2, 1): ("merged", None), (2, 2): ("gt", "correct"), (2, 3): ("split", "over"),
            (1, 3): ("gt", None)}
    return [Cell(ROWS[r], COLS[c], image[crop], segs[k][crop], f"#{n}  {0.9 - 0.05 * n:.3f}", tag)
            for n, ((r, c), (k, tag)) in enumerate(sorted(plan.items()))]


def test_grid_layout_size_headers_empty_cells_and_tags(grid_cells):
    sheet = render_grid(grid_cells, title="dsb2018_256: 10 trials")
    assert sheet.dtype == np.uint8 and sheet.shape == grid_shape(3, 4) + (3,)
    assert grid_shape(3, 4) == (856, 1012)  # the numbers in grid_shape's docstring
    lay = Layout(3, 4)
    filled = {(c.row, c.col): c for c in grid_cells}
    for r, row in enumerate(ROWS):
        assert _not_background(_box_pixels(sheet, lay.row_header_box(r))) > 50, "row header text missing"
        for c, col in enumerate(COLS):
            cell = _box_pixels(sheet, lay.cell_box(r, c))
            if (row, col) not in filled:  # (1, 1) and (2, 0): grey with a dash
                grey = np.all(cell == np.asarray(EMPTY_RGB, np.uint8), axis=1).mean()
                assert 0.9 < grey < 1.0
                continue
            assert _has_colour(cell, (255, 255, 0)), "outlines missing"
            caption = _box_pixels(sheet, lay.caption_box(r, c))
            assert _not_background(caption) > 20, "caption text missing"
            tag = filled[row, col].tag
            for name, rgb in TAG_RGB.items():
                assert _has_colour(caption, rgb) == (name == tag)
    for c in range(4):
        assert _not_background(_box_pixels(sheet, lay.col_header_box(c))) > 50, "column header text missing"
    assert _not_background(_box_pixels(sheet, lay.title_box())) > 50


def test_grid_truncation_and_order(grid_cells):
    sheet = render_grid(grid_cells, max_rows=2, max_cols=3, title="t")
    assert sheet.shape == grid_shape(2, 3) + (3,)
    # an explicit order: the rows given first, then the others in order of appearance
    reordered = render_grid(grid_cells, rows=[ROWS[2]], cols=COLS[::-1], max_rows=1)
    lay = Layout(1, 4)
    assert reordered.shape == grid_shape(1, 4) + (3,)
    # ROWS[2] x COLS[3] holds a split ("over") segmentation, drawn first (column 0) now
    assert _has_colour(_box_pixels(reordered, lay.caption_box(0, 0)), TAG_RGB["over"])
    assert _has_colour(_box_pixels(reordered, lay.cell_box(0, 3)), EMPTY_RGB)  # ROWS[2] x COLS[0] is empty


def test_truncation_is_said_in_the_title(grid_cells, monkeypatch):
    from opsef_opt.track import contact_sheet

    titles = []
    monkeypatch.setattr(contact_sheet, "_draw_title", lambda draw, lay, title: titles.append(title))
    render_grid(grid_cells, title="study", max_rows=2)
    render_grid(grid_cells, max_cols=1)
    render_grid(grid_cells, title="all", max_rows=3, max_cols=4)
    assert titles == ["study (showing 2 of 3 preprocessings)", "Showing 1 of 4 model settings", "all"]


def test_list_layout(grid_cells):
    sheet = render_list(grid_cells[:7], title="untagged runs", ncols=3, cell_px=96)
    lay = Layout(3, 3, 96, headers=False, caption_lines=5)
    assert sheet.shape == list_shape(7, 3, 96) + (3,) == lay.shape + (3,)
    assert list_shape(2, 6) == Layout(1, 2, headers=False, caption_lines=5).shape  # no empty columns
    for i, cell in enumerate(grid_cells[:7]):
        r, c = divmod(i, 3)
        assert _has_colour(_box_pixels(sheet, lay.cell_box(r, c)), (255, 255, 0))
        caption = _box_pixels(sheet, lay.caption_box(r, c))
        assert _not_background(caption) > 40  # caption + row + column text
        if cell.tag:
            assert _has_colour(caption, TAG_RGB[cell.tag])
    # positions after the last cell stay blank
    assert _not_background(_box_pixels(sheet, lay.cell_box(2, 1))) == 0


def test_wrap_keeps_pipeline_steps_on_their_own_lines():
    font = _font(12)
    lines = wrap("filter=median(size=3) | background=tophat(radius=15)", font, 188, 4)
    assert lines == ["filter=median(size=3) |", "background=tophat(radius=15)"]
    long = wrap("x" * 200, font, 100, 3)
    assert len(long) == 3 and long[-1].endswith("...")
    assert all(font.getlength(line) <= 100 for line in long)


def test_choose_crop_prefers_objects(real):
    image, gt = real
    padded_img = np.pad(image, ((300, 0), (0, 300)))
    padded = np.pad(gt, ((300, 0), (0, 300)))
    rows, cols = choose_crop(padded_img, [padded], size=200)
    assert (rows.stop - rows.start, cols.stop - cols.start) == (200, 200)
    assert 0 <= rows.start and rows.stop <= padded.shape[0] and 0 <= cols.start and cols.stop <= padded.shape[1]
    assert rows.start >= 300 - 10 and cols.stop <= 256 + 10, "window should sit on the objects, not the border"
    assert choose_crop(padded_img, [padded], size=200) == (rows, cols)  # deterministic
    # smaller image than the window: the whole image; no objects: centred
    assert choose_crop(image, [gt], size=1000) == (slice(0, 256), slice(0, 256))
    assert choose_crop(image, [np.zeros_like(gt)], size=100) == (slice(78, 178), slice(78, 178))
    with pytest.raises(ValueError, match="do not match"):
        choose_crop(image, [gt[:10]], size=100)


def test_choose_crop_prefers_disagreement(real):
    image, gt = real
    wide_img = np.concatenate([image, image], axis=1)
    agree = np.concatenate([gt, gt], axis=1)
    # second candidate differs from the first only on the right half (objects split)
    differ = np.concatenate([gt, _split(gt)], axis=1)
    rows, cols = choose_crop(wide_img, [agree, differ], size=256)
    assert cols.start >= 200, cols


def test_save_png_and_non_square_rgb_and_float(real, tmp_path):
    image, gt = real
    rgb = np.stack([image, image // 2, 255 - image], axis=-1)[:100, :200]  # RGB uint8, not square
    floats = image[:100, :200].astype(np.float32) * 37.5 + 1000
    cells = [Cell("a", "b", rgb, gt[:100, :200], "#1  0.5", "under"),
             Cell("a", "c", floats, gt[:100, :200], "#2  0.4", "custom-tag")]
    sheet = render_grid(cells, cell_px=96)
    out = save_png(sheet, tmp_path / "deep" / "sheet.png")
    assert out.exists()
    np.testing.assert_array_equal(np.asarray(Image.open(out)), sheet)
    with pytest.raises(ValueError, match="differ"):
        render_grid([Cell("a", "b", image, gt[:10], "#1")])


# --------------------------------------------------------------------------- decision sheet

def _tile(sheet: np.ndarray, lay, r: int, c: int) -> np.ndarray:
    return _box_pixels(sheet, lay.tile_box(r, c))


def test_decision_sheet_has_a_section_per_image_truth_first_and_outcome_colours(real):
    from opsef_opt.figures.decision import Candidate, SheetImage, SheetLayout, decision_sheet
    from opsef_opt.figures.overlay import FN_RGB, FP_RGB, TP_RGB, TRUTH_RGB

    image, gt = real
    segs = _segmentations(gt)
    flipped = {k: np.ascontiguousarray(v[::-1]) for k, v in segs.items()}
    order = ["gt", "eroded", "merged", "split"]  # best first
    candidates = [Candidate(f"coarse#{i}", 0.9 - 0.1 * i, f"filter=median(size=3) | {k} pipeline",
                            {"a": segs[k], "b": flipped[k]}, tag="correct" if k == "gt" else None,
                            gt={"f1": 0.9, "ap": 0.7}, tie="near-tie" if i < 2 else "")
                  for i, k in enumerate(order)]
    images = [SheetImage("a", image, gt), SheetImage("b", np.ascontiguousarray(image[::-1]), flipped["gt"])]
    sheet = decision_sheet(candidates, images, title="demo/coarse: top 4")
    lay = SheetLayout(1 + len(candidates), 2, legend=True)
    assert sheet.shape == lay.shape + (3,)
    for c in range(2):  # one section (column) per image, with its name and crop on top
        assert _not_background(_box_pixels(sheet, lay.col_header_box(c))) > 50
        assert _has_colour(_tile(sheet, lay, 0, c), TRUTH_RGB)  # ground-truth row first
        exact = _tile(sheet, lay, 1, c)  # the best candidate: every object found
        assert _has_colour(exact, TP_RGB) and not _has_colour(exact, FP_RGB) and not _has_colour(exact, FN_RGB)
        assert _has_colour(_tile(sheet, lay, 3, c), FN_RGB)  # merged neighbours: misses (true outlines)
        assert _has_colour(_tile(sheet, lay, 4, c), FP_RGB)  # split objects: false positives
        for r in range(1, 5):
            assert _not_background(_box_pixels(sheet, lay.caption_box(r, c))) > 20, "tile caption missing"
    for r in range(5):
        assert _not_background(_box_pixels(sheet, lay.row_header_box(r))) > 100, "row header missing"
    assert _has_colour(_box_pixels(sheet, lay.row_header_box(1)), TAG_RGB["correct"])

    # without ground truth: no truth row; yellow outlines, and in lower rows magenta where an object
    # matches none of the first row's (here: the merged candidate against the exact one)
    from opsef_opt.figures.decision import DIFF_RGB

    plain = decision_sheet([candidates[0], candidates[2]], [SheetImage("a", image)], title="t")
    lay = SheetLayout(2, 1, legend=True)
    assert plain.shape[0] == lay.shape[0]
    first, merged = _tile(plain, lay, 0, 0), _tile(plain, lay, 1, 0)
    assert _has_colour(first, (255, 255, 0)) and not _has_colour(first, DIFF_RGB)
    assert _has_colour(merged, DIFF_RGB) and not _has_colour(merged, TP_RGB)
    twin = Candidate("coarse#9", 0.8, "the same labels", dict(candidates[0].labels))
    same = decision_sheet([candidates[0], twin], [SheetImage("a", image)])
    assert not _has_colour(_tile(same, lay, 1, 0), DIFF_RGB)  # identical rows: nothing marked


def test_decision_sheet_tiles_are_large_enough_to_judge(real):
    """A 256 px image is shown as a 160 px crop on a 256 px tile: 1.6 x, outlines 2 px wide."""
    from opsef_opt.figures.decision import Candidate, SheetImage, SheetLayout, decision_sheet

    image, gt = real
    sheet = decision_sheet([Candidate("s#0", 0.5, "p", {"a": gt})], [SheetImage("a", image)])
    lay = SheetLayout(1, 1)
    y0, x0, y1, x1 = lay.tile_box(0, 0)
    assert (y1 - y0, x1 - x0) == (256, 256)
    yellow = np.all(sheet[y0:y1, x0:x1] == (255, 255, 0), axis=-1)
    # most outline pixels have an outline neighbour across the line: lines are 2 px, not 1 px
    thick = yellow[1:-1, 1:-1] & (yellow[2:, 1:-1] | yellow[:-2, 1:-1]) & (yellow[1:-1, 2:] | yellow[1:-1, :-2])
    assert thick.sum() > 0.5 * yellow.sum()
