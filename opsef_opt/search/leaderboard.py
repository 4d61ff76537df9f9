"""The leaderboard: completed trials ranked by score, as a table and a CSV."""
from __future__ import annotations

from pathlib import Path

import optuna
import pandas as pd
from optuna.trial import TrialState

__all__ = ["leaderboard", "print_leaderboard"]


def leaderboard(study: optuna.Study) -> pd.DataFrame:
    """One row per trial (best first): score, pipeline, parameters, state, MLflow run."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        if t.state not in (TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED):
            continue
        summary = t.user_attrs.get("summary", {})
        rows.append({
            "trial": t.number,
            "state": t.state.name,
            "score": t.value,
            "pipeline": summary.get("pipeline", ""),
            "model": summary.get("model", ""),
            "n_objects_mean": summary.get("n_objects_mean"),
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
    df = df.sort_values(["_ok", "score", "trial"], ascending=[False, False, True]).drop(columns="_ok")
    return df.reset_index(drop=True)


def print_leaderboard(df: pd.DataFrame, rows: int, csv_path: Path, title: str,
                      skipped_models: dict[str, str] | None = None) -> None:
    """Print the top rows with rich and save the full table as CSV."""
    from rich.console import Console
    from rich.table import Table

    csv_path.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(csv_path, index=False)
    table = Table(title=title)
    for col in ("rank", "trial", "score", "objects", "s/trial", "pipeline"):
        table.add_column(col, justify="left" if col == "pipeline" else "right")
    ok = df[df["state"] == "COMPLETE"] if not df.empty else df
    for rank, row in enumerate(ok.head(rows).itertuples(), start=1):
        table.add_row(str(rank), str(row.trial), f"{row.score:.4f}", f"{row.n_objects_mean:.1f}",
                      f"{row.seconds:.2f}", row.pipeline)
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
