"""The leaderboard: completed trials ranked by score, as a table and a CSV.

Every trial is named ``<stage>#<number>`` (:func:`opsef_opt.track.names.trial_name`),
as in MLflow, the tag prompt and the contact sheets. With ground-truth labels
the ground-truth metrics of each trial (``gt.f1``, ``gt.ap``, ... : means over
the images, and ``gt.pooled.*`` over all objects) are columns too.

Near-ties: completed trials whose ranking score lies within :data:`NEAR_TIE`
of a better one's are marked (column ``near_tie``: the name of the best trial
of their tie group). Going down the ranking, a tie group holds every trial
within ``NEAR_TIE`` of the group's first trial. 0.005 is below what one
object more or less changes F1 on an image of about 100 objects (about 0.005
to 0.01) and below the spread of the proxies between segmentations an
analyst calls equally good, so the ranking inside a group is noise: compare
its members on the contact sheet (or by ``gt.*``) before picking one.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import optuna
import pandas as pd
from optuna.trial import TrialState

from opsef_opt.track.names import stage_of, trial_name
from opsef_opt.search import attrs as A

__all__ = ["NEAR_TIE", "combined_leaderboard", "gt_columns", "leaderboard", "mark_near_ties", "print_leaderboard"]

#: ranking scores closer than this are near-ties (see the module docstring)
NEAR_TIE = 0.005

#: ground-truth columns shown first (the rest follow alphabetically)
_GT_FIRST = ("gt.f1", "gt.ap", "gt.precision", "gt.recall", "gt.panoptic_quality", "gt.mean_matched_iou")


def gt_columns(columns) -> list[str]:
    """The ground-truth metric columns of a leaderboard, headline ones first."""
    got = [c for c in columns if str(c).startswith("gt.")]
    return [c for c in _GT_FIRST if c in got] + sorted(c for c in got if c not in _GT_FIRST)


def leaderboard(study: optuna.Study, tags: Mapping[str, str] | None = None,
                tolerance: float = NEAR_TIE) -> pd.DataFrame:
    """One row per trial (best first): name, score, near-tie, GT metrics, pipeline, parameters, state, tag, run.

    ``trial`` is the trial's name (``coarse#18``), ``number`` its number in
    the stage. ``score`` is what the optimiser saw; ``score_final`` (proxy
    objectives) compares every candidate with all the others (of every stage:
    one common pool, recomputed when any stage finishes) and is the one the
    table is ranked by when present; ``source_score`` is a handed-over
    pipeline's current final score in its source stage. Trials seeded from
    the analyst's tags have ``source`` = ``tag``. ``gt.*``: the trial's
    ground-truth metrics, when the images have labels.
    """
    tags = tags or {}
    stage = stage_of(study.study_name)
    finals = study.user_attrs.get(A.FINAL_SCORES, {})
    sources = _source_finals(study)
    rows = []
    for t in study.get_trials(deepcopy=False):
        if t.state not in (TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED) or t.user_attrs.get(A.OVER_BUDGET):
            continue
        summary = t.user_attrs.get(A.SUMMARY, {})
        rows.append({
            "trial": trial_name(stage, t.number),
            "number": t.number,
            "state": t.state.name,
            "score": t.value,
            "score_final": finals.get(str(t.number)),
            "near_tie": "",
            **{k: v for k, v in summary.items() if str(k).startswith("gt.")},
            "source_trial": t.user_attrs.get(A.SOURCE_TRIAL, ""),
            "source_score": _source_score(t, sources),
            "source": t.user_attrs.get(A.VALUE_SOURCE, "evaluated"),
            "tag": tags.get(t.user_attrs.get(A.MLFLOW_RUN_ID, ""), t.user_attrs.get(A.TAG, "")),
            "pipeline": summary.get("pipeline", ""),
            "model": summary.get("model", ""),
            "n_objects_mean": summary.get("n_objects_mean"),
            # images whose labels came from an earlier identical evaluation (the model did not run again)
            "images_reused": summary.get("segment_reused"),
            "seconds": (t.datetime_complete - t.datetime_start).total_seconds()
            if t.datetime_complete and t.datetime_start else None,
            "error": t.user_attrs.get(A.ERROR, "interrupted" if t.state == TrialState.FAIL else ""),
            "mlflow_run_id": t.user_attrs.get(A.MLFLOW_RUN_ID, ""),
            **{f"param.{k}": v for k, v in t.params.items()},
        })
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    df["_ok"] = df["state"] == "COMPLETE"
    df["_rank"] = df["score_final"].astype(float).fillna(df["score"].astype(float))
    df = df.sort_values(["_ok", "_rank", "number"], ascending=[False, False, True]).drop(columns=["_ok", "_rank"])
    gts = gt_columns(df.columns)
    if gts:  # headline GT metrics right after the scores
        cols = [c for c in df.columns if c not in gts]
        at = cols.index("near_tie") + 1
        df = df[cols[:at] + gts + cols[at:]]
    return mark_near_ties(df.reset_index(drop=True), tolerance)


def mark_near_ties(df: pd.DataFrame, tolerance: float = NEAR_TIE) -> pd.DataFrame:
    """Fill ``near_tie`` (in place, returned): for trials in a tie group of two or more, the group's best trial.

    ``df`` is ranked best first; its ranking score is ``score_final`` where
    present, else ``score``; only completed trials take part.
    """
    if df.empty:
        return df
    score = df["score_final"].astype(float).fillna(df["score"].astype(float))
    ok = (df["state"] == "COMPLETE") & score.notna()
    groups: list[list[int]] = []
    for i in df.index[ok]:
        if groups and score[groups[-1][0]] - score[i] <= tolerance:
            groups[-1].append(i)
        else:
            groups.append([i])
    df["near_tie"] = ""
    for g in groups:
        if len(g) > 1:
            df.loc[g, "near_tie"] = df.loc[g[0], "trial"]
    return df


def _source_finals(study: optuna.Study) -> dict[str, dict[str, float]]:
    """Current final scores of the stages this stage's trials were handed over from (stage -> trial -> score).

    Final scores of every stage are recomputed against one common pool when a
    later stage finishes, so the score a pipeline had when it was handed over
    may have changed since; the leaderboard shows the current one.
    """
    stages = {str(t.user_attrs[A.SOURCE_TRIAL]).split("#")[0] for t in study.get_trials(deepcopy=False)
              if "#" in str(t.user_attrs.get(A.SOURCE_TRIAL, ""))}
    prefix = study.study_name.rsplit("/", 1)[0]
    out = {}
    for stage in stages:
        try:
            source = optuna.load_study(study_name=f"{prefix}/{stage}", storage=study._storage)
        except KeyError:
            continue
        out[stage] = source.user_attrs.get(A.FINAL_SCORES, {})
    return out


def _source_score(trial: optuna.trial.FrozenTrial, sources: Mapping[str, Mapping[str, float]]) -> float | None:
    """The handed-over pipeline's score in its source stage: its current final score there, where it has one."""
    stage, _, number = str(trial.user_attrs.get(A.SOURCE_TRIAL, "")).partition("#")
    final = sources.get(stage, {}).get(number)
    return final if final is not None else trial.user_attrs.get(A.SOURCE_SCORE)


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


def _tie_text(row: Mapping, rank_of: Mapping[str, int], mark: str = "≈") -> str:
    """``≈`` on the best trial of a tie group, ``≈ #k`` on the others (k: the best one's rank)."""
    leader = row["near_tie"]
    if not leader:
        return ""
    return mark if leader == row["trial"] else f"{mark} #{rank_of.get(leader, '?')}"


def _mark(encoding: str | None) -> str:
    """``≈`` where the terminal can show it, else ``~``."""
    try:
        "≈".encode(encoding or "ascii")
        return "≈"
    except (LookupError, UnicodeEncodeError):
        return "~"


def print_leaderboard(df: pd.DataFrame, rows: int, csv_path: Path, title: str,
                      skipped_models: dict[str, str] | None = None) -> None:
    """Print the top rows with rich (pipelines in full, wrapped); ``csv_path`` is where the full table was saved."""
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(120, Console().width))
    mark = _mark(console.encoding)
    table = Table(title=title)
    finals = not df.empty and df["score_final"].notna().any()
    sources = not df.empty and df["source_score"].notna().any()
    gts = [c for c in ("gt.f1", "gt.ap") if not df.empty and c in df.columns and df[c].notna().any()]
    ties = not df.empty and (df["near_tie"] != "").any()
    headers = {"gt.f1": "GT F1", "gt.ap": "GT AP"}
    for col in ("rank", "trial", "score", *(("final",) if finals else ()), *(("tie",) if ties else ()),
                *(headers[c] for c in gts), *(("from", "score there") if sources else ()),
                "tag", "objects", "s/trial", "pipeline"):
        if col == "pipeline":
            table.add_column(col, justify="left", overflow="fold", ratio=1)
        else:
            table.add_column(col, justify="right", no_wrap=True)
    ok = df[df["state"] == "COMPLETE"] if not df.empty else df
    rank_of = {name: rank for rank, name in enumerate(ok["trial"], start=1)} if len(ok) else {}

    def num(v) -> str:
        return f"{v:.4f}" if v is not None and v == v else ""

    for rank, row in enumerate(ok.head(rows).to_dict("records"), start=1):
        final = (num(row["score_final"]),) if finals else ()
        tie = (_tie_text(row, rank_of, mark),) if ties else ()
        objects = f"{row['n_objects_mean']:.1f}" if row["n_objects_mean"] is not None else ""
        seconds = f"{row['seconds']:.2f}" if row["source"] != "tag" and row["seconds"] is not None else "tag"
        src = ((row["source_trial"] or "", num(row["source_score"])) if sources else ())
        table.add_row(str(rank), row["trial"], num(row["score"]), *final, *tie, *(num(row[c]) for c in gts),
                      *src, row["tag"] or "", objects, seconds, row["pipeline"])
    console.print(table)
    if ties:
        console.print(f"tie: {mark} #k = within {NEAR_TIE} of rank k's score, a difference this small is noise; "
                      f"compare them on the contact sheet{' and by GT' if gts else ''} before picking one")
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
