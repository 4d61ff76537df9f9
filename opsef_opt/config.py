"""Validate the composed Hydra config into typed settings, before any work starts.

Every mistake a user can make in a study file or on the command line (an
unknown key, an unknown step or model, a value of the wrong type, a missing
image folder) is reported here as one :class:`ConfigError` naming the key, the
value and what is allowed. Nothing is written before this passes.

The settings types live in :mod:`opsef_opt.settings` (re-exported here) and
the small checks in :mod:`opsef_opt.checks`; this module is the validators.
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
    is_range,
    path_value,
    typed,
    value_range,
)
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

# ---------------------------------------------------------------- sections

_IMAGES_KEYS = {
    "folder": None, "pattern": "*.tif", "exclude": None, "files": None, "format": "auto", "channel": None,
    "axes": None, "z": None, "lif": None, "labels": None, "train": None,
}
_LABELS_KEYS = {"folder": None, "pattern": "{stem}.tif", "regex": None, "sparse": False}


def _globs(where: str, value: Any, what: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{where}={value!r}: expected a list of {what}")
    return tuple(value)


def _labels(where: str, labels: Any, base: Path) -> tuple[Path, str, bool, str | None]:
    """``images.labels``: (folder, pattern, sparse, regex), each checked; the pattern's fields must be filled."""
    import re
    import string

    if not isinstance(labels, Mapping):
        raise ConfigError(f"{where}={labels!r}: expected a mapping such as {{folder: data/labels, pattern: '{{stem}}.tif'}}")
    check_keys(where, labels, _LABELS_KEYS)
    sparse = typed(f"{where}.sparse", labels.get("sparse", False), (bool,), "true or false")
    if labels.get("folder") is None:
        raise ConfigError(f"{where}.folder: required when labels are given")
    folder = path_value(f"{where}.folder", labels["folder"], base)
    if not folder.is_dir():
        raise ConfigError(f"{where}.folder={str(folder)!r}: folder not found")
    pattern = typed(
        f"{where}.pattern", labels.get("pattern") or _LABELS_KEYS["pattern"], (str,),
        "a pattern such as '{stem}.tif' or '{stem}_labels.tif'",
    )
    regex = typed(f"{where}.regex", labels.get("regex"), (str,),
                   "a regular expression such as 't(\\d+)'", nullable=True)
    fields: dict[str, str] = {"stem": "the image file name without suffix"}
    if regex is not None:
        try:
            rx = re.compile(regex)
        except re.error as e:
            raise ConfigError(f"{where}.regex={regex!r}: not a valid regular expression ({e})") from None
        if rx.groups == 0:
            raise ConfigError(f"{where}.regex={regex!r}: needs a group, e.g. 't(\\d+)', whose text "
                              f"{where}.pattern uses as {{1}}")
        fields.update({str(i): f"group {i}" for i in range(rx.groups + 1)})
        fields.update(dict.fromkeys(rx.groupindex, "a named group"))
    try:
        used = [f for _, f, _, _ in string.Formatter().parse(pattern) if f is not None]
    except ValueError as e:
        raise ConfigError(f"{where}.pattern={pattern!r}: {e}") from None
    allowed = ", ".join("{" + f + "}" for f in fields)
    for f in used:
        if f not in fields:
            raise ConfigError(f"{where}.pattern={pattern!r}: unknown field {{{f}}}; allowed: {allowed}"
                              + ("" if regex else " (add labels.regex to use its groups)"))
    if not used:
        raise ConfigError(f"{where}.pattern={pattern!r}: must contain '{{stem}}'"
                          + (" or a group of labels.regex, e.g. {1}" if regex else ""))
    return folder, pattern, sparse, regex


def _images(where: str, node: Mapping, base: Path, data_source: str) -> ImagesSpec:
    check_keys(where, node, _IMAGES_KEYS)
    node = {**_IMAGES_KEYS, **node}
    folder = path_value(f"{where}.folder", node["folder"], base) if node["folder"] is not None else None
    files = tuple(path_value(f"{where}.files", f, base) for f in (node["files"] or ()))
    if folder is None and not files:
        raise ConfigError(f"{where}: give 'folder' (+ 'pattern') or a list of 'files'")
    hint = f"\n{data_source.strip()}" if data_source else ""
    if folder is not None and not folder.is_dir():
        raise ConfigError(
            f"{where}.folder={str(folder)!r}: folder not found; point it at your images "
            f"(e.g. {where}.folder=/path/to/images on the command line){hint}"
        )
    for f in files:
        if not f.is_file():
            raise ConfigError(f"{where}.files: file not found: {f}{hint}")
    pattern = typed(f"{where}.pattern", node["pattern"], (str,), "a glob pattern such as '*.tif'")
    fmt = choice(f"{where}.format", node["format"], FORMATS)
    channel = integer(f"{where}.channel", node["channel"], 0, nullable=True)
    axes = typed(f"{where}.axes", node["axes"], (str,), "an axes string such as 'CYX'", True)
    z = node["z"]
    if z is not None:
        if not (isinstance(z, (list, tuple)) and len(z) == 2 and all(isinstance(v, int) for v in z)):
            raise ConfigError(f"{where}.z={z!r}: expected [start, stop] (integers)")
        z = (int(z[0]), int(z[1]))
    lif = node["lif"] or {}
    check_keys(f"{where}.lif", lif, {"image": None, "t": 0, "mosaic": None})
    lif_t = integer(f"{where}.lif.t", lif.get("t", 0), 0)
    lif_mosaic = integer(f"{where}.lif.mosaic", lif.get("mosaic"), 0, nullable=True)
    exclude = _globs(f"{where}.exclude", node["exclude"], "file-name globs such as '*_labels.tif'")
    labels_folder, labels_pattern, labels_sparse, labels_regex = None, _LABELS_KEYS["pattern"], False, None
    if node["labels"] is not None:
        labels_folder, labels_pattern, labels_sparse, labels_regex = _labels(f"{where}.labels", node["labels"], base)
    train = node["train"]
    if train is not None:
        if not isinstance(train, (list, tuple)) or not all(isinstance(t, str) for t in train):
            raise ConfigError(f"{where}.train={train!r}: expected a list of image names or globs")
        train = tuple(train)
    return ImagesSpec(
        folder, pattern, files, fmt, channel, axes, z, lif.get("image"), lif_t, lif_mosaic,
        labels_folder, labels_pattern, train, labels_sparse, exclude, labels_regex,
    )


def _reshape(where: str, node: Mapping) -> ReshapeSpec:
    check_keys(where, node, {"bin": 1, "scale": 1.0, "substack": None, "tile": None})
    b = integer(f"{where}.bin", node.get("bin", 1), 1)
    scale = typed(f"{where}.scale", node.get("scale", 1.0), (int, float), "a positive number")
    if scale <= 0:
        raise ConfigError(f"{where}.scale={scale}: must be > 0")
    substack = integer(f"{where}.substack", node.get("substack"), 1, nullable=True)
    tile = node.get("tile")
    size, overlap = None, 0
    if tile is not None:
        check_keys(f"{where}.tile", tile, {"size": None, "overlap": 0})
        size = tile.get("size")
        if not (
            isinstance(size, (list, tuple)) and len(size) in (2, 3)
            and all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size)
        ):
            raise ConfigError(f"{where}.tile.size={size!r}: expected [Y, X] or [Z, Y, X] positive integers")
        size = tuple(size)
        overlap = integer(f"{where}.tile.overlap", tile.get("overlap", 0), 0)
        if overlap >= min(size[-2:]):
            raise ConfigError(f"{where}.tile.overlap={overlap}: must be smaller than the tile size {size}")
    return ReshapeSpec(b, float(scale), substack, size, overlap)


def _search_values(where: str, declared: Mapping[str, Any], values: Mapping[str, Any], owner: str):
    """Split a mapping of searched parameter values into (fixed, lists, ranges), each validated.

    A scalar is fixed, a list gives the choices, ``{low, high}`` a range for
    the sampler. Every value is checked against the parameter's declaration.
    """
    from opsef_opt.params import ParamError, check_value

    fixed: dict[str, Any] = {}
    lists: dict[str, tuple] = {}
    ranges: dict[str, Range] = {}
    for key, value in values.items():
        w = f"{where}.{key}"
        if key not in declared:
            raise ConfigError(f"{w}: unknown parameter of {owner}; allowed: {', '.join(declared) or '(none)'}")
        p = declared[key]
        try:
            if is_range(value):
                rng = value_range(w, value)
                if p.kind not in ("int", "float"):
                    raise ConfigError(f"{w}: a range needs a numeric parameter; give a list of values")
                if p.kind == "int" and not (float(rng.low).is_integer() and float(rng.high).is_integer()):
                    raise ConfigError(f"{w}: integer parameter needs integer low/high")
                if p.odd:
                    raise ConfigError(f"{w}: {key} must be odd; give a list of values (e.g. [3, 5, 7]) instead of a range")
                cast = int if p.kind == "int" else float
                check_value(p, cast(rng.low), f"{w}.low")
                check_value(p, cast(rng.high), f"{w}.high")
                ranges[key] = rng
            elif isinstance(value, (list, tuple)):
                if not value:
                    raise ConfigError(f"{w}: empty list")
                lists[key] = tuple(check_value(p, v, w) for v in value)
            else:
                fixed[key] = check_value(p, value, w)
        except ParamError as e:
            raise ConfigError(str(e)) from None
    return fixed, lists, ranges


def _step_options(where: str, slot: str, options: Any) -> tuple[StepOption, ...]:
    from opsef_opt.preprocess import get_step, step_label, steps_in_slot

    if not isinstance(options, (list, tuple)) or not options:
        raise ConfigError(f"{where}: expected a non-empty list of options, e.g. [none, {{name: median, size: 3}}]")
    out: list[StepOption] = []
    for i, opt in enumerate(options):
        w = f"{where}[{i}]"
        if isinstance(opt, bool) and slot == "invert":
            opt = "invert" if opt else "none"
        if isinstance(opt, str):
            opt = {"name": opt}
        if not isinstance(opt, Mapping) or "name" not in opt:
            raise ConfigError(f"{w}={opt!r}: expected a step name or a mapping with 'name'")
        name = opt["name"]
        try:
            spec = get_step(slot, name)
        except KeyError:
            raise ConfigError(
                f"{w}.name={name!r}: unknown {slot} step; allowed: {', '.join(steps_in_slot(slot))}"
            ) from None
        fixed, lists, ranges = _search_values(
            w, {p.name: p for p in spec.params}, {k: v for k, v in opt.items() if k != "name"},
            f"{slot} step {name!r}",
        )
        # expand lists into one concrete option per combination
        combos: list[dict] = [dict(fixed)]
        for key, values in lists.items():
            combos = [{**c, key: v} for c in combos for v in values]
        for c in combos:
            label = step_label(name, {**c, **{k: f"{r.low}..{r.high}" for k, r in ranges.items()}})
            out.append(StepOption(slot, name, c, ranges, label))
    labels = [o.label for o in out]
    dup = {lab for lab in labels if labels.count(lab) > 1}
    if dup:
        raise ConfigError(f"{where}: duplicate options {sorted(dup)}")
    return tuple(out)


def _models(where: str, node: Mapping) -> tuple[ModelSpec, ...]:
    from opsef_opt.params import ParamError, check_kwargs
    from opsef_opt.segment import SEGMENTERS

    if not isinstance(node, Mapping) or not node:
        raise ConfigError(f"{where}: declare at least one model, e.g. models: {{classical: {{}}}}")
    out = []
    for label, entry in node.items():
        w = f"{where}.{label}"
        entry = entry or {}
        check_keys(w, entry, {"family": None, "init": None, "params": None, "optional": False})
        optional = typed(f"{w}.optional", entry.get("optional", False), (bool,), "true or false")
        family = entry.get("family") or label
        if family not in SEGMENTERS:
            raise ConfigError(
                f"{w}: unknown model family {family!r}; available: {', '.join(SEGMENTERS.names())}"
            )
        cls = SEGMENTERS.get(family)
        try:
            init = check_kwargs(cls.init_params, dict(entry.get("init") or {}), f"{w}.init")
        except ParamError as e:
            raise ConfigError(str(e)) from None
        fixed, choices, ranges = _search_values(
            f"{w}.params", {p.name: p for p in cls.params}, dict(entry.get("params") or {}), f"model {family!r}"
        )
        out.append(ModelSpec(str(label), family, init, fixed, choices, ranges, optional))
    return tuple(out)


def _search(where: str, node: Mapping) -> SearchSpec:
    from opsef_opt.preprocess import SLOTS

    check_keys(where, node, {"sampler": "auto", "preprocess": None, "models": None})
    sampler = choice(f"{where}.sampler", node.get("sampler", "auto"), SAMPLERS)
    pre = node.get("preprocess") or {}
    check_keys(f"{where}.preprocess", pre, dict.fromkeys(SLOTS))
    preprocess = {
        slot: _step_options(f"{where}.preprocess.{slot}", slot, pre[slot])
        for slot in SLOTS
        if slot in pre
    }
    models = _models(f"{where}.models", node.get("models"))
    has_ranges = any(o.ranges for opts in preprocess.values() for o in opts) or any(
        m.ranges for m in models
    )
    if sampler == "grid" and has_ranges:
        raise ConfigError(
            f"{where}.sampler=grid: the space has {{low, high}} ranges; use lists of values "
            f"for a grid, or sampler=tpe"
        )
    if sampler == "auto":
        sampler = "tpe" if has_ranges else "grid"
    return SearchSpec(sampler, preprocess, models)


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

    check_keys(where, node, dict.fromkeys(["objective", "iou", "aggregate", "proxies", "gate", "tags"]))
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
    return ScoreSpec(objective, float(iou), aggregate, _proxies(f"{where}.proxies", node.get("proxies") or {}),
                     gate, values, min_tagged)


def _has_ranges(search: SearchSpec) -> bool:
    return any(m.ranges for m in search.models) or any(o.ranges for opts in search.preprocess.values() for o in opts)


def score_spec(node: Mapping | None = None) -> ScoreSpec:
    """A validated :class:`ScoreSpec` from a ``study.score`` mapping (defaults when None)."""
    return _score("study.score", node or {})


def _stage_search(where: str, study_node: Mapping, node: Any) -> SearchSpec:
    """A stage's own space: its ``preprocess`` slots and ``models`` entries replace the study's of that name.

    So a study can declare its whole space once and let a coarse stage
    search a subset (fewer values per slot, a coarser model grid), while
    derived stages widen into the study's values.
    """
    if not isinstance(node, Mapping) or not node:
        raise ConfigError(f"{where}: expected a mapping with preprocess and/or models")
    check_keys(where, node, {"preprocess": None, "models": None})
    merged: dict[str, Any] = {}
    for key in ("preprocess", "models"):
        mine = node.get(key) or {}
        if not isinstance(mine, Mapping):
            raise ConfigError(f"{where}.{key}: expected a mapping")
        merged[key] = {**(study_node.get(key) or {}), **mine}
    return _search(where, merged)


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
            own = _stage_search(f"{where}.{name}.search", search_node or {}, sub["search"])
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
        if sampler == "grid" and space == "same" and _has_ranges(own or search):
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
        images=_images("study.images", study.get("images") or {}, base, data_source),
        reshape=_reshape("study.reshape", study.get("reshape") or {}),
        search=_search("study.search", study.get("search") or {}),
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
