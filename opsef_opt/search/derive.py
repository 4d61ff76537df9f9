"""Search spaces of later stages, derived from the best pipelines of an earlier stage.

Following OpSeF's advice (many models and few, distinct preprocessings
first; then fine-tune the most promising), a stage can take the top-k
pipelines of another stage and either

- ``refine``: search around them: of what the source stage tried, only the
  top-k's preprocessing steps, models and categorical values stay; each
  numeric parameter becomes a continuous range spanning the top values
  widened to their neighbours among the values the study declares (or by
  half a value when it declares none); what the study declares but the
  source stage never tried (a source stage with its own, coarser space)
  stays a candidate, since nothing has ruled it out; the top-k themselves
  are evaluated first;
- ``top``: evaluate exactly those pipelines again, e.g. on all images, to
  see how the choice generalises.

A ``refine`` stage spends its first trials where they cost no network
forward pass (:func:`free_neighbours`): after the top-k, the pipelines that
keep a top pipeline's preprocessing and network input and change one
post-processing parameter (threshold, seed distance, NMS ...), whose raw
model output is already cached; only then does its sampler explore new
preprocessings, each of which costs a forward pass per network and image.

The chosen source trials are recorded in the stage's study, so a resumed
stage derives the same space even when the source stage has grown since.
"""
from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import optuna
from optuna.trial import TrialState

from opsef_opt.config import ModelSpec, Range, SearchSpec, StepOption
from opsef_opt.params import Param
from opsef_opt.search.space import Pipeline, pipeline_from_params
from opsef_opt.search import attrs as A

__all__ = ["ranked_trials", "refine_space", "params_for", "top_pipelines", "free_neighbours", "post_params"]


def ranked_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """Completed trials, best first (final score where the stage has one, else the trial value)."""
    finals = study.user_attrs.get(A.FINAL_SCORES, {})

    def key(t):
        v = finals.get(str(t.number))
        return (v if v is not None and not math.isnan(v) else t.value, -t.number)

    return sorted(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)), key=key, reverse=True)


def _widen(param: Param, values: list[float], grid: tuple | None) -> Range | None:
    """A range around ``values``: to the neighbouring grid values, else half a value each way."""
    lo, hi = min(values), max(values)
    if grid:
        below = [g for g in grid if g < lo]
        above = [g for g in grid if g > hi]
        lo = max(below) if below else lo
        hi = min(above) if above else hi
    if lo == hi:
        lo, hi = lo - abs(lo) / 2, hi + abs(hi) / 2
    if param.low is not None:
        lo = max(lo, param.low)
    if param.high is not None:
        hi = min(hi, param.high)
    if param.kind == "int":
        lo, hi = math.floor(lo), math.ceil(hi)
        step = None
        if param.odd:
            lo, hi, step = lo + (lo % 2 == 0), hi - (hi % 2 == 0), 2
        if hi <= lo:
            return None
        return Range(int(lo), int(hi), False, step)
    return Range(float(lo), float(hi)) if hi > lo else None


def _step_params(slot: str, name: str) -> dict[str, Param]:
    from opsef_opt.preprocess import get_step

    return {p.name: p for p in get_step(slot, name).params}


def _model_params(family: str) -> dict[str, Param]:
    from opsef_opt.segment import SEGMENTERS

    return {p.name: p for p in SEGMENTERS.get(family).params}


def _grid_values(options: tuple[StepOption, ...]) -> dict[tuple[str, str], set]:
    """The declared values of each parameter of each step: ``{(step, param): values}``."""
    grids: dict[tuple[str, str], set] = {}
    for o in options:
        for k, v in o.fixed.items():
            grids.setdefault((o.name, k), set()).add(v)
    return grids


def _refine_slot(slot: str, tried: tuple[StepOption, ...], declared: tuple[StepOption, ...],
                 top: list[Pipeline]) -> tuple[StepOption, ...]:
    from opsef_opt.preprocess import step_label

    grids = _grid_values(tried + declared)
    used: dict[str, list[dict]] = {}
    for p in top:
        for s, name, params in p.steps:
            if s == slot:
                used.setdefault(name, []).append(params)
    out = []
    for name, variants in used.items():
        params = _step_params(slot, name)
        fixed, ranges = {}, {}
        for k in variants[0]:
            vals = [v[k] for v in variants]
            if params[k].kind in ("int", "float") and all(isinstance(v, (int, float)) for v in vals):
                rng = _widen(params[k], vals, tuple(sorted(grids.get((name, k), set()))))
                if rng is not None:
                    ranges[k] = rng
                    continue
            fixed[k] = vals[0]
        label = step_label(name, {**fixed, **{k: f"{r.low}..{r.high}" for k, r in ranges.items()}})
        out.append(StepOption(slot, name, fixed, ranges, label))
    tried_names = {o.name for o in tried}
    labels = {o.label for o in out}
    out += [o for o in declared if o.name not in tried_names and o.label not in labels]  # never tried
    return tuple(out)


def _refine_model(m: ModelSpec, declared: ModelSpec | None, mine: list[dict]) -> ModelSpec:
    params = _model_params(m.family)
    other = declared if declared is not None and declared.family == m.family else None
    searched = list(dict.fromkeys(list(m.choices) + list(m.ranges)
                                  + (list(other.choices) + list(other.ranges) if other else [])))
    fixed, choices, ranges = dict(m.fixed), {}, {}
    for k in searched:
        # a parameter the source stage did not set ran at its default
        vals = [v.get(k, params[k].default) for v in mine]
        tried = set(m.choices.get(k, ())) | ({m.fixed[k]} if k in m.fixed else set())
        if k not in m.choices and k not in m.fixed and k not in m.ranges:
            tried.add(params[k].default)
        study_values = set(other.choices.get(k, ())) if other else set()
        if params[k].kind in ("int", "float") and all(isinstance(v, (int, float)) for v in vals):
            grid = tried | study_values
            rng = _widen(params[k], vals, tuple(sorted(grid)) if grid else None)
            if rng is not None:
                fixed.pop(k, None)
                ranges[k] = rng
                continue
            fixed[k] = vals[0]
        else:
            kept = tuple(dict.fromkeys(vals + [v for v in other.choices.get(k, ()) if v not in tried]
                                       if other else vals))
            if len(kept) > 1:
                fixed.pop(k, None)
                choices[k] = kept
            else:
                fixed[k] = kept[0]
    return replace(m, fixed=fixed, choices=choices, ranges=ranges)


def refine_space(space: SearchSpec, top: list[Pipeline], study_space: SearchSpec | None = None) -> SearchSpec:
    """The search space around the ``top`` pipelines of a stage that searched ``space``.

    ``study_space`` is the study's declared space (default: ``space``):
    numeric ranges widen to its neighbouring values, and what it declares
    that ``space`` never tried is kept (see the module docstring).
    """
    study_space = study_space or space
    preprocess = {slot: _refine_slot(slot, tried, study_space.preprocess.get(slot, ()), top)
                  for slot, tried in space.preprocess.items()}
    declared = {m.label: m for m in study_space.models}
    models = []
    for m in space.models:
        mine = [p.model_params for p in top if p.model.label == m.label]
        if mine:
            models.append(_refine_model(m, declared.get(m.label), mine))
    tried = {m.label for m in space.models}
    models += [m for m in study_space.models if m.label not in tried]  # never tried
    return SearchSpec("tpe", preprocess, tuple(models))


def params_for(pipeline: Pipeline, space: SearchSpec) -> dict[str, Any]:
    """Optuna params that make ``space`` produce ``pipeline`` (to enqueue it in a derived stage)."""
    params: dict[str, Any] = {}
    for slot, name, values in pipeline.steps:
        options = space.preprocess[slot]
        match = next(o for o in options if o.name == name
                     and all(values.get(k) == v for k, v in o.fixed.items()))
        if len(options) > 1:
            params[f"pre.{slot}"] = match.label
        for k in match.ranges:
            params[f"pre.{slot}.{name}.{k}"] = values[k]
    if len(space.models) > 1:
        params["model"] = pipeline.model.label
    model = next(m for m in space.models if m.label == pipeline.model.label)
    defaults = {p.name: p.default for p in _model_params(model.family).values()}
    for k in list(model.choices) + list(model.ranges):
        params[f"{model.label}.{k}"] = pipeline.model_params.get(k, defaults.get(k))
    return params


def top_pipelines(source: optuna.Study, space: SearchSpec, numbers: list[int]) -> list[Pipeline]:
    """The pipelines of the given trials of ``source`` (built in the space they were searched in)."""
    by_number = {t.number: t for t in source.get_trials(deepcopy=False)}
    return [pipeline_from_params(space, by_number[n].params) for n in numbers]


def post_params(model: ModelSpec) -> list[str]:
    """The parameters of ``model`` searched in its space that act on the model's output only.

    They change no forward pass (a family's ``inference_params`` do; a family
    without a network has none, and one that does not split inference from
    post-processing runs whole, so all its parameters count as inference).
    """
    from opsef_opt.segment import SEGMENTERS

    cls = SEGMENTERS.get(model.family)
    if cls.has_network and not cls.splits:
        return []
    inference = set(cls.inference_params) if cls.has_network else set()
    return [k for k in list(model.choices) + list(model.ranges) if k not in inference]


def _snap(x: float, rng: Range, kind: str) -> float | int:
    if rng.step:
        x = rng.low + round((x - rng.low) / rng.step) * rng.step
    x = min(max(x, rng.low), rng.high)
    return int(round(x)) if kind == "int" else float(x)


def _candidates(value: Any, rng: Range, kind: str) -> list:
    """Values of a ranged parameter next to ``value``: the range's ends, then halfway to each end."""
    if not isinstance(value, (int, float)):
        return []
    mid = [math.sqrt(value * end) if rng.log and value > 0 and end > 0 else (value + end) / 2
           for end in (rng.low, rng.high)]
    return [_snap(x, rng, kind) for x in (rng.low, rng.high, *mid)]


def _identity(p: Pipeline) -> tuple:
    defaults = {k: q.default for k, q in _model_params(p.model.family).items()}
    params = {**defaults, **p.model_params}
    return (repr(p.steps), p.model.label, repr(sorted(params.items(), key=lambda kv: kv[0])))


def free_neighbours(top: list[Pipeline], space: SearchSpec, tried: list[Pipeline] = (),
                    limit: int | None = None) -> list[tuple[int, dict[str, Any]]]:
    """Pipelines next to the ``top`` ones that need no new forward pass, as ``(rank, Optuna params)``.

    Each keeps a top pipeline's preprocessing, model and inference parameters
    and changes one post-processing parameter (:func:`post_params`) within
    ``space`` (the refined space): another of its choices, or for a range its
    ends (the study's neighbouring values) and halfway to them. The raw model
    output of the top pipeline is cached, so these only post-process again.
    Best pipeline's neighbours first; the ``top`` pipelines themselves and
    those in ``tried`` (the source stage's) are left out; at most ``limit``.
    Deterministic: a function of its arguments only.
    """
    from opsef_opt.search.space import _param_kind

    seen = {_identity(p) for p in list(top) + list(tried)}
    models = {m.label: m for m in space.models}
    out: list[tuple[int, dict[str, Any]]] = []
    for rank, p in enumerate(top):
        m = models.get(p.model.label)
        if m is None:
            continue
        defaults = {k: q.default for k, q in _model_params(m.family).items()}
        for k in post_params(m):
            value = p.model_params.get(k, defaults.get(k))  # a parameter the source did not set ran at its default
            if k in m.choices:
                values = [v for v in m.choices[k] if v != value]
            else:
                values = _candidates(value, m.ranges[k], _param_kind(m.family, k))
            for v in values:
                q = replace(p, model=m, model_params={**p.model_params, k: v})
                ident = _identity(q)
                if ident in seen:
                    continue
                seen.add(ident)
                if limit is not None and len(out) >= limit:
                    return out
                try:
                    out.append((rank, params_for(q, space)))
                except (StopIteration, KeyError):  # its preprocessing is not in the refined space
                    continue
    return out


def neighbour_queue(source: optuna.Study, source_space: SearchSpec, space: SearchSpec, numbers: list[int],
                    n_trials: int) -> list[tuple[int, dict[str, Any]]]:
    """What a ``refine`` stage queues after the top-k: :func:`free_neighbours`, as ``(source trial, params)``.

    At most half of the trials the stage has left after the top-k, so its
    sampler keeps the other half to explore preprocessings around them.
    """
    top = top_pipelines(source, source_space, numbers)
    done = [t.number for t in source.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    tried = top_pipelines(source, source_space, done)
    limit = max(0, n_trials - len(numbers)) // 2
    return [(numbers[r], params) for r, params in free_neighbours(top, space, tried, limit)]
