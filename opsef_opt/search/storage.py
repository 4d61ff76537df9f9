"""A stage's Optuna study on RDB storage: opening it, its sampler and pruner, the queue and heartbeats.

Everything here is about storage semantics that make resume exact: one
study per stage named ``<study>/<stage>``, a space signature that refuses a
changed search space, retried trials first in the queue, an atomic claim of
queued trials, and trials of dead processes failed and queued again.
"""
from __future__ import annotations

import hashlib
import logging
import warnings
from datetime import datetime

import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from opsef_opt.backends import ensure_sqlite
from opsef_opt.search import attrs as A
from opsef_opt.search.errors import StudyError
from opsef_opt.settings import Settings, StageSpec
from opsef_opt.track.mlflow_tracker import mark_interrupted

__all__ = ["open_study", "study_storage", "stage_studies", "study_exists", "delete_stage", "check_signature"]

log = logging.getLogger("opsef_opt")


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
            mark_interrupted(self.tracking_uri, run_id)
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


def study_storage(settings: Settings) -> RDBStorage:
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
        storage = study_storage(settings)
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


def check_signature(study: optuna.Study, settings: Settings, stage: StageSpec) -> None:
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


def delete_stage(settings: Settings, stage: StageSpec) -> None:
    """restart_stage: forget the stage's trials and stored labels (its MLflow runs stay, for the record)."""
    import shutil

    name = f"{settings.study.name}/{stage.name}"
    storage = study_storage(settings)
    if any(s.study_name == name for s in optuna.get_all_study_summaries(storage)):
        optuna.delete_study(study_name=name, storage=storage)
        log.info("stage %s restarted: its previous trials were deleted", name)
    shutil.rmtree(settings.study_dir / "labels" / stage.name, ignore_errors=True)


def stage_studies(settings: Settings) -> dict[str, optuna.Study]:
    """The study's stages that exist in storage, in the configured order."""
    storage = study_storage(settings)
    names = {s.study_name for s in optuna.get_all_study_summaries(storage)}
    return {stage.name: optuna.load_study(study_name=f"{settings.study.name}/{stage.name}", storage=storage)
            for stage in settings.study.stages if f"{settings.study.name}/{stage.name}" in names}


def study_exists(study: optuna.Study, name: str) -> bool:
    return any(s.study_name == name for s in optuna.get_all_study_summaries(study._storage))
