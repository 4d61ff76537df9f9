"""Tests of run_chain: validation, normalisation, plane mapping and axes."""
from __future__ import annotations

import numpy as np
import pytest
from skimage import data
from skimage.color import rgb2gray
from skimage.filters import gaussian

from opsef_opt import preprocess as pp
from opsef_opt.params import ParamError


@pytest.fixture(scope="module")
def cell_u8() -> np.ndarray:
    return data.cell()


@pytest.fixture(scope="module")
def stack(cell_u8) -> np.ndarray:
    """ZYX uint8 stack of three different 200 x 250 crops of the cell image."""
    crops = [cell_u8[:200, :250], cell_u8[200:400, 100:350], cell_u8[450:650, 300:550]]
    return np.stack(crops)


# --- validation --------------------------------------------------------------


def test_out_of_order_slot_names_the_slot(cell_u8):
    steps = [("histogram", "clahe", {}), ("filter", "median", {"size": 3})]
    with pytest.raises(ValueError, match="slot 'filter' is out of order"):
        pp.run_chain(cell_u8, "YX", steps)


def test_repeated_and_unknown_slot(cell_u8):
    with pytest.raises(ValueError, match="slot 'filter' appears twice"):
        pp.run_chain(cell_u8, "YX", [("filter", "median", {}), ("filter", "mean", {})])
    with pytest.raises(ValueError, match="unknown slot 'denoise'"):
        pp.run_chain(cell_u8, "YX", [("denoise", "median", {})])


def test_unknown_name_lists_slot_names(cell_u8):
    match = "available in slot 'background': constant, none, rolling_ball, tophat"
    with pytest.raises(KeyError, match=match):
        pp.run_chain(cell_u8, "YX", [("background", "wavelet", {})])


def test_params_validated_before_work(cell_u8):
    with pytest.raises(ParamError, match="filter.median.size"):
        pp.run_chain(cell_u8, "YX", [("filter", "median", {"size": 4})])
    with pytest.raises(ParamError, match="unknown parameter"):
        pp.run_chain(cell_u8, "YX", [("filter", "gaussian", {"size": 3})])
    # An invalid later step fails before the expensive first one runs.
    with pytest.raises(ParamError):
        pp.validate_chain(
            [("filter", "median", {"size": 51}), ("invert", "invert", {"x": 1})]
        )


def test_bad_axes(cell_u8, ihc):
    with pytest.raises(ValueError, match="axes must be one of"):
        pp.run_chain(cell_u8, "XY", [])
    with pytest.raises(ValueError, match="dimensions"):
        pp.run_chain(cell_u8, "ZYX", [])
    with pytest.raises(ValueError, match="expected 3"):
        pp.run_chain(np.zeros((8, 8, 4)), "YXC", [])


# --- normalisation -----------------------------------------------------------


def test_empty_chain_only_normalises(cell_u8):
    out, axes = pp.run_chain(cell_u8, "YX", [])
    assert axes == "YX" and out.dtype == np.float32
    np.testing.assert_array_equal(out, pp.normalize01(cell_u8))
    nones = [("filter", "none", {}), ("invert", "none", {})]
    out2, _ = pp.run_chain(cell_u8, "YX", nones)
    np.testing.assert_array_equal(out2, out)


def test_uint16_12bit_matches_uint8(cell_u8):
    smooth = gaussian(cell_u8.astype(float) / 255, sigma=1)
    as_12bit = np.round(smooth * 4095).astype(np.uint16)  # max 4095 of 65535
    as_8bit = np.round(smooth * 255).astype(np.uint8)
    steps = [
        ("filter", "gaussian", {"sigma": 1.0}),
        ("background", "tophat", {"radius": 15}),
        ("histogram", "clahe", {"clip_limit": 0.02}),
    ]
    out16, _ = pp.run_chain(as_12bit, "YX", steps)
    out8, _ = pp.run_chain(as_8bit, "YX", steps)
    assert out16.max() == 1.0  # not dark, unlike dividing by 65535
    assert np.abs(out16 - out8).mean() < 0.01
    assert np.corrcoef(out16.ravel(), out8.ravel())[0, 1] > 0.99


# --- plane mapping, projection, colour ----------------------------------------


def test_planewise_on_stack_equals_per_plane(stack):
    steps = [
        ("filter", "gaussian", {"sigma": 2.0}),
        ("background", "tophat", {"radius": 10}),
    ]
    out, axes = pp.run_chain(stack, "ZYX", steps)
    assert axes == "ZYX" and out.shape == stack.shape
    expected = pp.normalize01(stack)  # one min-max for the whole stack
    expected = pp.normalize01(np.stack([pp.gaussian_filter(p, 2.0) for p in expected]))
    expected = pp.normalize01(np.stack([pp.tophat(p, radius=10) for p in expected]))
    np.testing.assert_allclose(out, expected, atol=1e-6)


@pytest.mark.parametrize(
    "name, reduce",
    [("max", np.max), ("sum", np.sum), ("mean", np.mean), ("median", np.median)],
)
def test_projection_equals_numpy(name, reduce):
    rng = np.random.default_rng(1)
    zyx = rng.integers(0, 4096, size=(5, 16, 20)).astype(np.uint16)
    out, axes = pp.run_chain(zyx, "ZYX", [("projection", name, {})])
    assert axes == "YX" and out.shape == (16, 20)
    expected = pp.normalize01(reduce(pp.normalize01(zyx), axis=0))
    np.testing.assert_allclose(out, expected, atol=1e-6)


def test_projection_without_z_is_identity(cell_u8):
    out, axes = pp.run_chain(cell_u8, "YX", [("projection", "max", {})])
    assert axes == "YX"
    np.testing.assert_array_equal(out, pp.normalize01(cell_u8))


def test_rgb_grayscale_path(ihc):
    steps = [("color", "grayscale", {}), ("filter", "gaussian", {"sigma": 1.0})]
    out, axes = pp.run_chain(ihc, "YXC", steps)
    assert axes == "YX" and out.shape == ihc.shape[:2] and out.dtype == np.float32
    gray = pp.normalize01(rgb2gray(pp.normalize01(ihc)))
    expected = pp.normalize01(pp.gaussian_filter(gray, sigma=1.0))
    np.testing.assert_allclose(out, expected, atol=1e-6)


def test_rgb_without_color_step_filters_per_channel(ihc):
    out, axes = pp.run_chain(ihc, "YXC", [("filter", "median", {"size": 3})])
    assert axes == "YXC" and out.shape == ihc.shape
    rgb = pp.normalize01(ihc)
    expected = np.stack([pp.median_filter(rgb[..., c], 3) for c in range(3)], axis=-1)
    np.testing.assert_allclose(out, pp.normalize01(expected), atol=1e-6)


def test_color_step_on_grayscale_is_clear_error(cell_u8):
    match = "image has axes YX and the color step 'grayscale' needs RGB"
    with pytest.raises(ValueError, match=match):
        pp.run_chain(cell_u8, "YX", [("color", "grayscale", {})])
    with pytest.raises(ValueError, match="axes ZYX and the color step 'stain' needs"):
        pp.run_chain(np.zeros((2, 8, 8)), "ZYX", [("color", "stain", {})])
    out, axes = pp.run_chain(cell_u8, "YX", [("color", "none", {})])
    assert axes == "YX"


def test_full_chain_on_zyxc_stack(ihc):
    zyxc = np.stack([ihc[:128, :160], ihc[128:256, :160], ihc[256:384, :160]])
    steps = [
        ("color", "stain", {"stain": "hematoxylin"}),
        ("filter", "median", {"size": 3}),
        ("background", "rolling_ball", {"radius": 30}),
        ("projection", "max", {}),
        ("histogram", "clahe", {"clip_limit": 0.02, "tile_grid": 4}),
        ("edges", "sobel", {}),
        ("invert", "invert", {}),
    ]
    out, axes = pp.run_chain(zyxc, "ZYXC", steps)
    assert axes == "YX" and out.shape == (128, 160)
    assert out.dtype == np.float32 and out.min() == 0.0 and out.max() == 1.0
