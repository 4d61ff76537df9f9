"""Preparing a stage: its images, models, objective, search space (own or derived) and trial context.

Nothing here runs a trial; every check that can fail on the user's input
runs before anything is created (see :func:`opsef_opt.search.study.run_search`).
"""
from __future__ import annotations

import logging
from dataclasses import replace

import optuna

from opsef_opt.config import ConfigError
from opsef_opt.io.dataset import Item, load_items
from opsef_opt.preprocess.cache import PreprocessCache
from opsef_opt.score.objective import Objective, resolve_objective
from opsef_opt.search import attrs as A
from opsef_opt.search.errors import StudyError
from opsef_opt.search.infercache import study_inference_cache
from opsef_opt.search.pool import ConsensusPool, LabelStore
from opsef_opt.search.segcache import SegmentCache
from opsef_opt.search.space import grid_points
from opsef_opt.search.storage import study_exists
from opsef_opt.search.trial import TrialContext
from opsef_opt.settings import SearchSpec, Settings, StageSpec
from opsef_opt.tags.learn import fit_from_runs
from opsef_opt.track import Tracker
from opsef_opt.track.record_process import ProcessRecorder

__all__ = ["available_space", "objective_name", "stage_objective", "enqueue_grid", "stage_items", "preflight",
           "stage_search", "stage_space", "trial_context"]

log = logging.getLogger("opsef_opt")


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


def stage_objective(settings: Settings, stage: StageSpec, items: list[Item], tracker: Tracker) -> Objective:
    name = objective_name(settings, stage, items)
    model = None
    if name in ("tags", "tag_model"):
        runs = tracker.trial_runs(settings.study.name)
        model = fit_from_runs(runs, settings.study.score, settings, stage.name)
        log.info("%s", model.describe())
    return Objective(settings.study.score, name, settings.study.images.labels_sparse, model)


def enqueue_grid(study: optuna.Study, space: SearchSpec, seed: int) -> int:
    points = grid_points(space, seed)
    if not study.user_attrs.get(A.GRID_ENQUEUED):
        for p in points:
            study.enqueue_trial(p, skip_if_exists=True)
        study.set_user_attr(A.GRID_ENQUEUED, True)
    return len(points)


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


def stage_search(settings: Settings, stage: StageSpec, space: SearchSpec) -> SearchSpec:
    """The part of the study's space a ``space: same`` stage declares (derived stages search within it)."""
    if stage.space == "same" and stage.search is not None:
        return stage.search
    return space


def stage_space(settings: Settings, stage: StageSpec, study: optuna.Study, base: SearchSpec,
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
        if study_exists(study, f"{settings.study.name}/{source_stage.name}") else None
    numbers = study.user_attrs.get(A.DERIVED_FROM)
    if numbers is None:
        ranked = ranked_trials(source) if source is not None else []
        if not ranked:
            raise StudyError(f"stage {stage.name} starts from the best pipelines of stage {stage.source}, which has "
                             f"no completed trial yet; run it first (stage={stage.source})")
        numbers = [t.number for t in ranked[: stage.top_k]]
        study.set_user_attr(A.DERIVED_FROM, numbers)
    source_space, _ = stage_space(settings, source_stage, source, base, worker=True)
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
            study.enqueue_trial(params, user_attrs={A.SOURCE_TRIAL: f"{stage.source}#{n}", A.SOURCE_SCORE: score},
                                skip_if_exists=True)
        if stage.space == "refine":  # then what reuses their cached network outputs: no forward pass
            from opsef_opt.search.derive import neighbour_queue

            for n, params in neighbour_queue(source, source_space, space, numbers, stage.n_trials):
                study.enqueue_trial(params, user_attrs={A.NEIGHBOUR_OF: f"{stage.source}#{n}"}, skip_if_exists=True)
        study.set_user_attr(A.SOURCES_ENQUEUED, True)
        log.info("stage %s: starts from trials %s of stage %s (%s)", stage.name, numbers, stage.source, stage.space)
    return space, (len(numbers) if stage.space == "top" else None)


def trial_context(settings: Settings, stage: StageSpec, study: optuna.Study, space: SearchSpec, items: list[Item],
                  objective: Objective, tracker: Tracker, parent: str, budget: int) -> TrialContext:
    store = LabelStore(settings.study_dir / "labels" / stage.name)
    return TrialContext(
        study.study_name, space, items, objective,
        PreprocessCache(settings.study_dir / "cache" / "preprocess"), tracker, parent, ProcessRecorder(),
        store, ConsensusPool(store, settings.study.score), settings.log_artifacts, budget=budget,
        segments=SegmentCache(settings.study_dir / "cache" / "segment"),
        inference=study_inference_cache(settings.study_dir),  # raw model outputs per inference key
    )
