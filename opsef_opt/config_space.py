"""Validate a study's search space: the preprocessing options and the models with their parameters.

The search space is where a typo is most expensive: an unknown step, model or
parameter, or a value outside what the step accepts, would otherwise only
fail inside a trial, after the study started.  Each value is checked against
the declaration of the step or model it belongs to, so the error can list
what is allowed.
"""
from __future__ import annotations

from typing import Any, Mapping

from opsef_opt.checks import check_keys, choice, is_range, typed, value_range
from opsef_opt.settings import SAMPLERS, ConfigError, ModelSpec, Range, SearchSpec, StepOption

__all__ = ["search_spec", "stage_search_spec", "has_ranges"]


def _search_values(where: str, declared: Mapping[str, Any], values: Mapping[str, Any],
                   owner: str) -> tuple[dict[str, Any], dict[str, tuple], dict[str, Range]]:
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


def search_spec(where: str, node: Mapping) -> SearchSpec:
    """``study.search`` (sampler, preprocessing options, models) as a checked
    :class:`~opsef_opt.settings.SearchSpec`."""
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
    ranged = any(o.ranges for opts in preprocess.values() for o in opts) or any(
        m.ranges for m in models
    )
    if sampler == "grid" and ranged:
        raise ConfigError(
            f"{where}.sampler=grid: the space has {{low, high}} ranges; use lists of values "
            f"for a grid, or sampler=tpe"
        )
    if sampler == "auto":
        sampler = "tpe" if ranged else "grid"
    return SearchSpec(sampler, preprocess, models)


def has_ranges(search: SearchSpec) -> bool:
    """True when a model or preprocessing option of ``search`` has a ``{low, high}`` range (no grid then)."""
    return any(m.ranges for m in search.models) or any(o.ranges for opts in search.preprocess.values() for o in opts)


def stage_search_spec(where: str, study_node: Mapping, node: Any) -> SearchSpec:
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
    return search_spec(where, merged)
