"""Validate the composed Hydra config into typed settings, before any work starts.

Every mistake a user can make in a study file or on the command line (an
unknown key, an unknown step or model, a value of the wrong type, a missing
image folder) is reported here as one :class:`ConfigError` naming the key, the
value and what is allowed. Nothing is written before this passes.

The settings types live in :mod:`opsef_opt.settings` (re-exported here) and
the small checks in :mod:`opsef_opt.checks`.  This module validates the
whole config, the scoring and the stages; the data sections are validated in
:mod:`opsef_opt.config_images` and the search space in
:mod:`opsef_opt.config_space`.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Mapping

from omegaconf import DictConfig, OmegaConf

from opsef_opt.checks import (
    check_keys,
    choice,
    integer,
    path_value,
    typed,
)
from opsef_opt.config_images import images_spec, reshape_spec
from opsef_opt.config_space import has_ranges, search_spec, stage_search_spec
from opsef_opt.settings import (
    DEFAULT_TAG_VALUES,
    FORMATS,
    MODES,
    PRUNERS,
    SAMPLERS,
    STAGE_SPACES,
    TAGS,
    ConfigError,
    ImagesSpec,
    ModelSpec,
    ProxySetting,
    Range,
    ReshapeSpec,
    ScoreSpec,
    SearchSpec,
    Settings,
    StageSpec,
    StepOption,
    StudySpec,
)

__all__ = [
    "ConfigError",
    "ImagesSpec",
    "ReshapeSpec",
    "StepOption",
    "ModelSpec",
    "SearchSpec",
    "ScoreSpec",
    "ProxySetting",
    "StageSpec",
    "StudySpec",
    "Settings",
    "validate",
]


def objectives() -> list[str]:
    """Every valid ``study.score.objective``."""
    from opsef_opt.score import PROXIES
    from opsef_opt.score.gt import GT_METRICS

    return (["auto"] + [f"gt_{m}" for m in GT_METRICS] + ["proxy"]
            + [f"proxy.{p}" for p in PROXIES.names()] + ["tags", "tag_model"])


def _objective(where: str, value: Any) -> str:
    allowed = objectives()
    if value not in allowed:
        raise ConfigError(f"{where}={value!r}: expected one of {', '.join(allowed)}")
    return value


def _proxies(where: str, node: Mapping) -> tuple[ProxySetting, ...]:
    from opsef_opt.params import ParamError, check_kwargs
    from opsef_opt.score import PROXIES

    check_keys(where, node, dict.fromkeys(PROXIES.names()))
    out = []
    for name, proxy in PROXIES.items():
        sub = dict(node.get(name) or {})
        weight = typed(f"{where}.{name}.weight", sub.pop("weight", proxy.weight), (int, float), "a number >= 0")
        if weight < 0:
            raise ConfigError(f"{where}.{name}.weight={weight}: must be >= 0")
        try:
            options = check_kwargs(proxy.params, sub, f"{where}.{name}")
        except ParamError as e:
            raise ConfigError(f"{e} (or 'weight')") from None
        out.append(ProxySetting(name, float(weight), options))
    return tuple(out)


def _score(where: str, node: Mapping) -> ScoreSpec:
    from opsef_opt.score import PROXIES

    check_keys(where, node, dict.fromkeys(["objective", "iou", "aggregate", "proxies", "gate", "tags", "combination"]))
    objective = _objective(f"{where}.objective", node.get("objective", "auto"))
    iou = typed(f"{where}.iou", node.get("iou", 0.5), (int, float), "a number in (0, 1)")
    if not 0 < iou < 1:
        raise ConfigError(f"{where}.iou={iou}: must be in (0, 1)")
    aggregate = choice(f"{where}.aggregate", node.get("aggregate", "per_image"), ("per_image", "pooled"))
    gate = node.get("gate", "sanity")
    if gate is not None and gate not in PROXIES:
        raise ConfigError(f"{where}.gate={gate!r}: expected null or one of {', '.join(PROXIES.names())}")
    tags = node.get("tags") or {}
    check_keys(f"{where}.tags", tags, {"values": None, "min_tagged": 10})
    values = dict(DEFAULT_TAG_VALUES)
    for tag, v in (tags.get("values") or {}).items():
        if tag not in TAGS:
            raise ConfigError(f"{where}.tags.values.{tag}: unknown tag; the tags are {', '.join(TAGS)}")
        values[tag] = float(typed(f"{where}.tags.values.{tag}", v, (int, float), "a number"))
    min_tagged = integer(f"{where}.tags.min_tagged", tags.get("min_tagged", 10), 2)
    # rank by default (chosen by leave-one-dataset-out: README, Benchmarks); weights of one's own only mean
    # something to the weighted mean, so they select it
    weighted = sorted(name for name, sub in (node.get("proxies") or {}).items()
                      if isinstance(sub, Mapping) and "weight" in sub)
    combination = choice(f"{where}.combination", node.get("combination", "mean" if weighted else "rank"),
                         ("mean", "rank"))
    if combination == "rank" and weighted:
        raise ConfigError(f"{where}.combination=rank combines the proxies with learned coefficients; remove "
                          f"the weight of {', '.join(f'{where}.proxies.{n}' for n in weighted)} or use "
                          f"combination=mean")
    return ScoreSpec(objective, float(iou), aggregate, _proxies(f"{where}.proxies", node.get("proxies") or {}),
                     gate, values, min_tagged, combination)


def score_spec(node: Mapping | None = None) -> ScoreSpec:
    """A validated :class:`ScoreSpec` from a ``study.score`` mapping (defaults when None)."""
    return _score("study.score", node or {})


def _stages(where: str, node: Any, default: StageSpec, search: SearchSpec,
            search_node: Mapping | None = None) -> tuple[StageSpec, ...]:
    """``study.stages``: an ordered mapping name -> {objective, sampler, n_trials, ...}; default one stage."""
    if not node:
        return (default,)
    if not isinstance(node, Mapping):
        raise ConfigError(f"{where}: expected a mapping of stage name -> settings")
    out = []
    for name, sub in node.items():
        sub = sub or {}
        if not isinstance(name, str) or not name.isidentifier():
            raise ConfigError(f"{where}.{name}: stage names must be simple identifiers (letters, digits, _)")
        check_keys(f"{where}.{name}", sub, {"objective": None, "sampler": None, "n_trials": None, "pruner": None,
                                       "from": None, "space": "same", "top_k": 5, "images": "train",
                                       "search": None})
        space = choice(f"{where}.{name}.space", sub.get("space", "same"), STAGE_SPACES)
        own = None
        if sub.get("search") is not None:
            if space != "same":
                raise ConfigError(f"{where}.{name}.search: a stage with space={space} derives its space from "
                                  f"stage {sub.get('from')!r}; give search only to space=same stages")
            own = stage_search_spec(f"{where}.{name}.search", search_node or {}, sub["search"])
        source = sub.get("from")
        earlier = [st.name for st in out]
        if space != "same" and source is None:
            raise ConfigError(f"{where}.{name}.space={space}: needs 'from: <an earlier stage>'")
        if source is not None and source not in earlier:
            raise ConfigError(f"{where}.{name}.from={source!r}: must name an earlier stage ({', '.join(earlier) or 'none'})")
        top_k = integer(f"{where}.{name}.top_k", sub.get("top_k", 5), 1)
        images = choice(f"{where}.{name}.images", sub.get("images", "train"), ("train", "all"))
        if space == "refine" and sub.get("sampler") == "grid":
            raise ConfigError(f"{where}.{name}.sampler=grid: a refined space has continuous ranges; use tpe")
        objective = _objective(f"{where}.{name}.objective", sub.get("objective") or default.objective)
        sampler = choice(f"{where}.{name}.sampler", sub.get("sampler") or
                          ("tpe" if space == "refine" else "random" if space == "top"
                           else own.sampler if own else default.sampler),
                          SAMPLERS[1:])
        if sampler == "grid" and space == "same" and has_ranges(own or search):
            raise ConfigError(f"{where}.{name}.sampler=grid: the search space has {{low, high}} ranges; "
                              f"use lists of values for a grid, or sampler=tpe")
        n_trials = integer(f"{where}.{name}.n_trials", sub.get("n_trials") or default.n_trials, 1)
        pruner = choice(f"{where}.{name}.pruner", sub.get("pruner") or default.pruner, PRUNERS)
        out.append(StageSpec(name, objective, sampler, n_trials, pruner, source, space, top_k, images, own))
    return tuple(out)


_STUDY_KEYS = dict.fromkeys(
    ["name", "description", "data_source", "n_trials", "seed", "images", "reshape", "search", "score", "stages",
     "apply"]
)
_TOP_KEYS = dict.fromkeys(
    ["mode", "study", "studies_dir", "n_trials", "seed", "storage", "tracking_uri",
     "heartbeat", "log_artifacts", "leaderboard_rows", "stage", "tags_csv", "tag_batch", "tag_pairs", "n_workers", "restart_stage",
     "pipeline", "input", "apply_run", "dask_scheduler", "edited"]
)


def validate(cfg: DictConfig | Mapping, base: Path | None = None) -> Settings:
    """Check the whole composed config and return typed :class:`Settings`.

    Relative paths are resolved against ``base`` (the current directory by
    default), because Hydra is configured not to change directory.
    """
    base = base or Path.cwd()
    try:
        raw = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    except Exception as e:  # interpolation errors, missing resolvers, ...
        raise ConfigError(f"config could not be resolved: {e}") from None
    check_keys("", raw, _TOP_KEYS)
    study = raw.get("study")
    if not isinstance(study, Mapping):
        raise ConfigError("study: missing; choose one with study=NAME (e.g. study=demo)")
    check_keys("study", study, _STUDY_KEYS)
    name = typed("study.name", study.get("name"), (str,), "a name")
    if not name or "/" in name or name.startswith("."):
        raise ConfigError(f"study.name={name!r}: expected a plain folder-safe name")
    data_source = typed("study.data_source", study.get("data_source") or "", (str,), "text")
    spec = StudySpec(
        name=name,
        description=str(study.get("description") or ""),
        data_source=data_source,
        images=images_spec("study.images", study.get("images") or {}, base, data_source),
        reshape=reshape_spec("study.reshape", study.get("reshape") or {}),
        search=search_spec("study.search", study.get("search") or {}),
        score=_score("study.score", study.get("score") or {}),
    )
    from opsef_opt.batch.config import apply_spec

    spec = replace(spec, apply=apply_spec("study.apply", study.get("apply"), base))
    n_trials = integer("n_trials", raw.get("n_trials"), 1)
    default_stage = StageSpec("search", spec.score.objective, spec.search.sampler, n_trials)
    spec = replace(spec, stages=_stages("study.stages", study.get("stages"), default_stage, spec.search,
                                        study.get("search") or {}))
    stage = typed("stage", raw.get("stage"), (str,), "a stage name", nullable=True)
    if stage is not None and stage not in [s.name for s in spec.stages]:
        raise ConfigError(f"stage={stage!r}: the study has the stages {', '.join(s.name for s in spec.stages)}")
    restart = typed("restart_stage", raw.get("restart_stage"), (str,), "a stage name", nullable=True)
    if restart is not None and restart not in [s.name for s in spec.stages]:
        raise ConfigError(f"restart_stage={restart!r}: the study has the stages {', '.join(s.name for s in spec.stages)}")
    tags_csv = raw.get("tags_csv")
    if tags_csv is not None:
        tags_csv = path_value("tags_csv", tags_csv, base)
        if not tags_csv.is_file():
            raise ConfigError(f"tags_csv={str(tags_csv)!r}: file not found")
    files = {}
    for key in ("pipeline", "input", "edited"):
        value = raw.get(key)
        files[key] = path_value(key, value, base) if value is not None else None
        if value is not None and not files[key].exists():
            raise ConfigError(f"{key}={str(files[key])!r}: not found")
    if files["pipeline"] is not None and not files["pipeline"].is_file():
        raise ConfigError(f"pipeline={str(files['pipeline'])!r}: expected a pipeline YAML file (e.g. best.yaml)")
    if files["edited"] is not None and not files["edited"].is_dir():
        raise ConfigError(f"edited={str(files['edited'])!r}: expected a folder of label images or ROI zips")
    apply_run = typed("apply_run", raw.get("apply_run"), (str,), "a folder name", nullable=True)
    if apply_run is not None and (not apply_run or "/" in apply_run or apply_run.startswith(".")):
        raise ConfigError(f"apply_run={apply_run!r}: expected a plain folder name")
    scheduler = typed("dask_scheduler", raw.get("dask_scheduler"), (str,), "an address like tcp://host:8786",
                       nullable=True)
    if scheduler is not None and "://" not in scheduler:
        raise ConfigError(f"dask_scheduler={scheduler!r}: expected an address like tcp://host:8786")
    mode = choice("mode", raw.get("mode", "search"), MODES)
    if mode == "reimport" and files["edited"] is None:
        raise ConfigError("mode=reimport needs edited=<folder with the edited label images or ROI zips>")
    hb = raw.get("heartbeat") or {}
    check_keys("heartbeat", hb, {"interval": 2, "grace": 6})
    interval = integer("heartbeat.interval", hb.get("interval", 2), 1)
    grace = integer("heartbeat.grace", hb.get("grace", 6), 1)
    if grace <= interval:
        raise ConfigError(f"heartbeat.grace={grace}: must be larger than heartbeat.interval={interval}")
    return Settings(
        mode=mode,
        study=spec,
        studies_dir=path_value("studies_dir", raw.get("studies_dir", "studies"), base),
        n_trials=n_trials,
        seed=integer("seed", raw.get("seed", 0), 0),
        storage=typed("storage", raw.get("storage"), (str,), "an RDB URL such as sqlite:///studies/x/optuna.db"),
        tracking_uri=typed("tracking_uri", raw.get("tracking_uri"), (str,), "an MLflow tracking URI"),
        heartbeat_interval=interval,
        heartbeat_grace=grace,
        log_artifacts=typed("log_artifacts", raw.get("log_artifacts", True), (bool,), "true or false"),
        leaderboard_rows=integer("leaderboard_rows", raw.get("leaderboard_rows", 10), 1),
        stage=stage,
        tags_csv=tags_csv,
        tag_batch=integer("tag_batch", raw.get("tag_batch", 12), 1),
        tag_pairs=integer("tag_pairs", raw.get("tag_pairs", 3), 0),
        n_workers=integer("n_workers", raw.get("n_workers", 1), 1),
        restart_stage=restart,
        pipeline=files["pipeline"],
        input=files["input"],
        apply_run=apply_run,
        dask_scheduler=scheduler,
        edited=files["edited"],
    )
