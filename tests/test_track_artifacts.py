"""Per-image artifacts: overlay, region table (checked against scikit-image), recorder."""
from __future__ import annotations

import numpy as np
import pytest
import tifffile
from skimage.measure import regionprops_table

from opsef_opt.track.artifacts import OUTLINE_RGB, eccentricity, overlay_rgb, region_table
from opsef_opt.track.recorder import Recorder

from conftest import shared


@pytest.mark.parametrize("folder", ["dsb2018_256", "mitocheck"])
def test_eccentricity_matches_scikit_image(folder):
    labels = tifffile.imread(shared("gt", folder, "labels.tif")).astype(np.int32)
    ref = regionprops_table(labels, properties=("label", "eccentricity"))
    np.testing.assert_allclose(eccentricity(labels, ref["label"]), ref["eccentricity"], atol=1e-9)


def test_region_table_on_real_labels():
    labels = tifffile.imread(shared("gt", "dsb2018_256", "labels.tif")).astype(np.int32)
    image = tifffile.imread(shared("gt", "dsb2018_256", "image.tif"))
    table = region_table(labels, image)
    assert len(table) == len(np.unique(labels)) - 1
    assert list(table.columns) == ["label", "area", "centroid_y", "centroid_x", "perimeter", "eccentricity",
                                   "solidity", "intensity_mean", "intensity_min", "intensity_max"]
    one = table.iloc[0]
    mask = labels == one["label"]
    assert one["area"] == mask.sum()
    assert one["intensity_max"] == image[mask].max()  # raw units, not rescaled
    assert table["solidity"].between(0, 1).all() and table["eccentricity"].between(0, 1).all()
    assert region_table(np.zeros((8, 8), np.int32), np.zeros((8, 8))).empty


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
