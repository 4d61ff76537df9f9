"""From the validated search declaration to Optuna suggestions and back.

Optuna parameter names are readable and flat, and are also what MLflow shows:

- ``pre.<slot>``: the option label of a preprocessing slot, e.g. ``median(size=3)``
  (only suggested when the slot has more than one option);
- ``pre.<slot>.<step>.<param>``: a parameter tuned within a range;
- ``model``: the model entry (only when there is more than one);
- ``<model>.<param>``: a model parameter given as a list or a range.

Fixed values are not suggested (Optuna would treat them as constants) but
appear in :attr:`Pipeline.flat`.
"""
from __future__ import annotations

import itertools
import random
from typing import Any

import optuna

from opsef_opt.config import Range, SearchSpec, StepOption
from opsef_opt.pipeline import Pipeline

__all__ = ["Pipeline", "suggest_pipeline", "grid_points", "pipeline_from_params"]


class _Chooser:
    """Uniform access to 'pick one of' and 'pick in range' for trials and fixed dicts."""

    def __init__(self, trial: optuna.trial.BaseTrial | None = None, params: dict | None = None):
        self.trial, self.params = trial, params

    def categorical(self, name: str, choices: list) -> Any:
        if len(choices) == 1:
            return choices[0]
        if self.trial is not None:
            return self.trial.suggest_categorical(name, choices)
        value = self.params[name]
        if value not in choices:
            raise KeyError(f"{name}={value!r} is not in the current search space {choices}")
        return value

    def ranged(self, name: str, rng: Range, kind: str) -> Any:
        if self.trial is None:
            return self.params[name]
        if kind == "int":
            return self.trial.suggest_int(name, int(rng.low), int(rng.high), log=rng.log, step=int(rng.step or 1))
        return self.trial.suggest_float(name, rng.low, rng.high, log=rng.log, step=rng.step)


def _param_kind(family: str, name: str) -> str:
    from opsef_opt.segment import SEGMENTERS

    return {p.name: p.kind for p in SEGMENTERS.get(family).params}[name]


def _step_kind(slot: str, step: str, name: str) -> str:
    from opsef_opt.preprocess import get_step

    return {p.name: p.kind for p in get_step(slot, step).params}[name]


def _build(space: SearchSpec, pick: _Chooser) -> Pipeline:
    steps, labels = [], []
    for slot, options in space.preprocess.items():
        by_label = {o.label: o for o in options}
        opt: StepOption = by_label[pick.categorical(f"pre.{slot}", list(by_label))]
        params = dict(opt.fixed)
        for pname, rng in opt.ranges.items():
            params[pname] = pick.ranged(f"pre.{slot}.{opt.name}.{pname}", rng, _step_kind(slot, opt.name, pname))
        steps.append((slot, opt.name, params))
        labels.append((slot, opt.label))
    models = {m.label: m for m in space.models}
    model = models[pick.categorical("model", list(models))]
    mparams = dict(model.fixed)
    for pname, choices in model.choices.items():
        mparams[pname] = pick.categorical(f"{model.label}.{pname}", list(choices))
    for pname, rng in model.ranges.items():
        mparams[pname] = pick.ranged(f"{model.label}.{pname}", rng, _param_kind(model.family, pname))
    return Pipeline(tuple(steps), tuple(labels), model, mparams)


def suggest_pipeline(trial: optuna.trial.BaseTrial, space: SearchSpec) -> Pipeline:
    """Ask the trial for every searched value and return the pipeline."""
    return _build(space, _Chooser(trial=trial))


def pipeline_from_params(space: SearchSpec, params: dict[str, Any]) -> Pipeline:
    """Rebuild the pipeline of a finished trial from its Optuna params."""
    return _build(space, _Chooser(params=params))


def grid_points(space: SearchSpec, seed: int) -> list[dict[str, Any]]:
    """Every combination of a discrete space, as Optuna params, in a seeded random order.

    The order is shuffled so that a budget smaller than the grid samples it
    evenly rather than exhausting the first preprocessing first.
    """
    axes: list[list[tuple[str, Any]]] = []
    for slot, options in space.preprocess.items():
        if len(options) > 1:
            axes.append([(f"pre.{slot}", o.label) for o in options])
    model_axes: list[list[dict]] = []
    for m in space.models:
        per_model = [[(f"{m.label}.{k}", v) for v in vs] for k, vs in m.choices.items() if len(vs) > 1]
        head = {"model": m.label} if len(space.models) > 1 else {}
        for combo in itertools.product(*per_model):
            model_axes.append({**head, **dict(combo)})
    points = [
        {**dict(pre), **mp}
        for pre in itertools.product(*axes)
        for mp in model_axes
    ]
    random.Random(seed).shuffle(points)
    return points
