"""The stage's contact sheet: the same image crop segmented by every pipeline, in a grid.

Rows are preprocessings and columns model settings, as in OpSeF's comparison
figures; rows and columns are ordered by their best score, so the strongest
candidates are at the top left, and capped so the sheet stays readable.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np
import optuna
from optuna.trial import TrialState

from opsef_opt.io.dataset import Item
from opsef_opt.search.pool import LabelStore
from opsef_opt.track.contact_sheet import Cell, choose_crop, render_grid, save_png

__all__ = ["stage_contact_sheet"]

MAX_ROWS, MAX_COLS = 16, 12


def stage_contact_sheet(study: optuna.Study, store: LabelStore, items: list[Item],
                        references: Mapping[str, np.ndarray], tags: Mapping[str, str], path: Path,
                        cell_px: int = 192) -> Path | None:
    """Write the sheet of the stage's completed trials on its first image; None if nothing to show."""
    finals = {int(k): v for k, v in study.user_attrs.get("final_scores", {}).items() if v is not None}
    trials = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
              if t.user_attrs.get("value_source") != "tag" and t.number in set(store.trials())]
    if not trials or not items:
        return None
    name = items[0].name
    labels = {t.number: store.load(t.number).get(name) for t in trials}
    trials = [t for t in trials if labels[t.number] is not None]
    if not trials or name not in references:
        return None
    background = references[name]
    if background.ndim != 2:
        return None  # 3D results: no single crop to show
    score = {t.number: finals.get(t.number, t.value) for t in trials}
    window = choose_crop(background, [labels[t.number] for t in trials])
    rows_best: dict[str, float] = {}
    cols_best: dict[str, float] = {}
    cells = []
    for t in sorted(trials, key=lambda t: -score[t.number]):
        summary = t.user_attrs.get("summary", {})
        row, col = summary.get("preprocess", "?"), summary.get("setting", summary.get("model", "?"))
        rows_best.setdefault(row, score[t.number])
        cols_best.setdefault(col, score[t.number])
        run_tag = tags.get(t.user_attrs.get("mlflow_run_id", ""))
        cells.append(Cell(row, col, background[window], labels[t.number][window],
                          f"#{t.number}  {score[t.number]:.3f}", run_tag))
    title = f"{study.study_name}: image {name}, crop y {window[0].start}:{window[0].stop}, x {window[1].start}:{window[1].stop}"
    rgb = render_grid(cells, title=title, cell_px=cell_px, max_rows=MAX_ROWS, max_cols=MAX_COLS,
                      rows=list(rows_best), cols=list(cols_best))
    return save_png(rgb, path)
