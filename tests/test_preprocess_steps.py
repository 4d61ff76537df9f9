"""Tests of the individual preprocessing steps, the step registry and labels."""
from __future__ import annotations

import numpy as np
import pytest
from skimage import data
from skimage.color import rgb2hed

from opsef_opt import preprocess as pp
from opsef_opt.params import ParamError, check_kwargs

SEED = 0


@pytest.fixture(scope="module")
def cell() -> np.ndarray:
    """Real fluorescence-like image, [0, 1] float32, 660 x 550."""
    return pp.normalize01(data.cell())


def _spots_on_gradient(size: int = 128, spot_radius: int = 3):
    """Linear background 0.2 -> 0.6 along X with +0.3 bright discs on a grid."""
    yy, xx = np.mgrid[:size, :size]
    image = 0.2 + 0.4 * xx / (size - 1)
    spots = np.zeros((size, size), bool)
    centers = [(y, x) for y in range(16, size, 32) for x in range(16, size, 32)]
    for cy, cx in centers:
        spots |= (yy - cy) ** 2 + (xx - cx) ** 2 <= spot_radius**2
    image = image + 0.3 * spots
    far = ~np.zeros_like(spots)
    for cy, cx in centers:
        far &= (yy - cy) ** 2 + (xx - cx) ** 2 > (spot_radius + 3) ** 2
    return image.astype(np.float32), centers, far


# --- registry --------------------------------------------------------------


def test_slots_and_expected_steps_registered():
    assert pp.SLOTS == (
        "color", "filter", "background", "projection", "histogram", "edges", "invert"
    )
    expected = {
        "color": ["grayscale", "none", "stain"],
        "filter": ["gaussian", "mean", "median", "none"],
        "background": ["constant", "none", "rolling_ball", "tophat"],
        "projection": ["max", "mean", "median", "none", "sum"],
        "histogram": ["clahe", "equalize", "none"],
        "edges": ["none", "roberts", "sobel"],
        "invert": ["invert", "none"],
    }
    for slot, names in expected.items():
        assert pp.steps_in_slot(slot) == names
    spec = pp.get_step("histogram", "clahe")
    assert spec.slot == "histogram" and spec.name == "clahe" and spec.planewise
    assert spec.func is pp.clahe
    assert spec.doc.startswith("Contrast-limited adaptive histogram")
    assert pp.STEPS.get("histogram.clahe") is spec


@pytest.mark.parametrize("key", pp.STEPS.names())
def test_params_accept_their_defaults(key):
    spec = pp.STEPS.get(key)
    defaults = {p.name: p.default for p in spec.params}
    assert check_kwargs(spec.params, defaults, key) == defaults
    assert spec.doc, f"{key} has no docstring"


def test_get_step_unknown_name_lists_slot_names():
    with pytest.raises(KeyError, match="gaussian, mean, median, none"):
        pp.get_step("filter", "bilateral")
    with pytest.raises(KeyError, match="slots are color, filter"):
        pp.get_step("denoise", "median")


def test_step_decorator_checks_declarations():
    from opsef_opt.params import Param

    def f(image, size=3):
        """Doc."""
        return image

    with pytest.raises(TypeError, match="not an argument"):
        pp.step("filter", "_bad1", params=(Param("width", "int", 3, 1, 9),))(f)
    with pytest.raises(TypeError, match="defaults to 3"):
        pp.step("filter", "_bad2", params=(Param("size", "int", 5, 1, 9),))(f)
    with pytest.raises(ValueError, match="unknown slot"):
        pp.step("denoise", "x")
    assert "_bad1" not in pp.steps_in_slot("filter")


# --- every step through the chain: shape, dtype, range ----------------------


@pytest.mark.parametrize("key", pp.STEPS.names())
def test_every_step_keeps_shape_float32_01(key, cell, ihc):
    spec = pp.STEPS.get(key)
    if spec.slot == "color":
        image, axes, want_shape, want_axes = ihc, "YXC", ihc.shape[:2], "YX"
        if spec.name == "none":
            want_shape, want_axes = ihc.shape, "YXC"
    elif spec.slot == "projection":
        image = np.stack([cell[:200, :300], cell[200:400, :300], cell[400:600, :300]])
        axes, want_shape, want_axes = "ZYX", image.shape[1:], "YX"
        if spec.name == "none":
            want_shape, want_axes = image.shape, "ZYX"
    else:
        image, axes, want_shape, want_axes = cell, "YX", cell.shape, "YX"
    out, out_axes = pp.run_chain(image, axes, [(spec.slot, spec.name, {})])
    assert out_axes == want_axes
    assert out.shape == want_shape
    assert out.dtype == np.float32
    assert np.isfinite(out).all()
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert out.max() == 1.0  # re-normalised, no real image becomes constant


@pytest.mark.parametrize(
    "func",
    [s.func for _, s in pp.STEPS.items() if s.planewise],
    ids=lambda f: f.__name__,
)
def test_planewise_functions_direct_call(func, cell):
    plane = cell[:100, :120]
    out = func(plane)
    assert out.shape == plane.shape and out.dtype == np.float32
    with pytest.raises(ValueError, match="2-D"):
        func(np.stack([plane, plane]))


# --- normalisation -----------------------------------------------------------


def test_normalize01_ranges_constant_and_nan():
    x = np.array([[100, 200], [300, 4095]], np.uint16)
    out = pp.normalize01(x)
    assert out.dtype == np.float32
    assert out.min() == 0.0 and out.max() == 1.0
    np.testing.assert_allclose(out.ravel(), (x.ravel() - 100) / 3995, rtol=1e-6)
    assert not pp.normalize01(np.full((4, 4), 7.0)).any()
    nan = np.array([[np.nan, 1.0], [3.0, np.inf]])
    np.testing.assert_array_equal(pp.normalize01(nan), [[0.0, 0.0], [1.0, 0.0]])
    assert not pp.normalize01(np.full((2, 2), np.nan)).any()
    assert pp.normalize01(np.array([True, False])).tolist() == [1.0, 0.0]


# --- filters -----------------------------------------------------------------


def test_median_removes_salt_noise(cell):
    clean = pp.gaussian_filter(cell, sigma=2)
    rng = np.random.default_rng(SEED)
    noisy = clean.copy()
    salt = rng.random(clean.shape) < 0.03
    noisy[salt] = 1.0
    out = pp.median_filter(noisy, size=3)
    err_before = np.abs(noisy - clean)[salt].mean()
    err_after = np.abs(out - clean)[salt].mean()
    assert err_after < 0.1 * err_before
    assert np.abs(out - clean).mean() < 0.01


@pytest.mark.parametrize(
    "func, kwargs",
    [(pp.mean_filter, {"size": 5}), (pp.gaussian_filter, {"sigma": 1.5})],
    ids=["mean", "gaussian"],
)
def test_mean_and_gaussian_smooth(func, kwargs):
    rng = np.random.default_rng(SEED)
    noise = (0.5 + 0.1 * rng.standard_normal((128, 128))).astype(np.float32)
    out = func(noise, **kwargs)
    assert out.var() < 0.2 * noise.var()
    assert abs(out.mean() - noise.mean()) < 1e-3


# --- background --------------------------------------------------------------


def test_constant_background_zeroes_low_percentile(cell):
    lifted = 0.3 + 0.5 * cell
    out = pp.subtract_constant(lifted, percentile=5.0)
    assert np.percentile(out, 5.0) <= 1e-6
    assert out.min() == 0.0
    np.testing.assert_allclose(
        out.max(), lifted.max() - np.percentile(lifted, 5.0), rtol=1e-5
    )


@pytest.mark.parametrize(
    "func, kwargs",
    [
        (pp.tophat, {"radius": 8}),
        (pp.rolling_ball, {"radius": 8}),  # exact (no shrinking below 11 px)
        (pp.rolling_ball, {"radius": 20}),  # shrunk by 2 as in ImageJ
        (pp.rolling_ball, {"radius": 20, "shrink": 1}),
    ],
    ids=["tophat8", "rolling_ball8", "rolling_ball20", "rolling_ball20_exact"],
)
def test_background_removal_flattens_gradient(func, kwargs):
    image, centers, far = _spots_on_gradient()
    out = func(image, **kwargs)
    assert out.shape == image.shape and out.dtype == np.float32
    assert out.min() >= 0.0
    # The 0.2 -> 0.6 gradient is gone ...
    assert out[far].mean() < 0.01
    assert out[far].max() < 0.05
    # ... while the spots keep (nearly) their full +0.3 contrast.
    peaks = np.array([out[cy, cx] for cy, cx in centers])
    assert peaks.min() > 0.25


def test_rolling_ball_shrink_close_to_exact(cell):
    crop = cell[:256, :256]
    exact = pp.rolling_ball(crop, radius=20, shrink=1)
    fast = pp.rolling_ball(crop, radius=20)
    assert pp.imagej_shrink_factor(20) == 2
    assert np.corrcoef(exact.ravel(), fast.ravel())[0, 1] > 0.98
    assert np.abs(exact - fast).mean() < 0.01


# --- histogram ---------------------------------------------------------------


@pytest.mark.parametrize(
    "func, kwargs",
    [
        (pp.equalize, {}),
        (pp.clahe, {}),
        (pp.clahe, {"clip_limit": 0.05, "tile_grid": 4}),
    ],
    ids=["equalize", "clahe_default", "clahe_tuned"],
)
def test_histogram_raises_contrast(func, kwargs, cell):
    low = 0.4 + 0.1 * cell  # only a tenth of the range used
    out = func(low, **kwargs)
    assert out.shape == low.shape and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert out.std() > 2 * low.std()
    # Monotone-ish: bright pixels stay brighter on average.
    assert out[cell > 0.5].mean() > out[cell < 0.2].mean()


def test_clahe_tile_grid_tiny_image():
    x = np.random.default_rng(SEED).random((10, 12)).astype(np.float32)
    assert pp.clahe(x, tile_grid=64).shape == x.shape


# --- edges, invert -----------------------------------------------------------


@pytest.mark.parametrize("func", [pp.sobel, pp.roberts], ids=["sobel", "roberts"])
def test_edges_peak_on_edge(func):
    step = np.zeros((64, 64), np.float32)
    step[:, 32:] = 1.0
    out = func(step)
    profile = out[8:-8].mean(axis=0)
    assert int(np.argmax(profile)) in (31, 32)
    assert profile[:28].max() < 1e-6 and profile[36:].max() < 1e-6


def test_invert_flips(cell):
    np.testing.assert_array_equal(pp.invert(cell), 1.0 - cell)
    out, _ = pp.run_chain(data.cell(), "YX", [("invert", "invert", {})])
    np.testing.assert_allclose(out, 1.0 - cell, atol=1e-6)


# --- colour ------------------------------------------------------------------


@pytest.mark.parametrize("index, name", enumerate(pp.STAINS))
def test_stain_matches_rgb2hed_channel(index, name, ihc):
    out, axes = pp.run_chain(ihc, "YXC", [("color", "stain", {"stain": name})])
    assert axes == "YX" and out.shape == ihc.shape[:2]
    ref = rgb2hed(ihc)[..., index]
    assert np.corrcoef(out.ravel(), ref.ravel())[0, 1] > 0.99


def test_stain_rejects_unknown_and_non_rgb(ihc):
    with pytest.raises(ParamError):
        pp.run_chain(ihc, "YXC", [("color", "stain", {"stain": "dapi"})])
    with pytest.raises(ValueError, match="needs RGB"):
        pp.stain(ihc[..., 0], "YX")


# --- labels ------------------------------------------------------------------


def test_step_label():
    assert pp.step_label("median", {"size": 3}) == "median(size=3)"
    assert (
        pp.step_label("clahe", {"tile_grid": 8, "clip_limit": 0.02})
        == "clahe(clip_limit=0.02,tile_grid=8)"
    )
    assert pp.step_label("none", {}) == "none"
    assert pp.step_label("none") == "none"
    assert pp.step_label("sobel", {}) == "sobel"
    assert pp.step_label("stain", {"stain": "dab"}) == "stain(stain=dab)"
    sigma = {"sigma": np.float64(1.0)}
    assert pp.step_label("gaussian", sigma) == "gaussian(sigma=1.0)"
    assert pp.step_label("x", {"a": 0.1 + 0.2}) != pp.step_label("x", {"a": 0.3})
    assert pp.step_label("x", {"flag": True, "n": None}) == "x(flag=true,n=null)"
