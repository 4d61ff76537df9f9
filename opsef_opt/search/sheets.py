"""The stage's contact sheets: the best candidates on every image, and all candidates on one crop.

``contact_sheets/<stage>.png`` is the decision sheet
(:func:`opsef_opt.figures.decision.decision_sheet`): the :data:`TOP` best
trials as rows, best first, in the leaderboard's order and with its names,
ground-truth metrics and near-tie marks; a section (column) per image, each
cropped where these candidates disagree most, with ground-truth outlines and
TP / FP / missed colours when the images have labels. More than
:data:`IMAGES_PER_SHEET` images continue on ``<stage>_2.png``, ``<stage>_3.png``, ...

``contact_sheets/<stage>_grid.png`` is the overview of every candidate, as in
OpSeF's comparison figures: rows are preprocessings and columns model
settings, ordered by their best score and capped so the sheet stays readable,
on the crop of the first image where the candidates disagree most.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np
import optuna

from opsef_opt.figures.decision import Candidate, SheetImage, decision_sheet
from opsef_opt.io.dataset import Item
from opsef_opt.search.leaderboard import leaderboard
from opsef_opt.search.pool import LabelStore
from opsef_opt.track.contact_sheet import Cell, choose_crop, render_grid, save_png
from opsef_opt.search import attrs as A

__all__ = ["stage_contact_sheet", "grid_path", "written_sheets", "TOP", "IMAGES_PER_SHEET"]

MAX_ROWS, MAX_COLS = 16, 12
#: candidates (rows) on the decision sheet
TOP = 6
#: images (sections) per decision sheet; more go on further sheets
IMAGES_PER_SHEET = 6
#: at most this many decision sheets per stage
MAX_SHEETS = 8


def grid_path(path: Path) -> Path:
    """Where the all-candidates grid goes, next to the decision sheet ``path``."""
    return path.with_name(f"{path.stem}_grid{path.suffix}")


def written_sheets(path: Path) -> list[Path]:
    """Every sheet :func:`stage_contact_sheet` wrote for ``path``: the decision sheet(s), then the grid."""
    pages = [path] + [path.with_name(f"{path.stem}_{k}{path.suffix}") for k in range(2, MAX_SHEETS + 1)]
    return [p for p in pages + [grid_path(path)] if p.is_file()]


def _ranked(study: optuna.Study, store: LabelStore, tags: Mapping[str, str]):
    """The leaderboard's completed, evaluated trials that have stored labels (best first)."""
    board = leaderboard(study, tags)
    if board.empty:
        return board
    stored = set(store.trials())
    keep = (board["state"] == "COMPLETE") & (board["source"] != "tag") & board["number"].isin(stored)
    return board[keep].reset_index(drop=True)


def _background(item: Item, references: Mapping[str, np.ndarray], shape: tuple[int, ...]) -> np.ndarray | None:
    from opsef_opt.search.trial import reference_intensities

    ref = references.get(item.name)
    if ref is None or ref.shape != shape:
        ref = reference_intensities(item, shape, item.data)
    return ref if ref.ndim == 2 and ref.shape == shape else None


def stage_contact_sheet(study: optuna.Study, store: LabelStore, items: list[Item],
                        references: Mapping[str, np.ndarray], tags: Mapping[str, str], path: Path,
                        cell_px: int = 192, sparse: bool = False) -> Path | None:
    """Write the decision sheet(s) at ``path`` and the grid at :func:`grid_path`; None if nothing to show."""
    board = _ranked(study, store, tags)
    if board.empty or not items:
        return None
    top = board.head(TOP)
    labels = {int(n): store.load(int(n)) for n in top["number"]}
    candidates = []
    for row in top.to_dict("records"):
        metrics = store.load_metrics(int(row["number"]))
        score = row["score_final"] if row["score_final"] == row["score_final"] and row["score_final"] is not None \
            else row["score"]
        gt = {k[3:]: row[k] for k in ("gt.f1", "gt.ap") if k in row and row[k] == row[k] and row[k] is not None}
        leader = row["near_tie"]
        tie = "" if not leader else ("near-tie" if leader == row["trial"]
                                     else f"near-tie with #{int(board.index[board['trial'] == leader][0]) + 1}")
        candidates.append(Candidate(row["trial"], float(score), row["pipeline"], labels[int(row["number"])],
                                    row["tag"] or None, gt, metrics, tie))
    images = []
    for item in items:
        lab = next((c.labels[item.name] for c in candidates if item.name in c.labels), None)
        if lab is None or lab.ndim != 2:
            continue  # 3D results: no single crop to show
        bg = _background(item, references, lab.shape)
        if bg is None:
            continue
        truth = item.truth if item.truth is not None and np.shape(item.truth) == lab.shape else None
        images.append(SheetImage(item.name, bg, truth))
    if not images:
        return None
    pages = [images[i:i + IMAGES_PER_SHEET] for i in range(0, len(images), IMAGES_PER_SHEET)][:MAX_SHEETS]
    shown = sum(len(p) for p in pages)
    for k, page in enumerate(pages, start=1):
        which = f"images {(k - 1) * IMAGES_PER_SHEET + 1}-{(k - 1) * IMAGES_PER_SHEET + len(page)} of {len(images)}" \
            if len(images) > IMAGES_PER_SHEET else f"{len(images)} image(s)"
        more = f"; {len(images) - shown} more not drawn" if shown < len(images) and k == len(pages) else ""
        title = (f"{study.study_name}: the {len(candidates)} best of {len(board)} candidates, best first; "
                 f"{which}{more}, each cropped where these candidates disagree most")
        rgb = decision_sheet(candidates, page, title, sparse=sparse)
        save_png(rgb, path if k == 1 else path.with_name(f"{path.stem}_{k}{path.suffix}"))
    for k in range(len(pages) + 1, MAX_SHEETS + 1):  # pages of an earlier run with more images
        path.with_name(f"{path.stem}_{k}{path.suffix}").unlink(missing_ok=True)
    _grid(study, board, store, images[0], grid_path(path), cell_px)
    return path


def _grid(study: optuna.Study, board, store: LabelStore, image: SheetImage, path: Path, cell_px: int) -> None:
    """Every candidate (rows: preprocessings, columns: model settings) on one crop of one image."""
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    labels = {}
    for n in board["number"]:
        lab = store.load_one(int(n), image.name) if image.name in _names(store, int(n)) else None
        if lab is not None and lab.shape == image.image.shape:
            labels[int(n)] = lab
    if not labels:
        return
    window = choose_crop(image.image, list(labels.values()))
    rows_best: dict[str, float] = {}
    cols_best: dict[str, float] = {}
    cells = []
    for row in board.to_dict("records"):
        n = int(row["number"])
        if n not in labels:
            continue
        score = row["score_final"] if row["score_final"] == row["score_final"] and row["score_final"] is not None \
            else row["score"]
        summary = trials[n].user_attrs.get(A.SUMMARY, {})
        r, c = summary.get("preprocess", "?"), summary.get("setting", summary.get("model", "?"))
        rows_best.setdefault(r, score)
        cols_best.setdefault(c, score)
        cells.append(Cell(r, c, image.image[window], labels[n][window], f"{row['trial']}  {score:.3f}",
                          row["tag"] or None))
    title = (f"{study.study_name}: all {len(cells)} candidates, image {image.name}, crop y {window[0].start}:"
             f"{window[0].stop}, x {window[1].start}:{window[1].stop}")
    save_png(render_grid(cells, title=title, cell_px=cell_px, max_rows=MAX_ROWS, max_cols=MAX_COLS,
                         rows=list(rows_best), cols=list(cols_best)), path)


def _names(store: LabelStore, trial: int) -> set[str]:
    with np.load(store.path(trial)) as z:
        return {str(n) for n in z["names"]}
