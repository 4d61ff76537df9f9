"""Broken-but-readable images and ground truth are dealt with at load, before any trial.

Degenerate images (NaN, constant, too small) are reported and left out;
float images far outside float32's range are rescaled in float64 and segment
like the original; a study that declares labels stops (ConfigError, exit 2)
when a training image has none, naming the file looked for.
"""
from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import tifffile

from opsef_opt.config import ConfigError, ImagesSpec, ReshapeSpec
from opsef_opt.io.dataset import MIN_IMAGE_SIZE, load_items
from opsef_opt.preprocess import run_chain
from opsef_opt.segment import load_segmenter

from conftest import DEMO, TEST_CONF, run_cli

REAL = DEMO / "images" / "dsb2018_256.tif"
REAL_LABELS = DEMO / "labels" / "dsb2018_256.tif"


def spec(folder: Path, labels: Path | None = None, **kw) -> ImagesSpec:
    base = ImagesSpec(folder=folder, pattern="*.tif", files=(), format="auto", channel=None, axes=None, z=None,
                      lif_image=None, lif_t=0, lif_mosaic=None, labels_folder=labels,
                      labels_pattern="{stem}.tif", train=None)
    return replace(base, **kw)


def _real() -> np.ndarray:
    return tifffile.imread(REAL)


def _some_nan() -> np.ndarray:
    img = _real().astype(np.float32)
    img[0, :3] = np.nan
    img[5, 5] = np.inf
    return img


# ------------------------------------------------------------------ degenerate images


@pytest.mark.parametrize("name, make, reason", [
    ("all_nan", lambda: np.full((64, 64), np.nan, np.float32),
     "every pixel is NaN or infinite (4096 NaN, 0 infinite)"),
    ("some_nan", _some_nan,
     "4 of 65536 pixels are NaN or infinite (3 NaN, 1 infinite); replace them with finite values and save the "
     "image again"),
    ("all_zero", lambda: np.zeros((64, 64), np.uint8),
     "every pixel has the value 0; a constant image has nothing to segment"),
    ("constant_float", lambda: np.full((64, 64), 0.25), "every pixel has the value 0.25"),
    ("one_pixel", lambda: np.full((1, 1), 7, np.uint16),
     f"1 x 1 px (Y x X) is smaller than the minimum of {MIN_IMAGE_SIZE} x {MIN_IMAGE_SIZE} px"),
    ("one_row", lambda: np.arange(5000, dtype=np.uint16)[None, :],
     f"1 x 5000 px (Y x X) is smaller than the minimum of {MIN_IMAGE_SIZE} x {MIN_IMAGE_SIZE} px"),
    ("one_column", lambda: np.arange(5000, dtype=np.uint16)[:, None],
     f"5000 x 1 px (Y x X) is smaller than the minimum of {MIN_IMAGE_SIZE} x {MIN_IMAGE_SIZE} px"),
])
def test_degenerate_image_is_reported_and_left_out(tmp_path, name, make, reason):
    shutil.copy(REAL, tmp_path / "a_good.tif")
    tifffile.imwrite(tmp_path / f"{name}.tif", make(), photometric="minisblack")
    items, problems = load_items(spec(tmp_path), ReshapeSpec())
    assert [i.name for i in items] == ["a_good"]
    assert len(problems) == 1
    assert problems[0].startswith(f"image {name}.tif left out: {reason}"), problems[0]


def test_image_too_small_after_binning_is_left_out(tmp_path):
    tifffile.imwrite(tmp_path / "small.tif", _real()[:20, :20])
    items, problems = load_items(spec(tmp_path), ReshapeSpec(bin=2))
    assert items == []
    assert problems == [f"image small.tif left out: 10 x 10 px (Y x X) after study.reshape is smaller than the "
                        f"minimum of {MIN_IMAGE_SIZE} x {MIN_IMAGE_SIZE} px"]


def test_only_degenerate_images_left_means_no_items(tmp_path):
    tifffile.imwrite(tmp_path / "blank.tif", np.zeros((32, 32), np.uint8))
    items, problems = load_items(spec(tmp_path), ReshapeSpec())
    assert items == [] and problems == ["image blank.tif left out: every pixel has the value 0; a constant image "
                                        "has nothing to segment"]


@pytest.mark.parametrize("factor", [1e302, 1e-302, 1.0])
def test_huge_and_tiny_float64_segment_like_the_original(tmp_path, factor):
    original = _real()
    tifffile.imwrite(tmp_path / "a_original.tif", original)
    tifffile.imwrite(tmp_path / "b_scaled.tif", original.astype(np.float64) * factor)
    items, problems = load_items(spec(tmp_path), ReshapeSpec())
    assert problems == [] and [i.name for i in items] == ["a_original", "b_scaled"]
    scaled = items[1].data
    assert scaled.dtype == np.float32 and np.isfinite(scaled).all()
    assert (scaled.min(), scaled.max()) == (0.0, 1.0)
    model = load_segmenter("classical")
    counts, masks = [], []
    for item in items:
        pre, axes = run_chain(item.data, item.axes, [("filter", "median", {"size": 3})])
        labels = model(pre, axes, threshold="otsu", min_distance=5).labels
        counts.append(int(labels.max()))
        masks.append(labels > 0)
    assert counts[0] > 20 and counts[1] == counts[0]
    assert np.mean(masks[0] == masks[1]) > 0.999


def test_float_rescale_keeps_tiles_of_one_image_alike(tmp_path):
    img = _real().astype(np.float64) * 1e302
    tifffile.imwrite(tmp_path / "huge.tif", img)
    whole = load_items(spec(tmp_path), ReshapeSpec())[0][0].data
    tiles, _ = load_items(spec(tmp_path), ReshapeSpec(tile_size=(128, 128)))
    for t in tiles:
        y, x = (int(p[1:]) for p in t.name.rsplit("/", 1)[1].replace("tile_", "").split("_"))
        np.testing.assert_array_equal(t.data, whole[y:y + 128, x:x + 128])


# ------------------------------------------------------------------ ground truth


def _pair(tmp_path: Path) -> tuple[Path, Path]:
    images, labels = tmp_path / "images", tmp_path / "labels"
    shutil.copytree(DEMO / "images", images)
    shutil.copytree(DEMO / "labels", labels)
    return images, labels


def test_missing_label_names_image_and_file_looked_for(tmp_path):
    images, labels = _pair(tmp_path)
    (labels / "mitocheck_hela.tif").unlink()
    with pytest.raises(ConfigError) as e:
        load_items(spec(images, labels, labels_pattern="{stem}.tif"), ReshapeSpec())
    msg = str(e.value)
    assert msg.startswith(f"study.images.labels: 1 training image(s) have no label file in {labels} "
                          f"(pattern '{{stem}}.tif'): mitocheck_hela (looked for mitocheck_hela.tif). Every "
                          f"training image"), msg
    assert "\n" not in msg


def test_missing_label_of_an_image_outside_train_is_allowed(tmp_path):
    images, labels = _pair(tmp_path)
    (labels / "mitocheck_hela.tif").unlink()
    items, problems = load_items(spec(images, labels, train=("dsb*",)), ReshapeSpec())
    assert [i.name for i in items] == ["dsb2018_256"] and problems == []


def test_missing_labels_are_listed_with_a_count(tmp_path):
    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    labels.mkdir()
    for i in range(8):
        shutil.copy(REAL, images / f"img{i}.tif")
    shutil.copy(REAL_LABELS, labels / "img0.tif")
    with pytest.raises(ConfigError) as e:
        load_items(spec(images, labels), ReshapeSpec())
    msg = str(e.value)
    assert "7 training image(s) have no label file" in msg
    assert "img1 (looked for img1.tif), img2 (looked for img2.tif)" in msg and "and 2 more" in msg
    assert "img7" not in msg


def test_wrong_shape_label_stops_the_study(tmp_path):
    images, labels = _pair(tmp_path)
    tifffile.imwrite(labels / "mitocheck_hela.tif", np.zeros((100, 100), np.uint16))
    with pytest.raises(ConfigError) as e:
        load_items(spec(images, labels), ReshapeSpec())
    assert ("study.images.labels: label image mitocheck_hela.tif of mitocheck_hela.tif has shape (100, 100); "
            "expected (364, 260) (the image's Y x X, one 2-D label image)") in str(e.value)


def test_labels_pattern_matching_nothing_says_so(tmp_path):
    images, labels = _pair(tmp_path)
    with pytest.raises(ConfigError) as e:
        load_items(spec(images, labels, labels_pattern="{stem}_labels.tif"), ReshapeSpec())
    msg = str(e.value)
    assert msg.startswith(f"study.images.labels: no label file found for any of the 2 training image(s) in "
                          f"{labels} (pattern '{{stem}}_labels.tif'): dsb2018_256 (looked for "
                          f"dsb2018_256_labels.tif), mitocheck_hela (looked for mitocheck_hela_labels.tif); "
                          f"the folder holds dsb2018_256.tif, mitocheck_hela.tif"), msg


def test_exclude_keeps_label_files_out_of_the_images(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    for stem in ("dsb2018_256", "mitocheck_hela"):
        shutil.copy(DEMO / "images" / f"{stem}.tif", folder / f"{stem}.tif")
        shutil.copy(DEMO / "labels" / f"{stem}.tif", folder / f"{stem}_labels.tif")
    s = spec(folder, folder, labels_pattern="{stem}_labels.tif")
    with pytest.raises(ConfigError) as e:  # the label files are read as images without labels of their own
        load_items(s, ReshapeSpec())
    assert ("dsb2018_256_labels.tif is the label file of dsb2018_256.tif, not an image: leave label files out with "
            "study.images.exclude: ['*_labels.tif']") in str(e.value)
    items, problems = load_items(replace(s, exclude=("*_labels.tif",)), ReshapeSpec())
    assert problems == [] and [i.name for i in items] == ["dsb2018_256", "mitocheck_hela"]
    assert all(i.truth is not None and i.truth.shape == i.data.shape for i in items)


def test_exclude_everything_is_named(tmp_path):
    shutil.copy(REAL, tmp_path / "a.tif")
    with pytest.raises(ConfigError, match=r"no image matches .* once study.images.exclude \['\*'\] is applied"):
        load_items(spec(tmp_path, exclude=("*",)), ReshapeSpec())


def _ctc(tmp_path: Path) -> tuple[Path, Path]:
    """Cell Tracking Challenge layout: 01/t013.tif <-> 01_GT/SEG/man_seg013.tif."""
    images, labels = tmp_path / "01", tmp_path / "01_GT" / "SEG"
    images.mkdir()
    labels.mkdir(parents=True)
    for t in (13, 14):
        shutil.copy(REAL, images / f"t{t:03d}.tif")
        shutil.copy(REAL_LABELS, labels / f"man_seg{t:03d}.tif")
    return images, labels


@pytest.mark.parametrize("regex, pattern", [(r"t(\d+)", "man_seg{1}.tif"),
                                            (r"t(?P<frame>\d{3})", "man_seg{frame}.tif")])
def test_cell_tracking_challenge_names(tmp_path, regex, pattern):
    images, labels = _ctc(tmp_path)
    s = spec(images, labels, labels_regex=regex, labels_pattern=pattern)
    items, problems = load_items(s, ReshapeSpec())
    assert problems == [] and [i.name for i in items] == ["t013", "t014"]
    truth = tifffile.imread(REAL_LABELS)
    assert all(np.array_equal(i.truth, truth) for i in items)
    shutil.copy(REAL, images / "t015.tif")  # frame without a man_seg file
    shutil.copy(REAL, images / "overview.tif")  # no frame number at all
    with pytest.raises(ConfigError) as e:
        load_items(s, ReshapeSpec())
    msg = str(e.value)
    assert "2 training image(s) have no label file" in msg
    assert (f"overview (looked for no file name: 'overview' does not match labels.regex {regex!r}), "
            f"t015 (looked for man_seg015.tif)") in msg


# ------------------------------------------------------------------ through the CLI


def test_cli_missing_label_exits_2_before_any_trial(tmp_path):
    images, labels = _pair(tmp_path)
    (labels / "mitocheck_hela.tif").unlink()
    studies = tmp_path / "studies"
    r = run_cli("study=tiny", f"hydra.searchpath=[file://{TEST_CONF}]", f"study.images.folder={images}",
                f"study.images.labels.folder={labels}", f"studies_dir={studies}", "n_trials=1",
                cwd=tmp_path, timeout=120)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "Traceback" not in r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("opsef-opt:")]
    assert len(lines) == 1, r.stderr
    line = lines[0].replace("opsef-opt: config error: ", "opsef-opt: ", 1)
    assert line.startswith(f"opsef-opt: study.images.labels: 1 training image(s) have no label file in {labels} "
                           f"(pattern '{{stem}}.tif'): mitocheck_hela (looked for mitocheck_hela.tif)."), lines[0]
    # stopped before any trial: nothing written for the study (no folder, no Optuna storage)
    assert not (studies / "tiny").exists()
    assert "Trial" not in r.stdout + r.stderr


def test_cell_tracking_challenge_overrides_validate(tmp_path):
    """The regex + pattern of the README, given as command-line overrides, reach the loader."""
    from hydra import compose, initialize_config_module

    from opsef_opt.config import validate
    from opsef_opt.resolvers import register_resolvers

    images, labels = _ctc(tmp_path)
    register_resolvers()
    with initialize_config_module(config_module="opsef_opt.conf", version_base="1.3"):
        cfg = compose(config_name="config", overrides=[
            "study=tiny", f"hydra.searchpath=[file://{TEST_CONF}]", f"study.images.folder={images}",
            f"study.images.labels.folder={labels}", r"+study.images.labels.regex='t(\d+)'",
            "+study.images.labels.pattern='man_seg{1}.tif'"])
    s = validate(cfg, base=tmp_path)
    assert s.study.images.labels_regex == r"t(\d+)"
    items, problems = load_items(s.study.images, s.study.reshape)
    assert problems == [] and all(i.truth is not None for i in items)
