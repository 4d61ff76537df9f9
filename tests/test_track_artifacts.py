"""Per-image artifacts: overlay, region table (checked against scikit-image), recorder."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import tifffile
from skimage.measure import regionprops_table

from opsef_opt.io.dataset import Item
from opsef_opt.measure import eccentricity
from opsef_opt.post.props import raw_intensity, region_properties
from opsef_opt.search.trial import reference_intensities
from opsef_opt.track.artifacts import OUTLINE_RGB, image_key, overlay_rgb, write_image_artifacts
from opsef_opt.track.recorder import Recorder

from conftest import shared


@pytest.mark.parametrize("folder", ["dsb2018_256", "mitocheck"])
def test_eccentricity_matches_scikit_image(folder):
    labels = tifffile.imread(shared("gt", folder, "labels.tif")).astype(np.int32)
    ref = regionprops_table(labels, properties=("label", "eccentricity"))
    np.testing.assert_allclose(eccentricity(labels, ref["label"]), ref["eccentricity"], atol=1e-9)


def test_a_trials_region_table_is_the_apply_table(tmp_path):
    """regions.csv of a trial: the apply mode's measurements, on the raw image (one table, one set of columns)."""
    labels = tifffile.imread(shared("gt", "dsb2018_256", "labels.tif")).astype(np.int32)
    image = tifffile.imread(shared("gt", "dsb2018_256", "image.tif"))
    raw = raw_intensity(image, "YX", labels.shape)
    write_image_artifacts(tmp_path / "img", labels, image, region_properties(labels, raw=raw))
    table = pd.read_csv(tmp_path / "img" / "regions.csv")
    apply = region_properties(labels, raw=raw_intensity(image, "YX"))  # what an apply tile measures
    assert list(table.columns) == list(apply.columns) and len(table) == len(np.unique(labels)) - 1
    pd.testing.assert_frame_equal(table, apply, check_dtype=False)
    one = table.iloc[0]
    mask = labels == one["label"]
    assert one["area"] == mask.sum()
    assert one["max_intensity"] == image[mask].max()  # raw units, not rescaled
    assert table["solidity"].between(0, 1).all() and table["eccentricity"].between(0, 1).all()


def test_raw_intensity_is_on_the_labels_grid():
    rgb = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)
    np.testing.assert_array_equal(raw_intensity(rgb, "YXC"), rgb.mean(axis=-1).astype(np.float32))
    stack = np.arange(2 * 4 * 5, dtype=np.uint16).reshape(2, 4, 5)
    assert raw_intensity(stack, "ZYX").shape == (4, 5)  # 2D labels of a stack: Z planes averaged
    assert raw_intensity(stack, "ZYX", (2, 4, 5)).shape == (2, 4, 5)  # 3D labels keep Z
    assert raw_intensity(stack, "ZYX", (4, 5), planes=False) is None  # not on the labels' grid
    assert raw_intensity(stack, "ZYX", (3, 3)) is None
    # the proxies' reference: the same image, normalised; a projection falls back to the image the model saw
    item = Item("s", "s", stack, "ZYX", None, "s", "fp")
    shown = np.full((4, 5), 0.5, np.float32)
    shown[0, 0] = 1.0
    np.testing.assert_array_equal(reference_intensities(item, (4, 5), shown), (shown - 0.5) / 0.5)
    ref = reference_intensities(item, (2, 4, 5), shown)
    assert ref.min() == 0 and ref.max() == 1 and ref.shape == (2, 4, 5)


def test_one_safe_name_for_artifacts_apply_outputs_and_keys():
    from opsef_opt.batch.naming import safe_name as batch_safe_name
    from opsef_opt.io.naming import safe_name

    assert batch_safe_name is safe_name
    assert safe_name("cells.lif/Series 3/z000-009") == "cells.lif__Series_3__z000-009"
    assert image_key("overlay", "cells.lif/Series 3") == "overlay/cells.lif__Series_3"


def test_overlay_draws_outlines_at_full_resolution():
    image = np.linspace(0, 1000, 40 * 60, dtype=np.float32).reshape(40, 60)  # non-square, not 8-bit
    labels = np.zeros((40, 60), np.int32)
    labels[10:20, 30:45] = 3
    rgb = overlay_rgb(image, labels)
    assert rgb.shape == (40, 60, 3) and rgb.dtype == np.uint8
    outline = (rgb == OUTLINE_RGB).all(-1)
    assert outline[10, 35] and outline[15, 30] and not outline[15, 37]
    assert rgb[..., 0].max() == 255 and rgb[0, 0, 0] == 0  # full 8-bit range, rescaled not clipped


def test_recorder_runs_everything_and_survives_errors():
    done = []
    rec = Recorder(max_pending=1)
    for i in range(5):
        rec.submit(f"job {i}", done.append, i)
    rec.submit("bad job", lambda: 1 / 0)
    rec.submit("last", done.append, 99)
    rec.close()
    assert done == [0, 1, 2, 3, 4, 99]
