"""Before any trial: images that no declared pipeline can feed to a model are named with the fix."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from opsef_opt.config import ModelSpec, SearchSpec, StepOption
from opsef_opt.search.preflight import InputError, chain_axes, check_inputs


@dataclass
class _Item:
    name: str
    axes: str
    data: np.ndarray


def _option(slot: str, name: str) -> StepOption:
    return StepOption(slot, name, {}, {}, name)


def _space(colors=("none",), projections=("none",), families=("classical",)) -> SearchSpec:
    pre = {"color": tuple(_option("color", c) for c in colors),
           "projection": tuple(_option("projection", p) for p in projections)}
    models = tuple(ModelSpec(f, f, {}, {}, {}, {}) for f in families)
    return SearchSpec("grid", pre, models)


GREY = _Item("grey", "YX", np.zeros((32, 32), np.uint8))
RGB = _Item("he", "YXC", np.zeros((32, 32, 3), np.uint8))
STACK = _Item("stack", "ZYX", np.zeros((4, 32, 32), np.uint8))


def test_chain_axes():
    assert chain_axes("YXC", "grayscale", "none") == ("YX", "")
    assert chain_axes("ZYX", "none", "max") == ("YX", "")
    assert chain_axes("YX", "none", "max") == ("YX", "")  # projection is the identity without Z
    assert chain_axes("YX", "stain", "none")[0] is None


def test_rgb_image_in_a_grey_study_names_the_image_and_the_fix():
    with pytest.raises(InputError, match=r"image he \(RGB image, axes YXC\) .* add a color step such as grayscale"):
        check_inputs([GREY, RGB], _space())


def test_grey_image_with_only_colour_steps():
    with pytest.raises(InputError, match=r"image grey .* add 'none' to study.search.preprocess.color"):
        check_inputs([GREY, RGB], _space(colors=("grayscale",)))


def test_stack_without_projection():
    with pytest.raises(InputError, match=r"image stack \(3D stack.* add a projection step"):
        check_inputs([STACK], _space())


def test_unsupported_channel_count_names_the_key():
    two = _Item("two", "YXC", np.zeros((32, 32, 2), np.uint8))
    with pytest.raises(InputError, match=r"image two: .*2 channels.*study.images.channel"):
        check_inputs([two], _space(colors=("grayscale",)))


def test_partly_usable_chains_are_one_warning_each():
    notes = check_inputs([GREY, RGB], _space(colors=("none", "grayscale")))
    assert len(notes) == 2
    assert any("color=grayscale" in n and "1 image(s) [grey]" in n and "needs an RGB image" in n for n in notes)
    assert any("color=none" in n and "1 image(s) [he]" in n and "needs YX, gets YXC" in n for n in notes)


def test_usable_study_gives_no_warning():
    assert check_inputs([GREY], _space(projections=("none", "max"))) == []
    assert check_inputs([STACK], _space(projections=("max",))) == []
