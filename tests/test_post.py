"""opsef_opt.post on real labels with answers computed independently (numpy bincount, geometry)."""
from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
import tifffile
from conftest import shared
from skimage.draw import disk, rectangle

from opsef_opt.post import (
    PROPERTY_NAMES,
    analysis_plots,
    class_overlay,
    classify_objects,
    filter_objects,
    keep_labels,
    mask_from_channel,
    region_properties,
)

PNG = b"\x89PNG\r\n\x1a\n"
CP = "raw/cellprofiler_example_human"


@pytest.fixture(scope="module")
def dsb() -> tuple[np.ndarray, np.ndarray]:
    image = tifffile.imread(shared("gt/dsb2018_256/image.tif"))
    labels = tifffile.imread(shared("gt/dsb2018_256/labels.tif")).astype(np.int32)
    return image, labels


@pytest.fixture(scope="module")
def dsb_table(dsb) -> pd.DataFrame:
    image, labels = dsb
    return region_properties(labels, image)


def _centroids(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(count, centroid y, centroid x) per label id 0..max, by bincount."""
    y, x = np.indices(labels.shape)
    count = np.bincount(labels.ravel())
    safe = np.maximum(count, 1)
    return (count, np.bincount(labels.ravel(), y.ravel()) / safe, np.bincount(labels.ravel(), x.ravel()) / safe)


# --- props ---------------------------------------------------------------------------------------

def test_region_properties_real_labels_match_numpy(dsb, dsb_table):
    image, labels = dsb
    table = dsb_table
    assert len(table) == 65
    assert table["label"].tolist() == list(range(1, 66))
    count, cy, cx = _centroids(labels)
    np.testing.assert_array_equal(table["area"], count[1:])
    np.testing.assert_allclose(table["centroid_y"], cy[1:])
    np.testing.assert_allclose(table["centroid_x"], cx[1:])
    mean = np.bincount(labels.ravel(), image.ravel().astype(float)) / np.maximum(count, 1)
    np.testing.assert_allclose(table["mean_intensity"], mean[1:])
    for row in table.itertuples():
        pix = image[labels == row.label]
        assert (row.min_intensity, row.max_intensity) == (pix.min(), pix.max())
        ys, xs = np.nonzero(labels == row.label)
        assert (row.bbox_y0, row.bbox_x0, row.bbox_y1, row.bbox_x1) == (
            ys.min(), xs.min(), ys.max() + 1, xs.max() + 1)
    assert ((table["circularity"] > 0) & (table["circularity"] <= 1)).all()
    assert ((table["solidity"] > 0) & (table["solidity"] <= 1)).all()
    assert (table["major_axis_length"] >= table["minor_axis_length"]).all()
    assert set(PROPERTY_NAMES) <= set(table.columns)


def test_circularity_disk_near_one_and_thin_rectangle_low():
    labels = np.zeros((200, 200), np.int32)
    labels[disk((60, 60), 40)] = 1
    labels[disk((160, 160), 12)] = 2
    labels[rectangle((150, 10), extent=(3, 80))] = 3
    table = region_properties(labels).set_index("label")
    assert table.loc[1, "circularity"] == pytest.approx(1.0, abs=0.03)
    assert table.loc[2, "circularity"] == pytest.approx(1.0, abs=0.05)
    # the true value for a 3 x 80 rectangle: 4 pi 240 / 166**2 = 0.109
    assert table.loc[3, "circularity"] == pytest.approx(4 * np.pi * 240 / 166**2, rel=0.15)
    assert table.loc[1, "perimeter"] == pytest.approx(2 * np.pi * 40, rel=0.03)
    assert table.loc[1, "eccentricity"] < 0.1 < 0.99 < table.loc[3, "eccentricity"]
    # without a raw image the intensity columns exist but are NaN
    assert table["mean_intensity"].isna().all()


def test_offset_pixel_size_rgb_raw_and_second_channels(dsb, dsb_table):
    image, labels = dsb
    rgb = np.stack([image, image * 0 + 10, image], axis=-1).astype(np.uint16)  # mean = (2 * img + 10) / 3
    dna = tifffile.imread(shared(f"{CP}/AS_09125_050116030001_D03f00d0.tif"))[:256, :256]
    table = region_properties(labels, rgb, channels={"const": np.full(labels.shape, 7.0), "dna": dna},
                              offset=(100, 1000), pixel_size=0.25)
    base = dsb_table
    np.testing.assert_allclose(table["centroid_y"], base["centroid_y"] + 100)
    np.testing.assert_allclose(table["centroid_x"], base["centroid_x"] + 1000)
    np.testing.assert_array_equal(table["bbox_x1"], base["bbox_x1"] + 1000)
    np.testing.assert_allclose(table["mean_intensity"], (2 * base["mean_intensity"] + 10) / 3)
    # second-channel quantification: a constant channel integrates to area * constant
    np.testing.assert_allclose(table["const.integrated_intensity"], base["area"] * 7.0)
    np.testing.assert_allclose(table["const.mean_intensity"], 7.0)
    dna_sum = np.bincount(labels.ravel(), dna.ravel().astype(float))[1:]
    np.testing.assert_allclose(table["dna.integrated_intensity"], dna_sum)
    np.testing.assert_allclose(table["area_um2"], base["area"] * 0.0625)
    np.testing.assert_allclose(table["perimeter_um"], base["perimeter"] * 0.25)


def test_empty_3d_and_bad_inputs():
    empty = region_properties(np.zeros((30, 30), np.uint16), np.ones((30, 30)), channels={"b": np.ones((30, 30))})
    assert len(empty) == 0 and {"label", "circularity", "b.integrated_intensity"} <= set(empty.columns)

    stack = np.zeros((4, 20, 20), np.int32)
    stack[1:3, 2:6, 2:8] = 1
    stack[0:4, 10:12, 10:12] = 2
    t3 = region_properties(stack, stack * 2.0, pixel_size=(2.0, 0.5, 0.5)).set_index("label")
    assert t3.loc[1, "area"] == 2 * 4 * 6 and t3.loc[2, "area"] == 16
    assert (t3.loc[1, "centroid_z"], t3.loc[1, "bbox_z1"]) == (1.5, 3)
    assert t3.loc[2, "mean_intensity"] == 4.0 and t3.loc[1, "volume_um3"] == 48 * 0.5
    assert t3["circularity"].isna().all()

    with pytest.raises(ValueError, match="raw image shape"):
        region_properties(np.ones((10, 10), int), np.ones((10, 11)))
    with pytest.raises(ValueError, match="channel 'x'"):
        region_properties(np.ones((10, 10), int), channels={"x": np.ones((5, 5))})
    with pytest.raises(ValueError, match="integer"):
        region_properties(np.full((10, 10), 0.5))


# --- filter --------------------------------------------------------------------------------------

def test_filter_by_area_matches_bincount(dsb, dsb_table):
    _, labels = dsb
    count = np.bincount(labels.ravel())
    ids = np.arange(count.size)
    expected = ids[(ids > 0) & (count >= 60) & (count <= 150)]
    assert 0 < expected.size < 65  # the range really splits this image
    kept, removed = filter_objects(dsb_table, {"area": (60, 150)})
    assert kept["label"].tolist() == expected.tolist()
    assert sorted(removed["label"]) == sorted(set(range(1, 66)) - set(expected))
    for row in removed.itertuples():
        assert row.removed_by == ("area<60" if count[row.label] < 60 else "area>150")
    assert "removed_by" not in kept.columns

    only = keep_labels(labels, kept["label"])
    assert only.dtype == labels.dtype
    np.testing.assert_array_equal(np.unique(only)[1:], expected)
    np.testing.assert_array_equal(only[only > 0], labels[only > 0])


def test_filter_lists_every_failed_property(dsb_table):
    kept, removed = filter_objects(dsb_table, {"area": (100, None), "circularity": (0.95, None)})
    both = dsb_table[(dsb_table["area"] < 100) & (dsb_table["circularity"] < 0.95)]["label"]
    assert len(both) > 0
    reasons = removed.set_index("label")["removed_by"]
    assert all(reasons[i] == "area<100;circularity<0.95" for i in both)
    assert ((kept["area"] >= 100) & (kept["circularity"] >= 0.95)).all()
    assert len(kept) + len(removed) == 65
    with pytest.raises(ValueError, match="'roundness'.*valid: .*circularity"):
        filter_objects(dsb_table, {"roundness": (0.5, None)})


# --- classify ------------------------------------------------------------------------------------

def test_classify_centroid_left_half(dsb):
    _, labels = dsb
    mask = np.zeros(labels.shape, bool)
    mask[:, :128] = True
    result = classify_objects(labels, mask)
    _, _, cx = _centroids(labels)
    # pixel column c covers x in [c - 0.5, c + 0.5): the mask (columns 0..127) ends at x = 127.5
    inside = set(np.flatnonzero(cx[1:] < 127.5) + 1)
    assert 0 < len(inside) < 65
    got = result.set_index("label")["class"]
    assert {i for i, c in got.items() if c == "inside"} == inside
    assert (got[[i for i in range(1, 66) if i not in inside]] == "outside").all()


def test_classify_overlap_with_partial_objects(dsb):
    _, labels = dsb
    mask = np.zeros(labels.shape, bool)
    mask[:, :128] = True
    count = np.bincount(labels.ravel())
    left = np.bincount(labels[:, :128].ravel(), minlength=count.size)
    frac = left[1:] / count[1:]
    partial = np.flatnonzero((frac > 0) & (frac < 1)) + 1
    assert partial.size >= 2  # objects cut by the mask border
    result = classify_objects(labels, mask, rule="overlap", min_overlap=0.5, names=("left", "right"))
    np.testing.assert_allclose(result["mask_overlap"], frac)
    assert result["class"].tolist() == np.where(frac >= 0.5, "left", "right").tolist()

    square = np.zeros((20, 20), np.int32)
    square[5:15, 5:15] = 3  # 30 of its 100 pixels inside the mask
    m = np.zeros((20, 20), bool)
    m[:, :8] = True
    assert classify_objects(square, m, rule="overlap", min_overlap=0.3)["class"].tolist() == ["inside"]
    low = classify_objects(square, m, rule="overlap", min_overlap=0.31)
    assert low.to_dict("records") == [{"label": 3, "class": "outside", "mask_overlap": 0.3}]
    with pytest.raises(ValueError, match="mask shape"):
        classify_objects(square, m[:10])


def test_mask_from_channel_real_dna():
    dna = tifffile.imread(shared(f"{CP}/AS_09125_050116030001_D03f00d0.tif"))
    mask = mask_from_channel(dna)
    assert mask.dtype == bool and mask.shape == dna.shape
    assert 0.05 < mask.mean() < 0.4  # nuclei cover a minority of a 512 x 512 field
    np.testing.assert_array_equal(mask, mask_from_channel(dna))  # deterministic
    strict = mask_from_channel(dna, otsu_factor=1.5)
    assert strict.sum() < mask.sum() and not (strict & ~mask).any()
    clean = mask_from_channel(dna, opening=2, closing=2, min_size=80)
    from scipy import ndimage as ndi
    comp, n = ndi.label(clean)
    assert n > 10 and np.bincount(comp.ravel())[1:].min() >= 80
    assert not mask_from_channel(np.full((50, 50), 9)).any()


def test_class_overlay_two_colours(dsb):
    image, labels = dsb
    mask = np.zeros(labels.shape, bool)
    mask[:, :128] = True
    result = classify_objects(labels, mask)
    classes = dict(zip(result["label"], result["class"]))
    rgb = class_overlay(image, labels, classes)
    assert rgb.dtype == np.uint8 and rgb.shape == (*labels.shape, 3)
    magenta = np.all(rgb == (255, 0, 255), axis=-1)
    green = np.all(rgb == (0, 255, 0), axis=-1)
    inside = np.isin(labels, result.loc[result["class"] == "inside", "label"])
    assert magenta.any() and green.any()
    assert not (magenta & ~inside).any() and not (green & (inside | (labels == 0))).any()
    custom = class_overlay(image, labels, classes, colors={"inside": (0, 0, 255), "outside": (255, 0, 0)})
    assert np.all(custom[magenta] == (0, 0, 255))
    with pytest.raises(ValueError, match="outside"):
        class_overlay(image, labels, classes, colors={"inside": (0, 0, 255)})


# --- analysis ------------------------------------------------------------------------------------

def test_analysis_plots_pca_tsne_clusters(dsb, dsb_table, tmp_path):
    _, labels = dsb
    mask = np.zeros(labels.shape, bool)
    mask[:, :128] = True
    table = dsb_table.merge(classify_objects(labels, mask), on="label")
    paths, out = analysis_plots(table, tmp_path / "a", cluster={"method": "kmeans", "n_clusters": 3}, seed=1)
    names = sorted(p.name for p in paths)
    assert names == ["pca.png", "scatter_area_vs_mean_intensity.png", "tsne.png"]
    for p in paths:
        data = p.read_bytes()
        assert data[:8] == PNG and len(data) > 5000
    assert sorted(out["cluster"].unique()) == [0, 1, 2]
    assert out["label"].tolist() == table["label"].tolist()
    assert out[["pca_1", "pca_2", "tsne_1", "tsne_2"]].notna().all().all()
    # same seed, same embedding; the table passed in is left as it was
    _, again = analysis_plots(table, tmp_path / "b", scatter=(), pca=False, seed=1,
                              cluster={"method": "kmeans", "n_clusters": 3})
    np.testing.assert_array_equal(again[["tsne_1", "tsne_2"]], out[["tsne_1", "tsne_2"]])
    np.testing.assert_array_equal(again["cluster"], out["cluster"])
    assert "cluster" not in table.columns

    paths, agg = analysis_plots(table, tmp_path / "c", scatter=(("circularity", "solidity"),), pca=False,
                                tsne=False, color_by="area", cluster={"method": "agglomerative", "n_clusters": 2})
    assert sorted(agg["cluster"].unique()) == [0, 1]
    assert [p.name for p in paths] == ["scatter_circularity_vs_solidity.png"]
    with pytest.raises(ValueError, match="'bogus'.*available"):
        analysis_plots(table, tmp_path / "d", scatter=(("area", "bogus"),))
    with pytest.raises(ValueError, match="kmeans"):
        analysis_plots(table, tmp_path / "d", cluster={"method": "dbscan"})


def test_analysis_few_objects_and_nan_features(dsb_table, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="opsef_opt.post.analysis")
    few = dsb_table.head(4)
    paths, out = analysis_plots(few, tmp_path, cluster={"method": "kmeans", "n_clusters": 3})
    assert [p.name for p in paths] == ["scatter_area_vs_mean_intensity.png"]
    assert "needs >= 5 objects, has 4" in caplog.text
    assert out["cluster"].between(0, 2).all() and out["pca_1"].isna().all()

    caplog.clear()
    no_raw = dsb_table.assign(mean_intensity=np.nan, min_intensity=np.nan, max_intensity=np.nan)
    no_raw.loc[3, "solidity"] = np.nan
    paths, out = analysis_plots(no_raw, tmp_path / "n", tsne=False, cluster={"method": "kmeans", "n_clusters": 2})
    assert [p.name for p in paths] == ["pca.png"]  # the scatter needs mean_intensity
    assert "dropping feature(s) ['mean_intensity'" in caplog.text
    assert "leaving out 1 object(s)" in caplog.text
    assert out.loc[3, "cluster"] == -1 and np.isnan(out.loc[3, "pca_1"])
    assert (out.drop(index=3)["cluster"] >= 0).all()

    paths, out = analysis_plots(dsb_table.head(0), tmp_path / "e")
    assert paths == [] and len(out) == 0


def test_vectorised_crofton_perimeter_equals_scikit_images_per_object_one():
    """Touching nuclei included: each object's perimeter is that of its own mask, as regionprops gives it."""
    from skimage.measure import regionprops_table

    from opsef_opt.measure import perimeter_crofton

    for name in ("dsb2018_256", "mitocheck"):
        labels = tifffile.imread(shared("gt", name, "labels.tif")).astype(np.int32)
        ref = regionprops_table(labels, properties=("label", "perimeter_crofton"))
        got = perimeter_crofton(labels, ref["label"])
        np.testing.assert_allclose(got, ref["perimeter_crofton"], rtol=1e-12, atol=1e-9)
    # objects cut by the image border, a one-pixel object, a ring with a hole holding another object
    labels = np.zeros((12, 12), np.int32)
    labels[0:4, 0:5] = 1
    labels[6, 6] = 2
    labels[3:10, 7:12] = 3
    labels[5:8, 9:11] = 4
    ref = regionprops_table(labels, properties=("label", "perimeter_crofton"))
    np.testing.assert_allclose(perimeter_crofton(labels, ref["label"]), ref["perimeter_crofton"], rtol=1e-12)


def test_tsne_embeds_a_seeded_sample_of_large_tables(tmp_path, monkeypatch):
    from opsef_opt.post import analysis

    monkeypatch.setattr(analysis, "TSNE_MAX_OBJECTS", 40)
    rng = np.random.default_rng(1)
    table = pd.DataFrame({"area": rng.normal(100, 10, 90), "mean_intensity": rng.normal(1, 0.1, 90),
                          "eccentricity": rng.random(90)})
    paths, out = analysis.analysis_plots(table, tmp_path, scatter=(), pca=True, tsne=True, seed=3)
    assert [p.name for p in paths] == ["pca.png", "tsne.png"]
    assert out["pca_1"].notna().sum() == 90 and out["tsne_1"].notna().sum() == 40
    _, again = analysis.analysis_plots(table, tmp_path / "b", scatter=(), pca=False, tsne=True, seed=3)
    assert (again["tsne_1"].notna() == out["tsne_1"].notna()).all()  # the same sample for the same seed


def _hull_cases():
    """Label images whose objects are blobs, lines, single pixels, scattered pixels, border-touching."""
    from scipy import ndimage as ndi
    from skimage.measure import label
    from skimage.segmentation import relabel_sequential

    rng = np.random.default_rng(7)
    cases = []
    for k in range(12):
        img = ndi.gaussian_filter(rng.random((90, 110)), 1 + k % 3)
        lab = label(img > np.quantile(img, 0.45 + 0.03 * k))
        if k % 3 == 0:  # objects made of two or more pieces
            lab = np.where(lab > 0, (lab + 1) // 2, 0)
        cases.append(lab)
    lines = np.zeros((12, 12), int)
    lines[2, 1:9] = 1
    lines[3:11, 10] = 2
    lines[np.arange(5, 12), np.arange(0, 7)] = 3
    lines[0, 11] = 4
    cases.append(lines)
    cases.append(np.ones((1, 7), int))
    for _ in range(10):
        sparse = np.zeros((30, 30), int)
        yx = rng.integers(0, 30, (20, 2))
        sparse[yx[:, 0], yx[:, 1]] = rng.integers(1, 4, 20)
        cases.append(sparse)
    return [relabel_sequential(c)[0] for c in cases]


def test_convex_areas_equal_qhull_and_scikit_image():
    """All-objects-at-once hull pixel counts equal Pick's theorem on Qhull's hull of the pixel centres, and
    scikit-image's area_convex, object by object."""
    from scipy.spatial import ConvexHull, QhullError
    from skimage.measure import regionprops

    from opsef_opt.measure import area_convex, hull_pixel_count

    n_objects = 0
    for lab in _hull_cases():
        props = regionprops(lab)
        assert np.array_equal(area_convex(lab), [p.area_convex for p in props])
        pick = []
        for p in props:
            pts = p.coords
            try:
                hull = ConvexHull(pts)
                v = pts[hull.vertices]
                boundary = np.gcd.reduce(np.abs(np.roll(v, -1, 0) - v), axis=1).sum()
                pick.append(round(hull.volume + boundary / 2 + 1))
            except QhullError:  # a point or a segment
                d = pts.max(0) - pts.min(0)
                pick.append(int(np.gcd(d[0], d[1])) + 1)
        assert np.array_equal(hull_pixel_count(lab), pick)
        n_objects += len(props)
    assert n_objects > 300


def test_region_table_solidity_is_scikit_images():
    """The region table's solidity (hulls of all objects at once) is scikit-image's, object by object."""
    from pathlib import Path

    from skimage.measure import regionprops

    lab = tifffile.imread(Path(__file__).resolve().parents[1] / "opsef_opt" / "data" / "demo" / "labels"
                          / "dsb2018_256.tif")
    table = region_properties(lab)
    assert len(table) > 50
    assert np.array_equal(table["solidity"].to_numpy(), [p.solidity for p in regionprops(lab)])
