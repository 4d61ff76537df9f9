"""Exports other tools read (ImageJ ROI zip, AnnotatorJ layout, QuPath GeoJSON) and re-import.

Real label images: DSB2018 (65 nuclei) and MitoCheck (7 nuclei) ground truth from ../shared/data.
"""
from __future__ import annotations

import json
import struct
import uuid
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import roifile
import tifffile
from scipy import ndimage as ndi
from shapely.geometry import Polygon, shape
from skimage import measure

from conftest import shared
from opsef_opt.export import (
    ReimportError,
    import_edited,
    label_polygons,
    read_label_image,
    read_roi_zip,
    to_geojson,
    write_annotatorj,
    write_geojson,
    write_roi_zip,
)
from opsef_opt.export.imagej import ANNOTATORJ_FOLDERS, PAIR_LIST_NAME

GT = {"dsb": "gt/dsb2018_256", "mitocheck": "gt/mitocheck"}


def _labels(which: str) -> np.ndarray:
    return tifffile.imread(shared(GT[which], "labels.tif")).astype(np.int32)


@pytest.fixture(scope="module")
def dsb_labels() -> np.ndarray:
    labels = _labels("dsb")
    assert len(np.unique(labels)) - 1 == 65
    return labels


def _roi_bytes(points, name="r") -> bytes:
    return roifile.ImagejRoi.frompoints(np.asarray(points, dtype=np.int32), name=name).tobytes()


def _zip(path: Path, entries: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return path


def _simple(mask: np.ndarray) -> bool:
    """One 4-connected component without holes: what one outline polygon can carry exactly."""
    return ndi.label(mask)[1] == 1 and ndi.binary_fill_holes(mask).sum() == mask.sum()


# ---------------------------------------------------------------- ImageJ ROI zip

def test_roi_zip_roundtrip_has_same_polygons(dsb_labels, tmp_path):
    path = tmp_path / "rois.zip"
    assert write_roi_zip(dsb_labels, path) == 65
    polygons = label_polygons(dsb_labels)
    rois = roifile.roiread(path)
    assert len(rois) == 65
    with zipfile.ZipFile(path) as zf:
        assert zf.namelist() == [f"{i:04d}-label_{lab}.roi" for i, lab in enumerate(sorted(polygons), 1)]
    for roi, label in zip(rois, sorted(polygons)):
        assert roi.name.endswith(f"-label_{label}")
        assert roi.roitype == roifile.ROI_TYPE.TRACED
        np.testing.assert_array_equal(roi.coordinates(), polygons[label])


def test_roi_zip_replaces_existing_file_and_honours_offset(dsb_labels, tmp_path):
    path = tmp_path / "rois.zip"
    write_roi_zip(dsb_labels, path)
    write_roi_zip(dsb_labels[:128, :128], path, offset=(100, 200))  # roifile would append by default
    rois = roifile.roiread(path)
    crop_polygons = label_polygons(dsb_labels[:128, :128])
    assert len(rois) == len(crop_polygons)
    first = sorted(crop_polygons)[0]
    np.testing.assert_array_equal(rois[0].coordinates(), crop_polygons[first] + [200, 100])


@pytest.mark.parametrize("which", ["dsb", "mitocheck"])
def test_reimported_roi_zip_matches_the_objects(which, tmp_path):
    labels = _labels(which)
    ids = sorted(set(np.unique(labels).tolist()) - {0})
    path = tmp_path / "rois.zip"
    write_roi_zip(labels, path)
    back = read_roi_zip(path, labels.shape)
    assert back.dtype == np.int32 and back.shape == labels.shape
    assert len(np.unique(back)) - 1 == len(ids)
    ious, exact = [], []
    for number, label in enumerate(ids, start=1):  # ROIs are numbered in archive (label) order
        a, b = labels == label, back == number
        ious.append((a & b).sum() / (a | b).sum())
        if _simple(a):
            exact.append(bool(np.array_equal(a, b)))
    assert np.mean(ious) >= 0.9, f"mean IoU {np.mean(ious):.3f}"
    assert exact and all(exact), "objects without holes must come back pixel for pixel"


def test_outline_polygons_are_valid_and_cover_the_pixels(dsb_labels):
    polygons = label_polygons(dsb_labels, offset=(3, 5))
    assert sorted(polygons) == sorted(set(np.unique(dsb_labels)) - {0})  # one outline per object, so the loop runs
    for label, ring in polygons.items():
        polygon = Polygon(ring)
        assert polygon.is_valid, label
        assert polygon.area == pytest.approx((dsb_labels == label).sum(), abs=0.5)
        y0, x0 = np.argwhere(dsb_labels == label).min(axis=0)
        assert ring[:, 0].min() == x0 + 5 and ring[:, 1].min() == y0 + 3


def test_pinch_point_outline_is_simple_and_rasterises_back(tmp_path):
    # two object pixels meet diagonally around an enclosed background pixel: a pinch point
    labels = np.zeros((6, 6), np.int32)
    labels[1:4, 1:4] = 7
    labels[2, 2] = 0
    labels[3, 3] = 0
    ring = label_polygons(labels)[7]
    assert Polygon(ring).is_valid
    write_roi_zip(labels, tmp_path / "p.zip")
    assert np.array_equal(read_roi_zip(tmp_path / "p.zip", labels.shape) > 0, labels > 0)


# ---------------------------------------------------------------- QuPath GeoJSON

@pytest.fixture(scope="module")
def dsb_table(dsb_labels) -> pd.DataFrame:
    table = pd.DataFrame(measure.regionprops_table(dsb_labels, properties=("label", "area", "eccentricity")))
    table["note"] = "text column, not a measurement"
    table.loc[0, "eccentricity"] = np.nan
    table["class"] = np.where(table["area"] > table["area"].median(), "large", "small")
    return table


def test_geojson_is_valid_and_carries_classes_and_measurements(dsb_labels, dsb_table):
    collection = to_geojson(dsb_labels, dsb_table, image_name="plate1/img")
    text = json.dumps(collection, allow_nan=False)  # strict JSON: raises on NaN
    assert json.loads(text) == collection
    features = collection["features"]
    assert collection["type"] == "FeatureCollection" and len(features) == 65
    by_label = dsb_table.set_index("label")
    ids = set()
    for feature in features:
        assert feature["type"] == "Feature"
        ids.add(str(uuid.UUID(feature["id"])))
        geometry = feature["geometry"]
        assert geometry["type"] == "Polygon"
        ring = geometry["coordinates"][0]
        assert ring[0] == ring[-1] and len(ring) >= 4
        polygon = shape(geometry)
        assert polygon.is_valid and polygon.exterior.is_ccw
        props = feature["properties"]
        label = int(props["name"].split("_")[1])
        assert polygon.area == pytest.approx((dsb_labels == label).sum(), abs=0.5)
        assert props["objectType"] == "detection"
        row = by_label.loc[label]
        assert props["classification"]["name"] == row["class"]
        color = props["classification"]["color"]
        assert len(color) == 3 and all(0 <= c <= 255 for c in color)
        assert props["measurements"]["area"] == pytest.approx(row["area"])
        assert "note" not in props["measurements"] and "class" not in props["measurements"]
        if np.isnan(row["eccentricity"]):
            assert "eccentricity" not in props["measurements"]
        else:
            assert props["measurements"]["eccentricity"] == pytest.approx(row["eccentricity"])
    assert len(ids) == 65
    assert to_geojson(dsb_labels, dsb_table, image_name="plate1/img") == collection  # deterministic
    colours = {f["properties"]["classification"]["name"]: tuple(f["properties"]["classification"]["color"])
               for f in features}
    assert colours["large"] != colours["small"]


def test_geojson_classes_mapping_annotations_and_file(dsb_labels, tmp_path):
    classes = {1: "inside", 2: "outside"}
    collection = to_geojson(dsb_labels, classes=classes, object_type="annotation", offset=(10, 20))
    props = {f["properties"]["name"]: f["properties"] for f in collection["features"]}
    assert props["label_1"]["classification"]["name"] == "inside"
    assert "classification" not in props["label_3"]
    assert all(p["objectType"] == "annotation" for p in props.values())
    assert write_geojson(tmp_path / "objects.geojson", dsb_labels, classes=classes,
                         object_type="annotation", offset=(10, 20)) == 65
    assert json.loads((tmp_path / "objects.geojson").read_text()) == collection
    with pytest.raises(ValueError, match="object_type"):
        to_geojson(dsb_labels, object_type="cell")


# ---------------------------------------------------------------- untrusted ROI zips

@pytest.mark.parametrize(("entry", "reason"), [
    ("../evil.roi", "'..'"),
    ("sub/../../evil.roi", "'..'"),
    ("/abs.roi", "absolute"),
    ("C:/evil.roi", "drive letter"),
    ("dir\\evil.roi", "backslash"),
])
def test_zip_slip_entries_are_rejected(tmp_path, entry, reason):
    square = _roi_bytes([[1, 1], [1, 5], [5, 5], [5, 1]])
    path = _zip(tmp_path / "edited.zip", {"0001.roi": square, entry: square})
    assert entry in zipfile.ZipFile(path).namelist()
    with pytest.raises(ReimportError, match="unsafe entry name") as err:
        read_roi_zip(path, (10, 10))
    assert entry.replace("\\", "\\\\") in str(err.value) and reason in str(err.value)
    assert "edited.zip" in str(err.value)


def test_malformed_roi_entry_is_named(tmp_path):
    good = _roi_bytes([[1, 1], [1, 5], [5, 5], [5, 1]])
    garbage_header = b"Iout" + b"\x00\xe4" + b"\xff" * 70  # ImageJ magic, unknown ROI type
    truncated = good[:64] + good[64:70]  # header promises 4 vertices, the data stops early
    for bad in (garbage_header, truncated, b"not an ROI at all" * 5, b"Iout"):
        path = _zip(tmp_path / "edited.zip", {"0001.roi": good, "0002-broken.roi": bad})
        with pytest.raises(ReimportError, match="0002-broken.roi") as err:
            read_roi_zip(path, (10, 10))
        assert "edited.zip" in str(err.value)


def test_oversize_archives_are_rejected_before_reading(dsb_labels, tmp_path):
    path = tmp_path / "rois.zip"
    write_roi_zip(dsb_labels, path)
    with pytest.raises(ReimportError, match="65 entries, more than the limit of 10"):
        read_roi_zip(path, dsb_labels.shape, max_entries=10)
    with pytest.raises(ReimportError, match="limit of 1000 bytes"):
        read_roi_zip(path, dsb_labels.shape, max_bytes=1000)  # the archive file itself is larger
    # small on disk, large once decompressed: refused from the declared sizes, nothing inflated
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("0001.roi", b"Iout" + b"\x00" * 2_000_000)
    assert bomb.stat().st_size < 100_000
    with pytest.raises(ReimportError, match="declare 2000004 bytes"):
        read_roi_zip(bomb, dsb_labels.shape, max_bytes=100_000)


def test_entry_larger_than_its_header_says_is_rejected(tmp_path):
    path = tmp_path / "lying.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("a.roi", b"Iout" + b"\x00" * 200_000)
    raw = bytearray(path.read_bytes())
    struct.pack_into("<I", raw, raw.find(b"PK\x03\x04") + 22, 100)  # local header: 100 bytes
    struct.pack_into("<I", raw, raw.find(b"PK\x01\x02") + 24, 100)  # central directory too
    path.write_bytes(raw)
    assert zipfile.ZipFile(path).infolist()[0].file_size == 100
    with pytest.raises(ReimportError, match="'a.roi'"):
        read_roi_zip(path, (10, 10))


def test_non_roi_entries_skipped_clipping_and_later_roi_wins(tmp_path):
    entries = {
        "readme.txt": b"hello",
        "__MACOSX/._0001.roi": b"\x00\x05\x16\x07",
        "0001.roi": _roi_bytes([[2, 2], [2, 8], [8, 8], [8, 2]], "first"),       # 6x6 square
        "0002.roi": _roi_bytes([[5, 5], [5, 20], [20, 20], [20, 5]], "second"),  # leaves the image
        "0003.roi": _roi_bytes([[30, 30], [30, 40], [40, 40], [40, 30]], "outside"),
    }
    notes: list[str] = []
    labels = read_roi_zip(_zip(tmp_path / "e.zip", entries), (10, 12), notes=notes)
    expected = np.zeros((10, 12), np.int32)
    expected[2:8, 2:8] = 1
    expected[5:10, 5:12] = 2  # clipped at the image border; overlap goes to the later ROI
    np.testing.assert_array_equal(labels, expected)
    text = "\n".join(notes)
    assert "readme.txt" in text and "__MACOSX" in text and "0003.roi" in text


def test_composite_roi_keeps_its_hole(tmp_path):
    # what ImageJ's "Create Selection" makes for an object with a hole: a shape (composite) ROI
    roi = roifile.ImagejRoi()
    roi.roitype = roifile.ROI_TYPE.RECT
    path = [0, 1, 1, 1, 1, 9, 1, 9, 9, 1, 9, 1, 4,   # outer square, corners 1..9
            0, 3, 3, 1, 3, 7, 1, 7, 7, 1, 7, 3, 4]   # hole, corners 3..7
    roi.multi_coordinates = np.array(path, np.float32)
    roi.shape_roi_size = len(path)
    roi.left, roi.top, roi.right, roi.bottom = 1, 1, 9, 9
    labels = read_roi_zip(_zip(tmp_path / "c.zip", {"0001.roi": roi.tobytes()}), (12, 12))
    expected = np.zeros((12, 12), np.int32)
    expected[1:9, 1:9] = 1
    expected[3:7, 3:7] = 0
    np.testing.assert_array_equal(labels, expected)


def test_not_a_zip_is_a_clear_error(tmp_path):
    path = tmp_path / "rois.zip"
    path.write_bytes(b"definitely not a zip")
    with pytest.raises(ReimportError, match="not a readable zip"):
        read_roi_zip(path, (10, 10))


# ---------------------------------------------------------------- label images and matching

def test_read_label_image_checks_shape_and_dtype(tmp_path):
    labels = _labels("mitocheck")
    tifffile.imwrite(tmp_path / "ok.tif", labels.astype(np.uint16))
    np.testing.assert_array_equal(read_label_image(tmp_path / "ok.tif", labels.shape), labels)
    with pytest.raises(ReimportError, match="image's size"):
        read_label_image(tmp_path / "ok.tif", (labels.shape[0] + 1, labels.shape[1]))
    tifffile.imwrite(tmp_path / "float.tif", labels.astype(np.float32))
    with pytest.raises(ReimportError, match="integers"):
        read_label_image(tmp_path / "float.tif", labels.shape)
    (tmp_path / "junk.tif").write_bytes(b"junk" * 10)
    with pytest.raises(ReimportError, match="junk.tif"):
        read_label_image(tmp_path / "junk.tif", labels.shape)


def test_import_edited_matches_files_to_images(dsb_labels, tmp_path):
    mito = _labels("mitocheck")
    folder = tmp_path / "edited"
    folder.mkdir()
    tifffile.imwrite(folder / "plate1__a_labels.tif", mito.astype(np.uint16))
    write_roi_zip(dsb_labels, folder / "b_ROIs.zip")
    (folder / "c.zip").write_bytes(b"broken")
    tifffile.imwrite(folder / "stray.tif", mito.astype(np.uint16))
    (folder / "notes.txt").write_text("ignored")
    names = ["plate1/a", "b", "c", "d"]
    shapes = {"plate1/a": mito.shape, "b": dsb_labels.shape, "c": (10, 10), "d": (5, 5)}
    edited, problems = import_edited(folder, names, shapes)
    assert set(edited) == {"plate1/a", "b"}
    np.testing.assert_array_equal(edited["plate1/a"], mito)
    assert np.array_equal(edited["b"] > 0, dsb_labels > 0) and edited["b"].max() == 65
    text = "\n".join(problems)
    assert "stray.tif" in text and "matches no image" in text
    assert "c.zip" in text and "notes.txt" not in text
    assert len(problems) == 2


# ---------------------------------------------------------------- AnnotatorJ layout

def test_annotatorj_layout(dsb_labels, tmp_path):
    image = tifffile.imread(shared(GT["dsb"], "image.tif"))
    paths = write_annotatorj(tmp_path, "plate1/img 01", image, dsb_labels)
    stem = "plate1__img_01"
    assert paths["image"] == tmp_path / ANNOTATORJ_FOLDERS["image"] / f"{stem}.tif"
    assert paths["mask"] == tmp_path / ANNOTATORJ_FOLDERS["mask"] / f"{stem}.tif"
    assert paths["rois"] == tmp_path / ANNOTATORJ_FOLDERS["rois"] / f"{stem}_ROIs.zip"
    assert paths["pair_list"] == tmp_path / ANNOTATORJ_FOLDERS["pair_list"] / PAIR_LIST_NAME
    np.testing.assert_array_equal(tifffile.imread(paths["image"]), image)
    mask = tifffile.imread(paths["mask"])
    assert mask.dtype == np.uint16 and np.array_equal(mask, dsb_labels)
    assert len(roifile.roiread(paths["rois"])) == 65
    # the ROI zip AnnotatorJ loads instead of the mask has the mask file's stem + "_ROIs.zip"
    assert paths["rois"].name == Path(paths["mask"]).stem + "_ROIs.zip"

    second = write_annotatorj(tmp_path, "img2", image, dsb_labels)
    write_annotatorj(tmp_path, "plate1/img 01", image, dsb_labels)  # re-export: entry replaced, not added
    lines = paths["pair_list"].read_text().splitlines()
    assert lines == [f"00_InputRaw/{stem}.tif;02_SegMasks/{stem}.tif",
                     "00_InputRaw/img2.tif;02_SegMasks/img2.tif"]
    for line in lines:  # each path is relative to the folder above the FilePairList's folder
        assert all((tmp_path / part).is_file() for part in line.split(";"))
    assert "replaced_rois" not in second

    # ROIs saved by the user in AnnotatorJ are moved aside, never overwritten
    user_zip = second["rois"]
    write_roi_zip(dsb_labels[:100], user_zip)
    saved = user_zip.read_bytes()
    again = write_annotatorj(tmp_path, "img2", image, dsb_labels)
    assert again["replaced_rois"].read_bytes() == saved
    assert "replaced" in again["replaced_rois"].parts
    assert len(roifile.roiread(user_zip)) == 65

    with pytest.raises(ValueError, match="one ImageJ stack"):
        write_annotatorj(tmp_path, "small", image[:100, :100], dsb_labels[:100, :100])
