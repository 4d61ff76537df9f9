"""Finishing a stage: scores that need every candidate, the contact sheet, ``best.yaml`` and plots."""
from __future__ import annotations

import hashlib
import logging
from collections import Counter

import optuna
from optuna.trial import TrialState

from opsef_opt.score.objective import resolve_objective
from opsef_opt.search import attrs as A
from opsef_opt.search.best import write_best
from opsef_opt.search.plots import stage_plots
from opsef_opt.search.pool import ConsensusPool, LabelStore
from opsef_opt.search.rescore import common_final_scores
from opsef_opt.search.sheets import stage_contact_sheet, written_sheets
from opsef_opt.search.storage import stage_studies
from opsef_opt.search.trial import TrialContext
from opsef_opt.settings import Settings, StageSpec
from opsef_opt.track import Tracker

__all__ = ["finish_stage", "rescore_study", "all_failed", "best_value", "FINAL_SCORES_VERSION"]

log = logging.getLogger("opsef_opt")


def all_failed(study: optuna.Study) -> str | None:
    """A one-line summary when no trial of the stage completed but some failed with an error."""
    trials = [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get(A.VALUE_SOURCE) != "tag"]
    if any(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials):
        return None
    errors = Counter(t.user_attrs[A.ERROR] for t in trials if t.state == TrialState.FAIL and A.ERROR in t.user_attrs)
    if not errors:
        return None
    n = sum(errors.values())
    reasons = "; ".join(f"{c}x {r[:200]}" for r, c in errors.most_common(3))
    more = f" (+{len(errors) - 3} other reasons)" if len(errors) > 3 else ""
    return f"stage {study.study_name}: all {n} trials failed: {reasons}{more}"


def finish_stage(settings: Settings, stage: StageSpec, study: optuna.Study, ctx: TrialContext) -> None:
    """Scores that need every candidate (final consensus, all stages), and the stage's contact sheet."""
    study.set_user_attr(A.OBJECTIVE, ctx.objective.name)
    rescore_study(settings, stage, study, ctx.tracker)
    runs = ctx.tracker.trial_runs(settings.study.name)
    tags = {r.run_id: r.tag for r in runs if r.tag}
    path = settings.study_dir / "contact_sheets" / f"{stage.name}.png"
    try:
        if stage_contact_sheet(study, ctx.store, ctx.items, ctx.references, tags, path,
                               sparse=settings.study.images.labels_sparse):
            for page in written_sheets(path):
                ctx.tracker.log_file(ctx.parent_run_id, page, "contact_sheet")
            log.info("contact sheet: %s", path)
    except Exception as e:  # a figure must never cost the study its results
        log.warning("contact sheet not written: %s: %s", type(e).__name__, e)
    best = write_best(study, ctx.space, settings.study.reshape, settings.study_dir, stage.name)
    if best:
        ctx.tracker.log_file(ctx.parent_run_id, best, "best")
        log.info("best pipeline: %s", settings.study_dir / "best.yaml")
    plots = settings.study_dir / "plots" / stage.name
    for png in stage_plots(study, plots):
        ctx.tracker.log_file(ctx.parent_run_id, png, "plots")


#: bump when the final re-score computes something else from the same candidates (its results are redone)
FINAL_SCORES_VERSION = 3  # 3: near-duplicate families at object agreement 0.9 (was 0.8)


def rescore_study(settings: Settings, stage: StageSpec, study: optuna.Study, tracker: Tracker) -> None:
    """Final scores of every stage of the study, all against one common pool of every stage's candidates.

    Runs at the end of every stage run, so the stages finished earlier are
    re-scored as later ones add candidates: the same pipeline on the same
    images then has the same ``score.final`` in every stage (see
    :func:`opsef_opt.search.rescore.common_final_scores`). Each stage's
    results (MLflow metrics of its trials, its ``final_scores``) are written
    before its marker ``final_pool`` (a digest of the pool's files, the
    scoring settings and the stage's objective); a stage whose marker is
    current is skipped, one whose re-score was killed is redone by the same
    command.
    """
    studies = stage_studies(settings)
    studies[stage.name] = study
    specs = {s.name: s for s in settings.study.stages}
    stores = {name: LabelStore(settings.study_dir / "labels" / name) for name in studies}
    spec = settings.study.score
    pool = ConsensusPool(list(stores.values()), spec)
    base = f"{pool.fingerprint()}|{spec!r}|{FINAL_SCORES_VERSION}"
    objectives, marks = {}, {}
    for name, s in studies.items():
        objectives[name] = s.user_attrs.get(A.OBJECTIVE) or resolve_objective(
            specs[name].objective, settings.study.images.labels_folder is not None)
        marks[name] = hashlib.sha1(f"{base}|{objectives[name]}".encode()).hexdigest()
    todo = [name for name, s in studies.items() if s.user_attrs.get(A.FINAL_POOL) != marks[name]]
    if not todo:
        return
    pool.refresh()
    complete = {name: [t for t in studies[name].get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                       if t.user_attrs.get(A.VALUE_SOURCE) != "tag"] for name in todo}
    finals = common_final_scores(stores, spec, objectives, {n: [t.number for t in ts] for n, ts in complete.items()},
                                 pool=pool)
    for name in todo:
        rows = finals.get(name, {})
        by_number = {t.number: t for t in complete[name]}
        for number, values in rows.items():
            run_id = by_number[number].user_attrs.get(A.MLFLOW_RUN_ID)
            if run_id:
                tracker.log(run_id, metrics={k: v for k, v in values.items() if v == v})
        studies[name].set_user_attr(A.FINAL_SCORES, {str(n): v.get("score.final") for n, v in rows.items()
                                                     if "score.final" in v})
        studies[name].set_user_attr(A.FINAL_POOL, marks[name])
    others = [n for n in todo if n != stage.name]
    if others:
        log.info("final scores of stage(s) %s recomputed: every stage is scored against one pool "
                 "(the %d stored candidates of all stages)", ", ".join(others), len(pool.seen))


def best_value(study: optuna.Study) -> float | None:
    values = [t.value for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
              if t.user_attrs.get(A.VALUE_SOURCE) != "tag"]
    return max(values) if values else None
