"""Derived stage spaces: a coarse stage with its own subset of the study's space, refined into the study's values."""
from __future__ import annotations

import pytest
from hydra import compose, initialize_config_module

from opsef_opt.config import ConfigError, validate
from opsef_opt.resolvers import register_resolvers
from opsef_opt.search.derive import params_for, refine_space
from opsef_opt.search.space import grid_points, pipeline_from_params

#: the demo study's space, searched coarsely first: gaussian only, otsu only, one U-Net distance
COARSE = ("+study.stages={coarse: {search: {preprocess: {filter: [none, {name: gaussian, sigma: 1.0}]}, "
          "models: {classical: {params: {threshold: [otsu], min_distance: [3, 6]}}, "
          "unet: {family: bioimageio_unet, init: {package: unet2d_nuclei_broad}, params: {min_distance: [3]}}}}}, "
          "fine: {from: coarse, space: refine, top_k: 2}}")


def _settings(tmp_path, *overrides):
    register_resolvers()
    with initialize_config_module(config_module="opsef_opt.conf", version_base="1.3"):
        cfg = compose(config_name="config", overrides=list(overrides))
    return validate(cfg, base=tmp_path)


def test_a_stage_search_replaces_the_studys_slots_and_models_it_names(tmp_path):
    s = _settings(tmp_path, COARSE)
    coarse, fine = s.study.stages
    space = coarse.own_space(s.study.search)
    assert [o.label for o in space.preprocess["filter"]] == ["none", "gaussian(sigma=1.0)"]
    # slots and models it does not name are the study's
    assert space.preprocess["background"] == s.study.search.preprocess["background"]
    models = {m.label: m for m in space.models}
    assert models["classical"].choices == {"threshold": ("otsu",), "min_distance": (3, 6)}
    assert models["unet"].choices["min_distance"] == (3,)
    assert models["cellpose_nuclei"] == {m.label: m for m in s.study.search.models}["cellpose_nuclei"]
    assert len(grid_points(space, 0)) < len(grid_points(s.study.search, 0))
    assert fine.search is None and fine.own_space(s.study.search) is s.study.search


@pytest.mark.parametrize("override, expected", [
    ("+study.stages={a: {search: {sampler: tpe}}}", "study.stages.a.search.sampler: unknown key"),
    ("+study.stages={a: {search: {preprocess: {filter: [{name: medain}]}}}}",
     "study.stages.a.search.preprocess.filter[0].name='medain'"),
    ("+study.stages={a: {}, b: {from: a, space: refine, search: {models: {classical: {}}}}}",
     "study.stages.b.search: a stage with space=refine derives its space"),
    ("+study.stages={a: {search: {models: {classical: {params: {min_distance: {low: 2, high: 9}}}}}, sampler: grid}}",
     "study.stages.a.sampler=grid"),
])
def test_bad_stage_search_is_named(tmp_path, override, expected):
    with pytest.raises(ConfigError) as err:
        _settings(tmp_path, override)
    assert expected in str(err.value)


def test_a_stage_with_ranges_in_its_own_space_defaults_to_tpe(tmp_path):
    s = _settings(tmp_path, "+study.stages={a: {search: {models: {classical: {params: "
                            "{min_distance: {low: 2, high: 9}}}}}}}")
    assert s.study.stages[0].sampler == "tpe"


def test_refine_widens_into_the_studys_values_and_keeps_what_coarse_never_tried(tmp_path):
    s = _settings(tmp_path, COARSE)
    coarse_space = s.study.stages[0].own_space(s.study.search)
    top = [pipeline_from_params(coarse_space, p) for p in (
        {"pre.filter": "gaussian(sigma=1.0)", "pre.background": "tophat(radius=15)", "pre.histogram": "none",
         "model": "unet"},
        {"pre.filter": "gaussian(sigma=1.0)", "pre.background": "none", "pre.histogram": "none",
         "model": "classical", "classical.min_distance": 3},
    )]
    fine = refine_space(coarse_space, top, study_space=s.study.search)
    filters = {o.label: o for o in fine.preprocess["filter"]}
    # tried and lost: none; the winner gaussian stays (one value, so a range around it); never tried: median
    assert set(filters) == {"gaussian(sigma=0.5..1.5)", "median(size=3)"}
    assert [o.label for o in fine.preprocess["background"]] == ["tophat(radius=7..23)", "none"]
    models = {m.label: m for m in fine.models}
    # the U-Net's distance widens to the study's next value (6), not only half a value around 3
    assert (models["unet"].ranges["min_distance"].low, models["unet"].ranges["min_distance"].high) == (3, 6)
    # the study's threshold li was never tried by coarse: it stays a candidate next to the winner otsu
    assert models["classical"].choices["threshold"] == ("otsu", "li")
    assert "cellpose_nuclei" not in models or models["cellpose_nuclei"] == \
        {m.label: m for m in s.study.search.models}["cellpose_nuclei"]
    # the top pipelines can be enqueued in the refined space and rebuild to themselves
    for p in top:
        again = pipeline_from_params(fine, params_for(p, fine))
        assert again.steps == p.steps and again.model.label == p.model.label
        assert {k: v for k, v in again.model_params.items() if k in p.model_params} == p.model_params


def test_refine_without_a_stage_space_narrows_to_the_top_pipelines(tmp_path):
    s = _settings(tmp_path, "+study.stages={coarse: {}, fine: {from: coarse, space: refine}}")
    space = s.study.search
    top = [pipeline_from_params(space, {
        "pre.filter": "median(size=3)", "pre.background": "none", "pre.histogram": "none",
        "model": "classical", "classical.threshold": "otsu", "classical.min_distance": 3})]
    fine = refine_space(space, top)
    assert fine == refine_space(space, top, study_space=space)
    # only what the top pipeline used; the odd kernel size widened by half a value each way, within its bounds
    assert [o.label for o in fine.preprocess["filter"]] == ["median(size=3..5)"]  # its size is >= 3
    assert [o.label for o in fine.preprocess["background"]] == ["none"]
    (classical,) = fine.models
    assert classical.fixed["threshold"] == "otsu" and "threshold" not in classical.choices
    rng = classical.ranges["min_distance"]
    assert (rng.low, rng.high) == (3, 6)  # up to the next declared value
