"""A refine stage's free start: post-processing neighbours of the top-k reuse their cached network outputs."""
from __future__ import annotations

from dataclasses import replace

import optuna
import pytest

from opsef_opt.search.derive import free_neighbours, neighbour_queue, post_params, refine_space
from opsef_opt.search.space import pipeline_from_params, suggest_pipeline
from opsef_opt.segment import SEGMENTERS

from test_derive import COARSE, _settings

TOP = (
    {"pre.filter": "gaussian(sigma=1.0)", "pre.background": "tophat(radius=15)", "pre.histogram": "none",
     "model": "unet"},
    {"pre.filter": "gaussian(sigma=1.0)", "pre.background": "none", "pre.histogram": "none",
     "model": "classical", "classical.min_distance": 3},
)


@pytest.fixture
def spaces(tmp_path):
    s = _settings(tmp_path, COARSE)
    coarse = s.study.stages[0].own_space(s.study.search)
    top = [pipeline_from_params(coarse, p) for p in TOP]
    return s, coarse, top, refine_space(coarse, top, study_space=s.study.search)


def test_each_neighbour_changes_one_post_processing_parameter_of_a_top_pipeline(spaces):
    _, _, top, fine = spaces
    got = free_neighbours(top, fine)
    assert got and [r for r, _ in got] == sorted(r for r, _ in got)  # the best pipeline's neighbours first
    for rank, params in got:
        p, q = top[rank], pipeline_from_params(fine, params)
        assert q.steps == p.steps and q.model.label == p.model.label  # same input, same network: cached output
        before = {**{x.name: x.default for x in SEGMENTERS.get(p.model.family).params}, **p.model_params}
        changed = {k for k in q.model_params if q.model_params[k] != before[k]}
        assert len(changed) == 1 and changed <= set(post_params(q.model)), (p.model_params, q.model_params)
    unet = [pipeline_from_params(fine, p).model_params["min_distance"] for r, p in got if r == 0]
    # the study's next value (6) and halfway to it (4); the top value itself is not queued again
    assert 6 in unet and 4 in unet and 3 in unet  # 3 stays while the threshold moves
    classical = [pipeline_from_params(fine, p).model_params for r, p in got if r == 1]
    assert {"threshold": "li", "min_distance": 3} in [{k: m[k] for k in ("threshold", "min_distance")}
                                                     for m in classical]


def test_inference_parameters_are_never_varied(spaces):
    s, _, top, fine = spaces
    cellpose = {m.label: m for m in s.study.search.models}["cellpose_nuclei"]
    both = replace(cellpose, choices={"scale": (0.5, 1.0), "flow_threshold": (0.4, 0.6)})
    # scale changes the network's input (a forward pass); the flow threshold acts on its output
    assert post_params(both) == ["flow_threshold"]
    assert post_params(cellpose) == []
    # a family without a network: every searched parameter is post-processing
    assert set(post_params({m.label: m for m in fine.models}["classical"])) == {"threshold", "min_distance"}


def test_tried_pipelines_are_left_out_the_limit_holds_and_the_answer_is_deterministic(spaces):
    _, _, top, fine = spaces
    every = free_neighbours(top, fine)
    assert free_neighbours(top, fine) == every
    assert free_neighbours(top, fine, limit=2) == every[:2]
    tried = [pipeline_from_params(fine, every[0][1])]
    assert free_neighbours(top, fine, tried=tried) == every[1:]


def test_neighbour_queue_takes_at_most_half_the_trials_left_after_the_top_k(spaces):
    s, coarse, _, _ = spaces
    source = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    for p in TOP:
        source.enqueue_trial(p)
    source.optimize(lambda t: 1.0 if suggest_pipeline(t, coarse).model.label == "unet" else 0.5, n_trials=6)
    numbers = [0, 1]
    top = [pipeline_from_params(coarse, source.trials[n].params) for n in numbers]
    fine = refine_space(coarse, top, study_space=s.study.search)
    queue = neighbour_queue(source, coarse, fine, numbers, n_trials=12)
    assert 0 < len(queue) <= (12 - 2) // 2 and {n for n, _ in queue} <= set(numbers)
    assert neighbour_queue(source, coarse, fine, numbers, n_trials=3) == []
    # what the source stage already evaluated is not queued again
    done = {repr(pipeline_from_params(coarse, t.params).model_params) + repr(pipeline_from_params(coarse, t.params).steps)
            for t in source.trials}
    assert not any(repr(pipeline_from_params(fine, p).model_params) + repr(pipeline_from_params(fine, p).steps) in done
                   for _, p in queue)
