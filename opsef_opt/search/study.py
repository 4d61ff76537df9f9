"""Run a study: a resumable Optuna study on RDB storage, every trial tracked in MLflow.

This module reads top to bottom: check everything (:mod:`.stage`), open
storage (:mod:`.storage`), run trials (:mod:`.loop`, each one
:mod:`.trial`), finish the stage (:mod:`.finish`).

Resume semantics (re-running the same command continues the same study):

- the budget ``n_trials`` counts trials that ran to an end: completed, pruned,
  or failed with an error (a broken pipeline is an answer, not a reason to
  retry forever);
- a trial whose process died (``kill -9``, power loss) stops sending
  heartbeats; after ``heartbeat.grace`` seconds it is marked FAILED, its MLflow
  run KILLED, and its parameters are queued again; Ctrl-C or SIGTERM does the
  same at the next image (a second signal stops at once);
- grid studies enqueue every grid point once, in a seeded order, so nothing
  is evaluated twice;
- a retried trial (interrupted, or handed back by a worker that found the
  budget spent) runs before any other queued pipeline, so a resumed study
  evaluates the same pipelines as one that was never interrupted
  (:func:`_retries_first`).
"""
from __future__ import annotations

import json
import logging
import sys
import warnings

import optuna

from opsef_opt.io.dataset import Item
from opsef_opt.search import attrs as A
from opsef_opt.search.budget import count_trials
from opsef_opt.search.control import StopRequest, requeue_interrupted, stop_on_signals
from opsef_opt.search.errors import StageFailed, StudyError
from opsef_opt.search.finish import all_failed, best_value, finish_stage
from opsef_opt.search.loop import record_unrecorded, trial_loop
from opsef_opt.search.stage import (available_space, enqueue_grid, objective_name, preflight, stage_items,
                                    stage_objective, stage_space, trial_context)
from opsef_opt.search.storage import check_signature, delete_stage, open_study, stage_studies
from opsef_opt.settings import SearchSpec, Settings, StageSpec
from opsef_opt.tags.learn import NeedTags
from opsef_opt.tags.seeding import seed_tagged
from opsef_opt.track import Tracker

__all__ = ["run_search", "run_stage", "worker_main", "open_study", "stage_studies", "count_trials", "StudyError",
           "NeedTags", "StageFailed", "StopRequest"]

log = logging.getLogger("opsef_opt")


def quiet_libraries() -> None:
    """Hide library chatter users need not see: Optuna's INFO lines and experimental-feature warnings."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def run_search(settings: Settings, stop: StopRequest | None = None) -> list[optuna.Study]:
    """Run (or continue) the study's stages in order, each until its trial budget is spent.

    ``stop``: the caller's Ctrl-C / SIGTERM request when it installed signal
    handlers (the CLI does, :func:`opsef_opt.search.control.stop_on_signals`);
    without one a KeyboardInterrupt (a notebook's interrupt) stops at once,
    and the interrupted trial is queued again either way.
    """
    from opsef_opt.segment.registry import forget_failed_loads

    quiet_libraries()
    forget_failed_loads()  # weights put in place since an earlier run in this process are found
    space, skipped = available_space(settings.study.search)
    loaded: dict[str, tuple[list[Item], list[str]]] = {}
    for stage in settings.stages_to_run():  # every image checked before anything is created
        if stage.images not in loaded:
            loaded[stage.images] = stage_items(settings, stage, quiet=bool(loaded))
        preflight(settings, stage, loaded[stage.images][0], space)
        objective_name(settings, stage, loaded[stage.images][0])
    settings.study_dir.mkdir(parents=True, exist_ok=True)
    tracker = Tracker(settings.tracking_uri, settings.studies_dir / "mlartifacts", settings.study.name,
                      settings.study.description)
    studies = []
    for stage in settings.stages_to_run():
        items, problems = loaded[stage.images]
        studies.append(run_stage(settings, stage, items, space, tracker, problems, skipped, stop=stop))
    return studies


def run_stage(settings: Settings, stage: StageSpec, items: list[Item], space: SearchSpec, tracker: Tracker,
              problems: list[str] = (), skipped: dict[str, str] | None = None,
              worker: bool = False, stop: StopRequest | None = None) -> optuna.Study:
    """Run (or continue) one stage: its own Optuna study and MLflow parent run.

    With ``n_workers > 1`` this process prepares the stage, starts the
    other workers (``worker=True``: they only run trials) and runs trials
    itself; once all are done it writes the stage's results.
    """
    skipped = skipped or {}
    stop = stop if stop is not None else StopRequest()
    objective = stage_objective(settings, stage, items, tracker)
    if settings.restart_stage == stage.name and not worker:
        delete_stage(settings, stage)
    study = open_study(settings, stage, len(items))
    check_signature(study, settings, stage)
    budget = stage.n_trials
    space, cap = stage_space(settings, stage, study, space, worker)
    if cap is not None and budget > cap:
        budget = cap
    if stage.sampler == "grid" and stage.space == "same":
        size = enqueue_grid(study, space, settings.seed)
        if budget > size:
            if not worker:
                log.info("the grid has %d pipelines; n_trials=%d is capped at %d", size, budget, size)
            budget = size
    if objective.name == "tags" and not worker:
        runs = tracker.trial_runs(settings.study.name)
        added = seed_tagged(study, runs, settings.study.score.tag_values)
        if added:
            log.info("stage %s: %d tagged pipeline(s) added as completed trials", stage.name, added)

    key = f"mlflow_parent_run:{stage.name}"
    parent = tracker.open_parent(
        study.user_attrs.get(key), stage.name,
        tags={"optuna.study": study.study_name, "opsef.stage": stage.name},
    )
    if worker:
        ctx = trial_context(settings, stage, study, space, items, objective, tracker, parent, budget)
        return trial_loop(settings, study, ctx, budget, stop, worker=True)
    study.set_user_attr(key, parent)
    # tags, not params: a resumed run may change the budget or seed, and params are immutable
    tracker.log(parent, tags={"n_trials": budget, "seed": settings.seed, "sampler": stage.sampler,
                              "objective": objective.name, "n_items": len(items),
                              "tag_model": objective.tag_model.describe() if objective.tag_model else "none",
                              "skipped_images": "\n".join(problems) or "none",
                              "skipped_models": "\n".join(f"{k}: {v}" for k, v in skipped.items()) or "none"})
    study.set_user_attr(A.SKIPPED_MODELS, skipped)
    ctx = trial_context(settings, stage, study, space, items, objective, tracker, parent, budget)
    record_unrecorded(study, ctx)
    log.info("stage %s: %d images/items, objective %s, budget %d trials (%s sampler, %d worker(s))",
             study.study_name, len(items), objective.name, budget, stage.sampler, settings.n_workers)
    from opsef_opt.search.workers import Workers

    with Workers(settings, stage.name, settings.n_workers - 1, worker_main) as workers:
        try:
            trial_loop(settings, study, ctx, budget, stop)
        except KeyboardInterrupt:
            workers.stop(stop.last_signal)
            requeue_interrupted(study)
            tracker.close_parent(parent, {}, {"opsef.status": "interrupted"}, status="KILLED")
            raise
        workers.wait()
    failure = all_failed(study)
    if failure:
        tracker.close_parent(parent, {}, {"opsef.status": "failed", "opsef.error": failure}, status="FAILED")
        raise StageFailed(failure)
    finish_stage(settings, stage, study, ctx)
    best = best_value(study)
    tracker.close_parent(
        parent,
        {"best_score": best} if best is not None else {},
        {"opsef.status": "complete", "cache": json.dumps(ctx.cache.stats)},
    )
    study.set_user_attr(A.CACHE_STATS, ctx.cache.stats)
    return study


def worker_main(settings: Settings, stage_name: str, index: int) -> None:
    """Entry point of a worker process: run trials of the stage until its budget is spent."""
    logging.basicConfig(level=logging.INFO, format=f"[worker {index}] %(message)s", stream=sys.stdout)
    for name in ("alembic", "mlflow", "optuna", "urllib3", "numba", "git"):
        logging.getLogger(name).setLevel(logging.WARNING)
    quiet_libraries()
    stage = next(s for s in settings.study.stages if s.name == stage_name)
    items, _ = stage_items(settings, stage, quiet=True)
    space, skipped = available_space(settings.study.search)
    tracker = Tracker(settings.tracking_uri, settings.studies_dir / "mlartifacts", settings.study.name,
                      settings.study.description)
    try:
        with stop_on_signals() as stop:  # a worker process is its own entry point: Ctrl-C / SIGTERM stop it cleanly
            run_stage(settings, stage, items, space, tracker, skipped=skipped, worker=True, stop=stop)
    except KeyboardInterrupt:
        sys.exit(130)
