"""Import quality tags from a CSV file (e.g. exported from a spreadsheet where runs were reviewed)."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
from mlflow import MlflowClient

from opsef_opt.config import TAGS
from opsef_opt.tags.runs import TrialRun, normalize_tag, set_quality

__all__ = ["import_tags"]


def import_tags(path: Path, runs: list[TrialRun], client: MlflowClient, default_stage: str) -> tuple[int, list[str]]:
    """Apply the tags of a CSV; return (number applied, problems).

    Columns: ``run_id`` or ``trial`` (with an optional ``stage`` column,
    default ``default_stage``), ``tag`` (or ``quality``), optional ``note``.
    Valid rows are applied even when others are wrong; each wrong row is
    reported with its line number and what to fix.
    """
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except Exception as e:
        return 0, [f"{path}: not a readable CSV ({type(e).__name__}: {e})"]
    cols = {c.strip().lower(): c for c in df.columns}
    tag_col = cols.get("tag") or cols.get("quality")
    if tag_col is None or not ({"run_id", "trial"} & set(cols)):
        return 0, [f"{path}: needs a 'tag' column and a 'run_id' or 'trial' column; found {list(df.columns)}"]
    by_id = {r.run_id: r for r in runs}
    by_trial = {(r.stage, r.trial): r for r in runs}
    applied, problems = 0, []
    for i, row in df.iterrows():
        line = i + 2  # header is line 1
        tag = normalize_tag(row[tag_col])
        if tag is None:
            problems.append(f"{path}:{line}: unknown tag {row[tag_col]!r}; use one of {', '.join(TAGS)}")
            continue
        run = None
        if "run_id" in cols and row[cols["run_id"]].strip():
            run = by_id.get(row[cols["run_id"]].strip())
            what = f"run_id {row[cols['run_id']].strip()!r}"
        else:
            stage = row[cols["stage"]].strip() if "stage" in cols and row[cols["stage"]].strip() else default_stage
            try:
                run = by_trial.get((stage, int(row[cols["trial"]])))
            except ValueError:
                pass
            what = f"trial {row[cols['trial']]!r} of stage {stage!r}"
        if run is None:
            problems.append(f"{path}:{line}: {what} is not a completed trial run of this study")
            continue
        set_quality(client, run.run_id, tag, row[cols["note"]].strip() if "note" in cols else None)
        run.tag = tag
        applied += 1
    return applied, problems
