"""Search space: grid enumeration and Optuna parameter round trips."""
from __future__ import annotations

import optuna
from hydra import compose, initialize_config_module

from opsef_opt.config import validate
from opsef_opt.resolvers import register_resolvers
from opsef_opt.search.space import grid_points, pipeline_from_params, suggest_pipeline


def _space(tmp_path, *overrides):
    register_resolvers()
    with initialize_config_module(config_module="opsef_opt.conf", version_base="1.3"):
        cfg = compose(config_name="config", overrides=list(overrides))
    return validate(cfg, base=tmp_path).study.search


def test_demo_grid_is_full_product_without_duplicates(tmp_path):
    space = _space(tmp_path)
    points = grid_points(space, seed=0)
    assert len(points) == 3 * 2 * 2 * (2 * 2 + 2 + 3 + 1)  # preprocessings x all model settings
    assert len({tuple(sorted(p.items())) for p in points}) == len(points)
    assert grid_points(space, seed=0) == points and grid_points(space, seed=1) != points


def test_grid_point_round_trip_gives_pipeline(tmp_path):
    space = _space(tmp_path)
    p = next(p for p in grid_points(space, 0) if p["pre.filter"] == "median(size=3)" and p["model"] == "classical")
    pipe = pipeline_from_params(space, p)
    assert ("filter", "median", {"size": 3}) in pipe.steps
    assert pipe.flat["pre.filter"] == "median(size=3)" and pipe.flat["pre.filter.size"] == 3
    assert pipe.model.family == "classical" and set(pipe.model_params) == {"threshold", "min_distance"}


def test_ranges_are_suggested_conditionally(tmp_path):
    space = _space(
        tmp_path,
        "study.search.sampler=tpe",
        "study.search.preprocess.filter=[none, {name: gaussian, sigma: {low: 0.5, high: 2.0}}]",
        "~study.search.models",
        "+study.search.models={classical: {params: {min_distance: {low: 2, high: 9}}}}",
    )
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(12):
        trial = study.ask()
        pipe = suggest_pipeline(trial, space)
        seen.add(pipe.flat["pre.filter"])
        if pipe.flat["pre.filter"].startswith("gaussian"):
            assert 0.5 <= trial.params["pre.filter.gaussian.sigma"] <= 2.0
        else:
            assert "pre.filter.gaussian.sigma" not in trial.params
        assert isinstance(trial.params["classical.min_distance"], int)
        study.tell(trial, 0.0)
    assert len(seen) == 2
