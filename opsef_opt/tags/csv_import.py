"""Import quality tags and comparisons from a CSV file (e.g. exported from a spreadsheet where runs were reviewed)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from mlflow import MlflowClient

from opsef_opt.config import TAGS
from opsef_opt.tags.runs import TrialRun, normalize_tag, set_comparison, set_quality

__all__ = ["import_tags", "import_judgements", "Imported"]

_TRUE = {"1", "yes", "y", "true", "x", "=", "equal", "same"}


@dataclass
class Imported:
    """What a CSV import applied, and each wrong row (with its line number and what to fix)."""

    tags: int = 0
    comparisons: int = 0
    problems: list[str] = field(default_factory=list)


def import_tags(path: Path, runs: list[TrialRun], client: MlflowClient, default_stage: str) -> tuple[int, list[str]]:
    """Apply the tags (and comparisons) of a CSV; return (number of tags applied, problems).

    See :func:`import_judgements` for the columns.
    """
    got = import_judgements(path, runs, client, default_stage)
    return got.tags, got.problems


def import_judgements(path: Path, runs: list[TrialRun], client: MlflowClient, default_stage: str) -> Imported:
    """Apply the tags and comparisons of a CSV.

    Tags: columns ``run_id`` or ``trial`` (with an optional ``stage`` column,
    default ``default_stage``), ``tag`` (or ``quality``), optional ``note``.
    Comparisons: columns ``better`` and ``worse``, each a run id, a trial
    number (of the row's ``stage``) or ``stage#trial``; with a true ``equal``
    column (1, yes, true, x, =) the two runs are equally good. A row may
    hold a tag, a comparison or both. Valid rows are applied even when
    others are wrong; each wrong row is reported with its line number and
    what to fix.
    """
    out = Imported()
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except Exception as e:
        out.problems.append(f"{path}: not a readable CSV ({type(e).__name__}: {e})")
        return out
    cols = {c.strip().lower(): c for c in df.columns}
    tag_col = cols.get("tag") or cols.get("quality")
    has_tags = tag_col is not None and bool({"run_id", "trial"} & set(cols))
    has_pairs = "better" in cols and "worse" in cols
    if not has_tags and not has_pairs:
        out.problems.append(f"{path}: needs a 'tag' column and a 'run_id' or 'trial' column, or 'better' and "
                            f"'worse' columns; found {list(df.columns)}")
        return out
    by_id = {r.run_id: r for r in runs}
    by_trial = {(r.stage, r.trial): r for r in runs}

    def cell(row, name: str) -> str:
        return row[cols[name]].strip() if name in cols else ""

    def find(ref: str, stage: str) -> TrialRun | None:
        if ref in by_id:
            return by_id[ref]
        if "#" in ref:
            stage, _, ref = ref.rpartition("#")
        try:
            return by_trial.get((stage.strip(), int(ref)))
        except ValueError:
            return None

    for i, row in df.iterrows():
        line = i + 2  # header is line 1
        stage = cell(row, "stage") or default_stage
        tag_text = cell(row, "tag") if tag_col == cols.get("tag") else cell(row, "quality")
        if has_tags and (tag_text or not has_pairs or not (cell(row, "better") or cell(row, "worse"))):
            if not tag_text and has_pairs:
                continue  # an empty row of a mixed file
            tag = normalize_tag(tag_text)
            if tag is None:
                out.problems.append(f"{path}:{line}: unknown tag {row[tag_col]!r}; use one of {', '.join(TAGS)}")
            else:
                if cell(row, "run_id"):
                    run = by_id.get(cell(row, "run_id"))
                    what = f"run_id {cell(row, 'run_id')!r}"
                else:
                    try:
                        run = by_trial.get((stage, int(cell(row, "trial"))))
                    except ValueError:
                        run = None
                    what = f"trial {row[cols['trial']]!r} of stage {stage!r}" if "trial" in cols else "no run_id"
                if run is None:
                    out.problems.append(f"{path}:{line}: {what} is not a completed trial run of this study")
                else:
                    set_quality(client, run.run_id, tag, cell(row, "note") or None)
                    run.tag = tag
                    out.tags += 1
        if has_pairs and (cell(row, "better") or cell(row, "worse")):
            refs = [cell(row, "better"), cell(row, "worse")]
            found = [find(r, stage) for r in refs]
            bad = [f"{name} {ref!r}" for name, ref, run in zip(("better", "worse"), refs, found) if run is None]
            if bad:
                out.problems.append(f"{path}:{line}: {' and '.join(bad)} not a completed trial run of this study "
                                    f"(a run id, a trial number of stage {stage!r}, or STAGE#TRIAL)")
                continue
            if found[0].run_id == found[1].run_id:
                out.problems.append(f"{path}:{line}: 'better' and 'worse' are the same run")
                continue
            outcome = 0.5 if cell(row, "equal").lower() in _TRUE else 1.0
            set_comparison(client, found[0].run_id, found[1].run_id, outcome, by_id)
            out.comparisons += 1
    return out
