"""The leaderboard: completed trials ranked by score, as a table and a CSV."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import optuna
import pandas as pd
from optuna.trial import TrialState

__all__ = ["combined_leaderboard", "leaderboard", "print_leaderboard"]


def leaderboard(study: optuna.Study, tags: Mapping[str, str] | None = None) -> pd.DataFrame:
    """One row per trial (best first): score, pipeline, parameters, state, tag, MLflow run.

    ``score`` is what the optimiser saw; ``score_final`` (proxy objectives)
    compares every candidate with all the others (of every stage: one common
    pool, recomputed when any stage finishes) and is the one the table is
    ranked by when present; ``source_score`` is a handed-over pipeline's
    current final score in its source stage. Trials seeded from the
    analyst's tags have ``source`` = ``tag``.
    """
    tags = tags or {}
    finals = study.user_attrs.get("final_scores", {})
    sources = _source_finals(study)
    rows = []
    for t in study.get_trials(deepcopy=False):
        if t.state not in (TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED) or t.user_attrs.get("over_budget"):
            continue
        summary = t.user_attrs.get("summary", {})
        rows.append({
            "trial": t.number,
            "state": t.state.name,
            "score": t.value,
            "score_final": finals.get(str(t.number)),
            "source_trial": t.user_attrs.get("source_trial", ""),
            "source_score": _source_score(t, sources),
            "source": t.user_attrs.get("value_source", "evaluated"),
            "tag": tags.get(t.user_attrs.get("mlflow_run_id", ""), t.user_attrs.get("tag", "")),
            "pipeline": summary.get("pipeline", ""),
            "model": summary.get("model", ""),
            "n_objects_mean": summary.get("n_objects_mean"),
            # images whose labels came from an earlier identical evaluation (the model did not run again)
            "images_reused": summary.get("segment_reused"),
            "seconds": (t.datetime_complete - t.datetime_start).total_seconds()
            if t.datetime_complete and t.datetime_start else None,
            "error": t.user_attrs.get("error", "interrupted" if t.state == TrialState.FAIL else ""),
            "mlflow_run_id": t.user_attrs.get("mlflow_run_id", ""),
            **{f"param.{k}": v for k, v in t.params.items()},
        })
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    df["_ok"] = df["state"] == "COMPLETE"
    df["_rank"] = df["score_final"].astype(float).fillna(df["score"].astype(float))
    df = df.sort_values(["_ok", "_rank", "trial"], ascending=[False, False, True]).drop(columns=["_ok", "_rank"])
    return df.reset_index(drop=True)


def _source_finals(study: optuna.Study) -> dict[str, dict[str, float]]:
    """Current final scores of the stages this stage's trials were handed over from (stage -> trial -> score).

    Final scores of every stage are recomputed against one common pool when a
    later stage finishes, so the score a pipeline had when it was handed over
    may have changed since; the leaderboard shows the current one.
    """
    stages = {str(t.user_attrs["source_trial"]).split("#")[0] for t in study.get_trials(deepcopy=False)
              if "#" in str(t.user_attrs.get("source_trial", ""))}
    prefix = study.study_name.rsplit("/", 1)[0]
    out = {}
    for stage in stages:
        try:
            source = optuna.load_study(study_name=f"{prefix}/{stage}", storage=study._storage)
        except KeyError:
            continue
        out[stage] = source.user_attrs.get("final_scores", {})
    return out


def _source_score(trial: optuna.trial.FrozenTrial, sources: Mapping[str, Mapping[str, float]]) -> float | None:
    """The handed-over pipeline's score in its source stage: its current final score there, where it has one."""
    stage, _, number = str(trial.user_attrs.get("source_trial", "")).partition("#")
    final = sources.get(stage, {}).get(number)
    return final if final is not None else trial.user_attrs.get("source_score")


def combined_leaderboard(boards: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """All stages in one table: stage order kept, each stage ranked best first.

    ``stage_rank`` is the rank among the stage's completed trials; scores of
    different stages are comparable only when their objective and images
    agree (``confirm`` scores all images, so its numbers are usually lower).
    """
    parts = []
    for stage, df in boards.items():
        if df.empty:
            continue
        df = df.copy()
        ok = df["state"] == "COMPLETE"
        df.insert(0, "stage_rank", pd.Series(range(1, int(ok.sum()) + 1), index=df.index[ok]).astype("Int64"))
        df.insert(0, "stage", stage)
        parts.append(df)
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def print_leaderboard(df: pd.DataFrame, rows: int, csv_path: Path, title: str,
                      skipped_models: dict[str, str] | None = None) -> None:
    """Print the top rows with rich; ``csv_path`` is where the full table was saved."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    finals = not df.empty and df["score_final"].notna().any()
    sources = not df.empty and df["source_score"].notna().any()
    for col in ("rank", "trial", "score", *(("final",) if finals else ()), *(("from", "score there") if sources else ()),
                "tag", "objects", "s/trial", "pipeline"):
        table.add_column(col, justify="left" if col == "pipeline" else "right")
    ok = df[df["state"] == "COMPLETE"] if not df.empty else df
    for rank, row in enumerate(ok.head(rows).itertuples(), start=1):
        final = (f"{row.score_final:.4f}" if row.score_final == row.score_final and row.score_final is not None
                 else "",) if finals else ()
        objects = f"{row.n_objects_mean:.1f}" if row.n_objects_mean is not None else ""
        seconds = f"{row.seconds:.2f}" if row.source != "tag" and row.seconds is not None else "tag"
        src = ((row.source_trial or "", f"{row.source_score:.4f}" if row.source_score == row.source_score
                and row.source_score is not None else "") if sources else ())
        table.add_row(str(rank), str(row.trial), f"{row.score:.4f}", *final, *src, row.tag or "", objects,
                      seconds, row.pipeline)
    console = Console(width=max(120, Console().width))
    console.print(table)
    if not df.empty:
        counts = df.groupby(["model", "state"]).size().unstack(fill_value=0)
        ran = ", ".join(f"{m} ({', '.join(f'{n} {s.lower()}' for s, n in row.items() if n)})"
                        for m, row in counts.iterrows())
        console.print(f"Models that ran: {ran}")
    for label, reason in (skipped_models or {}).items():
        console.print(f"Model skipped: {label}: {reason}")
    failed = df[df["state"] == "FAIL"] if not df.empty else df
    if len(failed):
        console.print(f"{len(failed)} failed trial(s); reasons in the 'error' column of {csv_path}")
