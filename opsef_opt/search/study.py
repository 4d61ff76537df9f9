"""Run a study: a resumable Optuna study on RDB storage, every trial tracked in MLflow.

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

import hashlib
import json
import logging
import signal
import sys
import time
import warnings
from dataclasses import replace
from collections import Counter
from datetime import datetime

import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from opsef_opt.backends import ensure_sqlite
from opsef_opt.config import ConfigError, SearchSpec, Settings, StageSpec
from opsef_opt.io.dataset import Item, load_items
from opsef_opt.preprocess.cache import PreprocessCache
from opsef_opt.score.objective import Objective, resolve_objective
from opsef_opt.search.best import write_best
from opsef_opt.search.budget import count_trials
from opsef_opt.search.plots import stage_plots
from opsef_opt.search.pool import ConsensusPool, LabelStore
from opsef_opt.search.segcache import SegmentCache
from opsef_opt.search.infercache import study_inference_cache  # issue 15: inference cache
from opsef_opt.search.rescore import common_final_scores
from opsef_opt.search.sheets import stage_contact_sheet, written_sheets
from opsef_opt.search.space import grid_points, pipeline_from_params
from opsef_opt.search.trial import TrialContext, TrialFailed, evaluate, record_trial, run_trial
from opsef_opt.tags import trial_runs
from opsef_opt.tags.learn import NeedTags, fit_from_runs
from opsef_opt.tags.seeding import seed_tagged
from opsef_opt.track import Tracker
from opsef_opt.track.recorder import Recorder
from opsef_opt.search import attrs as A

__all__ = ["run_search", "run_stage", "open_study", "stage_studies", "count_trials", "StudyError", "NeedTags",
           "StageFailed"]

log = logging.getLogger("opsef_opt")


class StudyError(RuntimeError):
    """The study cannot run (no readable images, changed search space, ...)."""


class StageFailed(RuntimeError):
    """Every trial of a stage failed; the message summarises the reasons in one line."""


def _space_signature(settings: Settings, stage: StageSpec) -> str:
    s = settings.study
    payload = repr((s.search, s.score, s.images.train, s.images.labels_sparse, s.reshape,
                    stage.objective, stage.sampler, stage.source, stage.space, stage.top_k, stage.images)
                   + ((stage.search,) if stage.search is not None else ()))
    return hashlib.sha1(payload.encode()).hexdigest()[:16]


class _StaleTrialHandler:
    """Heartbeat callback: close the dead trial's MLflow run, then queue its parameters again."""

    def __init__(self, tracking_uri: str) -> None:
        self.tracking_uri = tracking_uri
        self.retry = RetryHeartbeatStaleTrialCallback()

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        run_id = trial.user_attrs.get(A.MLFLOW_RUN_ID)
        if run_id:
            from mlflow import MlflowClient

            client = MlflowClient(self.tracking_uri)
            client.set_tag(run_id, "opsef.status", "interrupted")
            client.set_terminated(run_id, "KILLED")
        log.warning("trial %d was interrupted (no heartbeat); its parameters are queued again", trial.number)
        self.retry(study, trial)


def _sampler(sampler: str, seed: int, n_existing: int) -> optuna.samplers.BaseSampler:
    # offset the seed by the number of trials already stored, so a resumed
    # study does not replay the random start-up proposals it already made
    seed = seed + n_existing
    if sampler == "tpe":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, n_startup_trials=10)
    return optuna.samplers.RandomSampler(seed=seed)


def _pruner(name: str, n_items: int) -> optuna.pruners.BasePruner:
    """Stop clearly bad pipelines part-way (a trial reports its mean score after each image).

    One image says little (tiles of the same slide differ more than
    pipelines do), so no trial is judged before a quarter of the images.
    """
    warmup = max(1, n_items // 4)
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=warmup)
    if name == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=warmup + 1)
    return optuna.pruners.NopPruner()


def _init_storage(url: str) -> None:
    """Create (or check) the Optuna tables of the database at ``url``."""
    RDBStorage(url).engine.dispose()


def _storage(settings: Settings) -> RDBStorage:
    """The study's RDB storage with heartbeats; a missing database driver is a one-line error.

    A new SQLite database is built kill-safe (:func:`opsef_opt.backends.ensure_sqlite`).
    """
    try:
        ensure_sqlite(settings.storage, _init_storage, ("trials",), "Optuna storage")
        return RDBStorage(
            settings.storage,
            engine_kwargs={"connect_args": {"timeout": 60}} if settings.storage.startswith("sqlite") else None,
            heartbeat_interval=settings.heartbeat_interval,
            grace_period=settings.heartbeat_grace,
            heartbeat_stale_trial_callback=_StaleTrialHandler(settings.tracking_uri),
        )
    except ImportError as e:
        hint = " (pip install 'opsef-opt[postgres]')" if settings.storage.startswith("postgresql") else ""
        raise StudyError(f"storage={settings.storage}: its database driver is not installed{hint}: {e}") from None


def open_study(settings: Settings, stage: StageSpec, n_items: int = 1) -> optuna.Study:
    """Create or load the study on its RDB storage, with heartbeats enabled."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        storage = _storage(settings)
    name = f"{settings.study.name}/{stage.name}"
    try:
        n_existing = len(optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False))
    except KeyError:
        n_existing = 0
    study = optuna.create_study(
        study_name=name, storage=storage, sampler=_sampler(stage.sampler, settings.seed, n_existing),
        pruner=_pruner(stage.pruner, n_items),
        direction="maximize", load_if_exists=True,
    )
    _retries_first(study)
    return study


def _is_retry(trial: optuna.trial.FrozenTrial) -> bool:
    """A queued trial that repeats one cut short (kill, Ctrl-C) or handed back (budget race)."""
    return ("failed_trial" in trial.system_attrs or A.RETRY_OF in trial.user_attrs
            or A.REQUEUED_FROM in trial.user_attrs)


def _retries_first(study: optuna.Study) -> None:
    """Make the study take retried trials from its queue before any other queued pipeline.

    Optuna pops queued (WAITING) trials in creation order, so a retry queued
    behind the rest of a grid would run last, or never when the budget ends
    first: a resumed study would then evaluate other pipelines than an
    uninterrupted one. The claim itself stays Optuna's storage operation
    (WAITING -> RUNNING, atomic across processes and hosts); only the order
    changes. ``tests/test_resume_order.py`` checks it against this Optuna.
    """
    storage = study._storage

    def pop() -> int | None:
        waiting = storage.get_all_trials(study._study_id, deepcopy=False, states=(TrialState.WAITING,))
        for t in sorted(waiting, key=lambda t: (not _is_retry(t), t.number)):
            try:
                if _claim(storage, t._trial_id):
                    return t._trial_id
            except optuna.exceptions.UpdateFinishedTrialError:
                continue
        return None

    study._pop_waiting_trial_id = pop


def _claim(storage, trial_id: int) -> bool:
    """WAITING -> RUNNING in one conditional UPDATE: exactly one process or host wins a queued trial.

    Optuna's own claim reads the state, then writes it; on SQLite the read
    takes no lock, so two workers could both see WAITING and both run the
    trial (seen once with ``n_workers=2``: the second ``tell`` then failed).
    ``UPDATE ... WHERE state = 'WAITING'`` is atomic on SQLite and PostgreSQL.
    Storages without an SQL engine keep Optuna's claim.
    """
    backend = getattr(storage, "_backend", storage)
    engine = getattr(backend, "engine", None)
    if engine is None:
        return storage.set_trial_state_values(trial_id, state=TrialState.RUNNING)
    import sqlalchemy as sa
    from optuna.storages._rdb.models import TrialModel

    with engine.begin() as con:
        done = con.execute(sa.update(TrialModel)
                           .where(TrialModel.trial_id == trial_id, TrialModel.state == TrialState.WAITING)
                           .values(state=TrialState.RUNNING, datetime_start=datetime.now()))
    return done.rowcount == 1


def available_space(space: SearchSpec) -> tuple[SearchSpec, dict[str, str]]:
    """Drop optional models whose weights are missing; warn about required ones.

    Returns the space to search and ``{model label: reason}`` of the skipped
    models. A required model that is unavailable stays in the space: its
    trials fail at once with the reason, and the other models go on.
    """
    from opsef_opt.segment import SEGMENTERS

    keep, skipped = [], {}
    for m in space.models:
        ok, reason = SEGMENTERS.get(m.family).availability(**m.init)
        if ok:
            keep.append(m)
        elif m.optional:
            skipped[m.label] = reason
            log.info("model %s skipped (optional, not available here): %s", m.label, reason)
        else:
            keep.append(m)
            log.warning("model %s is not available, its trials will fail: %s", m.label, reason)
    if not keep:
        raise StudyError("no model of the study is available: " + "; ".join(f"{k}: {v}" for k, v in skipped.items()))
    return replace(space, models=tuple(keep)), skipped


def objective_name(settings: Settings, stage: StageSpec, items: list[Item]) -> str:
    """The stage's resolved objective; ``auto`` is ground truth exactly when the study declares labels.

    A missing label file never turns ``auto`` into the proxy: a ground-truth
    objective with images that have no labels is a config error naming them.
    """
    name = resolve_objective(stage.objective, settings.study.images.labels_folder is not None)
    missing = [i.name for i in items if i.truth is None]
    if name.startswith("gt_") and missing:
        why = " (auto, because the study declares labels)" if stage.objective == "auto" else ""
        raise ConfigError(
            f"stage {stage.name}: objective {name}{why} needs ground truth for every image it scores; "
            f"{len(missing)} have none: {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}; add their "
            f"label files, or set this stage's objective to proxy (study.stages.{stage.name}.objective or "
            f"study.score.objective)")
    return name


def _objective(settings: Settings, stage: StageSpec, items: list[Item], tracker: Tracker) -> Objective:
    name = objective_name(settings, stage, items)
    model = None
    if name in ("tags", "tag_model"):
        runs = trial_runs(tracker.client, tracker.experiment_id, settings.study.name)
        model = fit_from_runs(runs, settings.study.score, settings, stage.name)
        log.info("%s", model.describe())
    return Objective(settings.study.score, name, settings.study.images.labels_sparse, model)


def _check_signature(study: optuna.Study, settings: Settings, stage: StageSpec) -> None:
    sig = _space_signature(settings, stage)
    old = study.user_attrs.get(A.SPACE_SIGNATURE)
    if old is None:
        study.set_user_attr(A.SPACE_SIGNATURE, sig)
    elif old != sig:
        raise StudyError(
            f"the search space, scoring or images of stage '{study.study_name}' changed since it was "
            f"created ({settings.storage}); resume needs the same settings. Start a new study with "
            f"study.name=NEW_NAME, or delete {settings.study_dir} to start over."
        )


def _enqueue_grid(study: optuna.Study, space: SearchSpec, seed: int) -> int:
    points = grid_points(space, seed)
    if not study.user_attrs.get(A.GRID_ENQUEUED):
        for p in points:
            study.enqueue_trial(p, skip_if_exists=True)
        study.set_user_attr(A.GRID_ENQUEUED, True)
    return len(points)


def _requeue_interrupted(study: optuna.Study) -> None:
    """After Ctrl-C: queue the parameters of the trial that was cut short."""
    retried = set(study.user_attrs.get(A.REQUEUED, []))
    for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
        if t.user_attrs.get(A.INTERRUPTED) and t.number not in retried:
            study.enqueue_trial(t.params, user_attrs={A.RETRY_OF: t.number})
            retried.add(t.number)
    study.set_user_attr(A.REQUEUED, sorted(retried))


class StopRequest:
    """Ctrl-C / SIGTERM handler: the first signal asks the study to stop at the next image.

    Raising KeyboardInterrupt at an arbitrary point could cut a storage write
    in half and leave the SQLite database locked; so the first signal only
    sets a flag that the trial checks between images, and a second signal
    stops at once.
    """

    #: the signal that asked this process to stop (workers get SIGINT from the terminal themselves)
    last_signal: int | None = None

    def __init__(self) -> None:
        self.requested = False

    def __call__(self, signum, frame) -> None:
        StopRequest.last_signal = signum
        if self.requested:
            raise KeyboardInterrupt(f"signal {signum}")
        self.requested = True
        log.warning("stopping after the current image (signal %d); send it again to stop at once", signum)

    def check(self) -> None:
        if self.requested:
            raise KeyboardInterrupt("stop requested")


def stage_items(settings: Settings, stage: StageSpec, quiet: bool = False) -> tuple[list[Item], list[str]]:
    """The items a stage scores: the training images (``study.images.train``) or all images."""
    items, problems = load_items(settings.study.images, settings.study.reshape, train_only=stage.images == "train")
    if not quiet:
        for p in problems:
            log.warning("%s", p)
    if not items:
        raise StudyError("no readable image left in study.images: " + "; ".join(problems))
    return items, problems


def preflight(settings: Settings, stage: StageSpec, items: list[Item], space: SearchSpec) -> None:
    """Before any trial: every item reaches a model of the stage's space through its preprocessing.

    An image that cannot is a :class:`StudyError` naming it and the fix;
    chains that fail on some images only are one warning each
    (:mod:`opsef_opt.search.preflight`).
    """
    from opsef_opt.search.preflight import InputError, check_inputs

    try:
        notes = check_inputs(items, stage_search(settings, stage, space))
    except InputError as e:
        raise StudyError(str(e)) from None
    for n in notes:
        log.warning("%s", n)


def quiet_libraries() -> None:
    """Hide library chatter users need not see: Optuna's INFO lines and experimental-feature warnings."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def stage_search(settings: Settings, stage: StageSpec, space: SearchSpec) -> SearchSpec:
    """The part of the study's space a ``space: same`` stage declares (derived stages search within it)."""
    if stage.space == "same" and stage.search is not None:
        return stage.search
    return space


def run_search(settings: Settings) -> list[optuna.Study]:
    """Run (or continue) the study's stages in order, each until its trial budget is spent."""
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
        studies.append(run_stage(settings, stage, items, space, tracker, problems, skipped))
    return studies


def run_stage(settings: Settings, stage: StageSpec, items: list[Item], space: SearchSpec, tracker: Tracker,
              problems: list[str] = (), skipped: dict[str, str] | None = None,
              worker: bool = False) -> optuna.Study:
    """Run (or continue) one stage: its own Optuna study and MLflow parent run.

    With ``n_workers > 1`` this process prepares the stage, starts the
    other workers (``worker=True``: they only run trials) and runs trials
    itself; once all are done it writes the stage's results.
    """
    skipped = skipped or {}
    objective = _objective(settings, stage, items, tracker)
    if settings.restart_stage == stage.name and not worker:
        _delete_stage(settings, stage)
    study = open_study(settings, stage, len(items))
    _check_signature(study, settings, stage)
    budget = stage.n_trials
    space, cap = _stage_space(settings, stage, study, space, worker)
    if cap is not None and budget > cap:
        budget = cap
    if stage.sampler == "grid" and stage.space == "same":
        size = _enqueue_grid(study, space, settings.seed)
        if budget > size:
            if not worker:
                log.info("the grid has %d pipelines; n_trials=%d is capped at %d", size, budget, size)
            budget = size
    if objective.name == "tags" and not worker:
        runs = trial_runs(tracker.client, tracker.experiment_id, settings.study.name)
        added = seed_tagged(study, runs, settings.study.score.tag_values)
        if added:
            log.info("stage %s: %d tagged pipeline(s) added as completed trials", stage.name, added)

    key = f"mlflow_parent_run:{stage.name}"
    parent = tracker.open_parent(
        study.user_attrs.get(key), stage.name,
        tags={"optuna.study": study.study_name, "opsef.stage": stage.name},
    )
    if worker:
        return _trial_loop(settings, study, _context(settings, stage, study, space, items, objective, tracker,
                                                     parent, budget), budget, worker=True)
    study.set_user_attr(key, parent)
    # tags, not params: a resumed run may change the budget or seed, and params are immutable
    tracker.log(parent, tags={"n_trials": budget, "seed": settings.seed, "sampler": stage.sampler,
                              "objective": objective.name, "n_items": len(items),
                              "tag_model": objective.tag_model.describe() if objective.tag_model else "none",
                              "skipped_images": "\n".join(problems) or "none",
                              "skipped_models": "\n".join(f"{k}: {v}" for k, v in skipped.items()) or "none"})
    study.set_user_attr(A.SKIPPED_MODELS, skipped)
    ctx = _context(settings, stage, study, space, items, objective, tracker, parent, budget)
    _record_unrecorded(study, ctx)
    log.info("stage %s: %d images/items, objective %s, budget %d trials (%s sampler, %d worker(s))",
             study.study_name, len(items), objective.name, budget, stage.sampler, settings.n_workers)
    from opsef_opt.search.workers import Workers

    with Workers(settings, stage.name, settings.n_workers - 1, worker_main) as workers:
        try:
            _trial_loop(settings, study, ctx, budget)
        except KeyboardInterrupt:
            workers.stop(StopRequest.last_signal)
            _requeue_interrupted(study)
            tracker.close_parent(parent, {}, {"opsef.status": "interrupted"}, status="KILLED")
            raise
        workers.wait()
    failure = _all_failed(study)
    if failure:
        tracker.close_parent(parent, {}, {"opsef.status": "failed", "opsef.error": failure}, status="FAILED")
        raise StageFailed(failure)
    _finish_stage(settings, stage, study, ctx)
    best = _best_value(study)
    tracker.close_parent(
        parent,
        {"best_score": best} if best is not None else {},
        {"opsef.status": "complete", "cache": json.dumps(ctx.cache.stats)},
    )
    study.set_user_attr(A.CACHE_STATS, ctx.cache.stats)
    return study


def _all_failed(study: optuna.Study) -> str | None:
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


def _stage_space(settings: Settings, stage: StageSpec, study: optuna.Study, base: SearchSpec,
                 worker: bool) -> tuple[SearchSpec, int | None]:
    """The stage's search space (derived from an earlier stage when it says so) and a budget cap.

    The source trials are chosen once and recorded in the stage's study, so a
    resumed stage (or another worker) derives the same space; their
    pipelines are queued first.
    """
    if stage.space == "same":
        return (available_space(stage.search)[0] if stage.search is not None else base), None
    from opsef_opt.search.derive import params_for, ranked_trials, refine_space, top_pipelines

    source_stage = next(s for s in settings.study.stages if s.name == stage.source)
    source = optuna.load_study(study_name=f"{settings.study.name}/{source_stage.name}", storage=study._storage) \
        if _exists(study, f"{settings.study.name}/{source_stage.name}") else None
    numbers = study.user_attrs.get(A.DERIVED_FROM)
    if numbers is None:
        ranked = ranked_trials(source) if source is not None else []
        if not ranked:
            raise StudyError(f"stage {stage.name} starts from the best pipelines of stage {stage.source}, which has "
                             f"no completed trial yet; run it first (stage={stage.source})")
        numbers = [t.number for t in ranked[: stage.top_k]]
        study.set_user_attr(A.DERIVED_FROM, numbers)
    source_space, _ = _stage_space(settings, source_stage, source, base, worker=True)
    top = top_pipelines(source, source_space, numbers)
    if stage.space == "top":
        by_number = {t.number: t for t in source.get_trials(deepcopy=False)}
        space, queue = source_space, [by_number[n].params for n in numbers]
    else:
        space = refine_space(source_space, top, study_space=base)
        queue = [params_for(p, space) for p in top]
    if not worker and not study.user_attrs.get(A.SOURCES_ENQUEUED):
        finals = source.user_attrs.get(A.FINAL_SCORES, {})
        values = {t.number: t.value for t in source.get_trials(deepcopy=False)}
        for n, params in zip(numbers, queue):
            score = finals.get(str(n)) if finals.get(str(n)) is not None else values[n]
            # where it comes from and how it scored there (the train score, for confirm stages)
            study.enqueue_trial(params, user_attrs={A.SOURCE_TRIAL: f"{stage.source}#{n}", "source_score": score},
                                skip_if_exists=True)
        study.set_user_attr(A.SOURCES_ENQUEUED, True)
        log.info("stage %s: starts from trials %s of stage %s (%s)", stage.name, numbers, stage.source, stage.space)
    return space, (len(numbers) if stage.space == "top" else None)


def _delete_stage(settings: Settings, stage: StageSpec) -> None:
    """restart_stage: forget the stage's trials and stored labels (its MLflow runs stay, for the record)."""
    import shutil

    name = f"{settings.study.name}/{stage.name}"
    storage = _storage(settings)
    if any(s.study_name == name for s in optuna.get_all_study_summaries(storage)):
        optuna.delete_study(study_name=name, storage=storage)
        log.info("stage %s restarted: its previous trials were deleted", name)
    shutil.rmtree(settings.study_dir / "labels" / stage.name, ignore_errors=True)


def stage_studies(settings: Settings) -> dict[str, optuna.Study]:
    """The study's stages that exist in storage, in the configured order."""
    storage = _storage(settings)
    names = {s.study_name for s in optuna.get_all_study_summaries(storage)}
    return {stage.name: optuna.load_study(study_name=f"{settings.study.name}/{stage.name}", storage=storage)
            for stage in settings.study.stages if f"{settings.study.name}/{stage.name}" in names}


def _exists(study: optuna.Study, name: str) -> bool:
    return any(s.study_name == name for s in optuna.get_all_study_summaries(study._storage))


def _context(settings: Settings, stage: StageSpec, study: optuna.Study, space: SearchSpec, items: list[Item],
             objective: Objective, tracker: Tracker, parent: str, budget: int) -> TrialContext:
    store = LabelStore(settings.study_dir / "labels" / stage.name)
    return TrialContext(
        study.study_name, space, items, objective,
        PreprocessCache(settings.study_dir / "cache" / "preprocess"), tracker, parent, Recorder(),
        store, ConsensusPool(store, settings.study.score), settings.log_artifacts, budget=budget,
        segments=SegmentCache(settings.study_dir / "cache" / "segment"),
        inference=study_inference_cache(settings.study_dir),  # raw model outputs per inference key (issue 15)
    )


def _trial_loop(settings: Settings, study: optuna.Study, ctx: TrialContext, budget: int,
                worker: bool = False) -> optuna.Study:
    """Start trials until the budget (shared by every worker on this storage) is spent."""
    stop = StopRequest()
    ctx.check_stop = stop.check
    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    # a failed trial is reported by our progress line; Optuna's own (with a traceback) is noise
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    waited = False
    started: set[int] = set()
    try:
        while True:
            trials = _fail_stale(study, settings.heartbeat_grace, started)
            done, running = count_trials(trials)
            if done >= budget:
                break
            if done + running >= budget:
                if not waited and not worker:
                    log.info("waiting for %d running trial(s): finishing elsewhere, or interrupted and "
                             "retried after %d s without heartbeat", running, settings.heartbeat_grace)
                    waited = True
                time.sleep(settings.heartbeat_interval)
                continue
            stop.check()
            study.optimize(lambda t: run_trial(t, ctx), n_trials=1, catch=(TrialFailed,), gc_after_trial=False)
            _report(ctx.last, done + 1, budget, ctx)
    finally:
        ctx.recorder.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return study


def _finish_stage(settings: Settings, stage: StageSpec, study: optuna.Study, ctx: TrialContext) -> None:
    """Scores that need every candidate (final consensus, all stages), and the stage's contact sheet."""
    study.set_user_attr(A.OBJECTIVE, ctx.objective.name)
    _rescore_study(settings, stage, study, ctx.tracker)
    runs = trial_runs(ctx.tracker.client, ctx.tracker.experiment_id, settings.study.name)
    tags = {r.run_id: r.tag for r in runs if r.tag}
    path = settings.study_dir / "contact_sheets" / f"{stage.name}.png"
    try:
        if stage_contact_sheet(study, ctx.store, ctx.items, ctx.references, tags, path,
                               sparse=settings.study.images.labels_sparse):
            for page in written_sheets(path):
                ctx.tracker.client.log_artifact(ctx.parent_run_id, str(page), "contact_sheet")
            log.info("contact sheet: %s", path)
    except Exception as e:  # a figure must never cost the study its results
        log.warning("contact sheet not written: %s: %s", type(e).__name__, e)
    best = write_best(study, ctx.space, settings.study.reshape, settings.study_dir, stage.name)
    if best:
        ctx.tracker.client.log_artifact(ctx.parent_run_id, str(best), "best")
        log.info("best pipeline: %s", settings.study_dir / "best.yaml")
    plots = settings.study_dir / "plots" / stage.name
    for png in stage_plots(study, plots):
        ctx.tracker.client.log_artifact(ctx.parent_run_id, str(png), "plots")


#: bump when the final re-score computes something else from the same candidates (its results are redone)
FINAL_SCORES_VERSION = 3  # 3: near-duplicate families at object agreement 0.9 (was 0.8)


def _rescore_study(settings: Settings, stage: StageSpec, study: optuna.Study, tracker: Tracker) -> None:
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


def _fail_stale(study: optuna.Study, grace: int, started: set[int]) -> list[optuna.trial.FrozenTrial]:
    """Fail (and requeue) trials whose process died; return the study's trials afterwards.

    Optuna only judges trials that recorded a heartbeat; a process killed
    between creating a trial and its first heartbeat would leave it RUNNING
    forever. For a RUNNING trial older than the grace period we record one
    heartbeat on its behalf (once): a live trial refreshes it anyway, a dead
    one then goes stale after another grace period.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    trials = study.get_trials(deepcopy=False)
    now = datetime.now()
    for t in trials:
        if (t.state == TrialState.RUNNING and t._trial_id not in started and t.datetime_start
                and (now - t.datetime_start).total_seconds() > grace):
            study._storage.record_heartbeat(t._trial_id)
            started.add(t._trial_id)
    return trials


def _record_unrecorded(study: optuna.Study, ctx: TrialContext) -> None:
    """Record again the completed trials whose recording a killed process did not finish.

    The pipeline is deterministic, so re-evaluating it reproduces the labels;
    the model and preprocessing caches make this cheap.
    """
    runs = ctx.tracker.client.search_runs(
        [ctx.tracker.experiment_id],
        filter_string=f"attributes.status = 'RUNNING' and tags.`optuna.study` = '{study.study_name}'",
        max_results=1000,
    )
    open_runs = {r.info.run_id for r in runs}
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        run_id = t.user_attrs.get(A.MLFLOW_RUN_ID)
        if run_id in open_runs:
            log.info("recording trial %d again (its process was killed while recording it)", t.number)
            value, metrics, outputs = evaluate(ctx, pipeline_from_params(ctx.space, t.params), t.number)
            ctx.store.save(t.number, {o.name: o.labels for o in outputs}, {o.name: o.metrics for o in outputs})
            record_trial(ctx.tracker, run_id, outputs if ctx.log_artifacts else [], metrics)


def _best_value(study: optuna.Study) -> float | None:
    values = [t.value for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
              if t.user_attrs.get(A.VALUE_SOURCE) != "tag"]
    return max(values) if values else None


def _report(last: dict, n: int, budget: int, ctx: TrialContext | None = None) -> None:
    """One line per ended trial; on a terminal also a progress bar with the time left (opsef_opt.progress)."""
    from opsef_opt.progress import trial_progress
    from opsef_opt.track.names import stage_of, trial_name

    if last.get("over_budget"):
        return
    study_name = ctx.study_name if ctx is not None else "search"
    name = trial_name(stage_of(study_name), last["number"])
    left = trial_progress(study_name, n, budget)  # "" on a terminal: the bar shows it
    left = f"  ({left})" if left else ""
    if last.get("pruned"):
        log.info("[%d/%d] %s pruned (%s)  %s%s", n, budget, name, last["pruned"], last["pipeline"], left)
    elif last.get("error"):
        log.warning("[%d/%d] %s FAILED: %s%s", n, budget, name, last["error"], left)
    elif "value" in last:
        # a score against the pool so far is provisional (and without consensus while few families vote)
        value, note = (ctx.pool.progress(last["number"], last["value"], ctx.objective.name)
                       if ctx is not None and ctx.pool is not None else (last["value"], ""))
        log.info("[%d/%d] %s  score %.4f%s  %s%s", n, budget, name, value, note, last["pipeline"], left)


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
        run_stage(settings, stage, items, space, tracker, skipped=skipped, worker=True)
    except KeyboardInterrupt:
        sys.exit(130)
