"""From a study's image declaration to the items trials run on (reading + reshaping + labels)."""
from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import tifffile

from opsef_opt.config import ConfigError, ImagesSpec, ReshapeSpec
from opsef_opt.io.dataset import load_items

from conftest import DEMO, shared


def spec(folder: Path, pattern: str = "*.tif", labels: Path | None = None, **kw) -> ImagesSpec:
    base = ImagesSpec(folder=folder, pattern=pattern, files=(), format="auto", channel=None, axes=None, z=None,
                      lif_image=None, lif_t=0, lif_mosaic=None, labels_folder=labels,
                      labels_pattern="{stem}.tif", train=None)
    return replace(base, **kw)


DEMO_SPEC = spec(DEMO / "images", labels=DEMO / "labels")


def test_demo_images_with_labels():
    items, problems = load_items(DEMO_SPEC, ReshapeSpec())
    assert problems == []
    assert [i.name for i in items] == ["dsb2018_256", "mitocheck_hela"]
    assert all(i.truth is not None and i.truth.shape == i.data.shape for i in items)
    assert items[1].data.shape == (364, 260)  # rows x columns as stored, never swapped
    assert items[0].fingerprint != items[1].fingerprint


def test_tiles_cut_image_and_labels_identically_on_non_square_image():
    whole = {i.name: i for i in load_items(DEMO_SPEC, ReshapeSpec())[0]}
    items, _ = load_items(DEMO_SPEC, ReshapeSpec(tile_size=(128, 128), tile_overlap=16))
    mito = [i for i in items if i.image == "mitocheck_hela"]
    ref = whole["mitocheck_hela"]
    h, w = ref.data.shape
    assert len(mito) >= 6  # at least 2 x 3 tiles of 128 px with 16 px overlap
    for it in mito:
        y, x = (int(p[1:]) for p in it.name.rsplit("/", 1)[1].replace("tile_", "").split("_"))
        np.testing.assert_array_equal(it.data, ref.data[y:y + 128, x:x + 128])
        np.testing.assert_array_equal(it.truth, ref.truth[y:y + 128, x:x + 128])
    covered = np.zeros((h, w), bool)
    for it in mito:
        y, x = (int(p[1:]) for p in it.name.rsplit("/", 1)[1].replace("tile_", "").split("_"))
        covered[y:y + 128, x:x + 128] = True
    assert covered.all()
    assert {i.image for i in items} == {"dsb2018_256", "mitocheck_hela"}


def test_binning_applies_to_labels_too():
    items, _ = load_items(DEMO_SPEC, ReshapeSpec(bin=2))
    dsb = items[0]
    assert dsb.data.shape == (128, 128) and dsb.truth.shape == (128, 128)
    assert dsb.truth.dtype.kind in "ui" and set(np.unique(dsb.truth)) <= set(np.unique(
        tifffile.imread(DEMO / "labels" / "dsb2018_256.tif")))


def test_z_substacks_keep_the_last_block():
    folder = shared("raw")
    items, problems = load_items(spec(folder, "nuclei_3d_stack.tif", axes="ZYX"), ReshapeSpec(substack=10))
    assert problems == []
    assert [i.name.split("/")[-1] for i in items] == ["z000-009", "z010-019", "z020-029", "z030-036"]
    assert [i.data.shape[0] for i in items] == [10, 10, 10, 7]
    assert all(i.axes == "ZYX" for i in items)


def test_lif_mosaic_tiles_become_items():
    items, problems = load_items(spec(shared("lif"), "tilescan*.lif", channel=1), ReshapeSpec())
    assert problems == []
    assert len(items) == 4 and all(i.axes == "ZYX" and i.data.shape == (3, 64, 64) for i in items)
    assert len({i.fingerprint for i in items}) == 4


def test_train_subset_and_unmatched_entries_reported():
    items, problems = load_items(replace(DEMO_SPEC, train=("dsb*", "nope")), ReshapeSpec())
    assert [i.name for i in items] == ["dsb2018_256"]
    assert any("nope" in p for p in problems)


def test_unreadable_file_left_out_and_missing_labels_stop_the_study(tmp_path):
    images, labels = tmp_path / "images", tmp_path / "labels"
    shutil.copytree(DEMO / "images", images)
    shutil.copytree(DEMO / "labels", labels)
    (images / "zz_broken.tif").write_bytes(b"II*\x00garbage")
    items, problems = load_items(spec(images, labels=labels), ReshapeSpec())
    assert [i.name for i in items] == ["dsb2018_256", "mitocheck_hela"]
    assert all(i.truth is not None for i in items)
    assert len(problems) == 1 and "zz_broken.tif" in problems[0]
    # a training image without its label file: no silent switch to the proxy score
    (labels / "mitocheck_hela.tif").unlink()
    with pytest.raises(ConfigError, match=r"1 training image\(s\) have no label file .*mitocheck_hela "
                                          r"\(looked for mitocheck_hela.tif\)"):
        load_items(spec(images, labels=labels), ReshapeSpec())


def test_images_outside_train_may_lack_labels(tmp_path):
    labels = tmp_path / "labels"
    labels.mkdir()
    shutil.copy(DEMO / "labels" / "dsb2018_256.tif", labels)
    s = spec(DEMO / "images", labels=labels, train=("dsb*",))
    items, problems = load_items(s, ReshapeSpec())
    assert [i.name for i in items] == ["dsb2018_256"] and items[0].truth is not None and problems == []
    items, problems = load_items(s, ReshapeSpec(), train_only=False)
    assert [(i.name, i.truth is not None) for i in items] == [("dsb2018_256", True), ("mitocheck_hela", False)]
    assert problems == ["study.images.labels: 1 image(s) outside study.images.train have no label file: "
                        "mitocheck_hela (looked for mitocheck_hela.tif); a stage with images: all scores them "
                        "without ground truth (objective auto then uses the proxy score)"]


def test_no_matching_files_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="no image matches"):
        load_items(spec(tmp_path, "*.tif"), ReshapeSpec())
