"""The Pipeline value: saved, loaded and run the way the search ran it (reshape included)."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import tifffile

from opsef_opt.config import ConfigError, ReshapeSpec
from opsef_opt.io.reshape import bin_image
from opsef_opt.pipeline import Pipeline, guess_axes
from opsef_opt.preprocess import run_chain
from opsef_opt.segment import load_segmenter

from conftest import DEMO

NODE = {
    "preprocess": [{"slot": "filter", "name": "gaussian", "sigma": 1.0},
                   {"slot": "histogram", "name": "clahe", "clip_limit": 0.02}],
    "model": {"family": "classical", "params": {"threshold": "otsu", "min_distance": 3}},
}


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return tifffile.imread(DEMO / "images" / "dsb2018_256.tif")


def test_calling_a_pipeline_is_the_chain_then_the_model(image):
    p = Pipeline.from_dict(NODE)
    pre, axes = run_chain(image, "YX", p.steps)
    direct = load_segmenter("classical")(pre, axes, **p.model_params).labels
    labels = p(image)
    assert labels.dtype == np.int32 and labels.max() > 10
    np.testing.assert_array_equal(labels, direct)


def test_reshape_is_always_applied(image):
    p = Pipeline.from_dict({**NODE, "reshape": {"bin": 2}})
    result = p.run(image)
    assert result.labels.shape == (image.shape[0] // 2, image.shape[1] // 2)
    np.testing.assert_array_equal(result.input, bin_image(image, "YX", 2))
    np.testing.assert_array_equal(result.labels, Pipeline.from_dict(NODE)(bin_image(image, "YX", 2)))


def test_prepared_items_run_through_preprocess_and_segment_reshape_once(image):
    """The search's items are reshaped at load: preprocess + segment on them equals run on the file's array."""
    from opsef_opt.config_images import images_spec
    from opsef_opt.io.dataset import load_items

    p = Pipeline.from_dict({**NODE, "reshape": {"bin": 2, "scale": 1.5}})
    spec = images_spec("images", {"files": [str(DEMO / "images" / "dsb2018_256.tif")]}, DEMO)
    (item,), problems = load_items(spec, p.reshape)
    assert not problems
    data, axes = p.prepare(image)
    np.testing.assert_array_equal(item.data, data)
    assert axes == item.axes == "YX"
    labels = p.segment(*p.preprocess(item.data, item.axes)).labels
    np.testing.assert_array_equal(labels, p(image))
    assert labels.shape == item.data.shape != image.shape


def test_yaml_round_trip_keeps_everything(tmp_path, image):
    p = Pipeline.from_dict({**NODE, "reshape": {"bin": 2, "scale": 1.5}})
    path = p.to_yaml(tmp_path / "p.yaml", provenance={"study": "x"}, header="a pipeline\nedit freely")
    text = path.read_text()
    assert text.startswith("# a pipeline\n# edit freely\n") and "study: x" in text
    back = Pipeline.from_yaml(path)
    assert back == p and back.reshape == ReshapeSpec(bin=2, scale=1.5)
    np.testing.assert_array_equal(back(image), p(image))


def test_bad_files_are_named(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {family: classical, params: {threshold: nonsense}}\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        Pipeline.from_yaml(bad)
    (tmp_path / "list.yaml").write_text("- 1\n")
    with pytest.raises(ConfigError, match="list.yaml.*mapping"):
        Pipeline.from_yaml(tmp_path / "list.yaml")
    with pytest.raises(ConfigError, match="missing.yaml"):
        Pipeline.from_yaml(tmp_path / "missing.yaml")


def test_axes_are_guessed_and_checked(image):
    assert [guess_axes(np.zeros(s)) for s in [(5, 5), (5, 5, 3), (4, 5, 5)]] == ["YX", "YXC", "ZYX"]
    p = Pipeline.from_dict(NODE)
    with pytest.raises(ValueError, match="axes 'ZYX'"):
        p(image, axes="ZYX")
    rgb = np.stack([image] * 3, axis=-1)
    with pytest.raises(ValueError, match="color step"):  # the model takes grey images: say how to get one
        p(rgb)
    grey = replace(p, steps=(("color", "grayscale", {}),) + p.steps,
                   step_labels=(("color", "grayscale"),) + p.step_labels)
    assert grey(rgb).shape == image.shape
