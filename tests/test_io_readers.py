"""Tests for the TIFF and LIF readers and the suffix dispatch.

Real files come from ``../shared/data`` (see its README); tests that need them
skip with a reason when it is absent (and fail in CI, where it must be present). Synthetic TIFFs are written to tmp_path.
LIF pixels are cross-checked against ``LifImage.get_plane``, which indexes the
dimensions in file order and is correct for these 8-bit files.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import tifffile
from readlif.reader import LifFile

from conftest import shared
from opsef_opt.io import (
    Image,
    ImageReadError,
    list_lif_images,
    read_image,
    read_lif,
    read_tiff,
)

LIF_SWEEP = "lif/LeicaLASX_wavelength-sweep_example.lif"
LIF_XZ = "lif/LeicaLASX_xz-plane_example.lif"
LIF_2CH_XZ = "lif/testdata_2channel_xz.lif"
LIF_TILES = "lif/tilescan_2ch_3z_2t.lif"


@pytest.fixture(scope="module")
def data() -> Path:
    """../shared/data: skipped with the reason when absent, an error in CI (conftest.shared)."""
    return shared()


def plane(path: Path, index: int, c: int = 0, **dims: int) -> np.ndarray:
    """Reference plane from readlif's get_plane; dims by LIF DimID name."""
    ids = {"y": 2, "z": 3, "t": 4, "m": 10}
    image = LifFile(str(path)).get_image(index)
    with warnings.catch_warnings():  # get_plane leaves one file handle to the GC
        warnings.simplefilter("ignore", ResourceWarning)
        return np.asarray(image.get_plane(c=c, requested_dims={ids[k]: v for k, v in dims.items()}))


def assert_names_file_and_action(err: pytest.ExceptionInfo, path: Path) -> None:
    assert str(path) in str(err.value)
    assert "check the file or remove it from the study" in str(err.value)


# ---------------------------------------------------------------- TIFF, real files

def test_tiff_2d_uint8(data):
    im = read_tiff(data / "gt/dsb2018_256/image.tif")
    assert isinstance(im, Image)
    assert (im.name, im.axes, im.data.shape, im.data.dtype) == ("image", "YX", (256, 256), np.uint8)
    assert im.source == str(data / "gt/dsb2018_256/image.tif")
    np.testing.assert_array_equal(im.data, tifffile.imread(data / "gt/dsb2018_256/image.tif"))


@pytest.mark.parametrize("rel, dtype", [
    ("gt/bbbc007_sparse/images/A9_p7d.tif", np.uint16),
    ("gt/bbbc007_sparse/labels/A9_p7d.tif", np.int32),
    ("gt/bbbc007_semantic/masks/A9_p5d_cropped_1_.tif", np.float64),
    ("gt/mitocheck/image.tif", np.uint8),
])
def test_tiff_2d_keeps_dtype(data, rel, dtype):
    im = read_tiff(data / rel)
    assert im.axes == "YX" and im.data.dtype == dtype


def test_tiff_non_square_keeps_orientation(data):
    im = read_tiff(data / "gt/mitocheck/image.tif")
    assert im.data.shape == (364, 260)


def test_tiff_rgb_he(data):
    im = read_tiff(data / "raw/he_example.tif")  # JPEG-compressed: decoded by imagecodecs
    assert (im.axes, im.data.shape, im.data.dtype) == ("YXC", (1484, 1380, 3), np.uint8)
    red = read_tiff(data / "raw/he_example.tif", channel=0)
    assert red.axes == "YX"
    np.testing.assert_array_equal(red.data, im.data[..., 0])


def test_tiff_two_channels_needs_channel(data):
    path = data / "raw/fluorescence_multichannel_example.tif"
    with pytest.raises(ImageReadError, match=r"2 channels.*set images\.channel to 0\.\.1") as err:
        read_tiff(path)
    assert str(path) in str(err.value)
    im = read_tiff(path, channel=1)
    assert (im.axes, im.data.shape, im.meta["channel"]) == ("YX", (450, 450), 1)
    np.testing.assert_array_equal(im.data, tifffile.imread(path)[1])


def test_tiff_three_channels_uint16(data):
    path = data / "raw/bbbc022_3channel.tif"
    im = read_tiff(path, channel=2)
    assert (im.axes, im.data.shape, im.data.dtype) == ("YX", (395, 695), np.uint16)
    np.testing.assert_array_equal(im.data, tifffile.imread(path)[2])
    with pytest.raises(ImageReadError, match=r"channel 3 is out of range; available channels: 0, 1, 2"):
        read_tiff(path, channel=3)


def test_tiff_3d_stack_and_z_range(data):
    path = data / "raw/nuclei_3d_stack.tif"
    full = read_tiff(path)
    assert (full.axes, full.data.shape, full.data.dtype) == ("ZYX", (37, 118, 132), np.uint8)
    assert full.meta["pixel_size_um"]["z"] == pytest.approx(4.0)
    part = read_tiff(path, z=(5, 10))
    assert part.meta["z"] == (5, 10)
    np.testing.assert_array_equal(part.data, full.data[5:10])
    assert read_tiff(path, z=(30, 100)).data.shape[0] == 7  # stop clipped to the depth
    with pytest.raises(ImageReadError, match=r"37 Z plane"):
        read_tiff(path, z=(40, 50))


def test_tiff_2d_counts_as_one_plane(data):
    path = data / "gt/dsb2018_256/image.tif"
    assert read_tiff(path, z=(0, 1)).axes == "YX"
    with pytest.raises(ImageReadError, match="selects no planes"):
        read_tiff(path, z=(1, 2))
    with pytest.raises(ImageReadError, match="available channels: 0"):
        read_tiff(path, channel=1)


# ---------------------------------------------------------------- TIFF, synthetic files

def test_tiff_zcyx_channel_and_z(tmp_path):
    arr = np.random.default_rng(0).integers(0, 4000, (5, 3, 12, 20), dtype=np.uint16)
    path = tmp_path / "zcyx.tif"
    tifffile.imwrite(path, arr, photometric="minisblack", metadata={"axes": "ZCYX"})
    im = read_tiff(path, channel=1, z=(1, 4))
    assert (im.axes, im.data.dtype) == ("ZYX", np.uint16)
    np.testing.assert_array_equal(im.data, arr[1:4, 1])
    with pytest.raises(ImageReadError, match=r"3 channels"):
        read_tiff(path)


def test_tiff_imagej_hyperstack_takes_first_time_point(tmp_path):
    arr = np.random.default_rng(1).integers(0, 255, (2, 4, 2, 10, 11), dtype=np.uint8)
    path = tmp_path / "tzcyx.tif"
    tifffile.imwrite(path, arr, imagej=True, metadata={"axes": "TZCYX"})
    im = read_tiff(path, channel=0)
    assert im.axes == "ZYX" and im.meta["n_t"] == 2
    np.testing.assert_array_equal(im.data, arr[0, :, 0])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_tiff_float_kept(tmp_path, dtype):
    arr = np.random.default_rng(2).random((9, 13)).astype(dtype)
    tifffile.imwrite(tmp_path / "f.tif", arr)
    im = read_tiff(tmp_path / "f.tif")
    assert im.data.dtype == dtype
    np.testing.assert_array_equal(im.data, arr)


def test_tiff_rgba_kept(tmp_path):
    arr = np.random.default_rng(3).integers(0, 255, (8, 9, 4), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "rgba.tif", arr, photometric="rgb")
    im = read_tiff(tmp_path / "rgba.tif")
    assert im.axes == "YXC"
    np.testing.assert_array_equal(im.data, arr)


def test_tiff_unknown_leading_axis_rule_and_override(tmp_path):
    rng = np.random.default_rng(4)
    few = rng.integers(0, 255, (3, 10, 12), dtype=np.uint8)  # unknown axis of 3 -> channels
    many = rng.integers(0, 255, (7, 10, 12), dtype=np.uint8)  # unknown axis of 7 -> Z
    tifffile.imwrite(tmp_path / "few.tif", few, photometric="minisblack", metadata=None)
    tifffile.imwrite(tmp_path / "many.tif", many, photometric="minisblack", metadata=None)
    with tifffile.TiffFile(tmp_path / "few.tif") as tif:
        assert tif.series[0].axes[0] not in "ZCYXS"
    with pytest.raises(ImageReadError, match="3 channels"):
        read_tiff(tmp_path / "few.tif")
    np.testing.assert_array_equal(read_tiff(tmp_path / "few.tif", channel=2).data, few[2])
    im = read_tiff(tmp_path / "many.tif")
    assert im.axes == "ZYX" and im.meta["axes_from"] == "rule"
    np.testing.assert_array_equal(im.data, many)
    # the axes argument overrides the rule, both ways
    assert read_tiff(tmp_path / "few.tif", axes="ZYX").data.shape == (3, 10, 12)
    np.testing.assert_array_equal(read_tiff(tmp_path / "many.tif", axes="CYX", channel=6).data, many[6])
    with pytest.raises(ImageReadError, match="images.axes"):
        read_tiff(tmp_path / "many.tif", axes="YX")


def test_tiff_samples_are_colour_only_when_photometric_rgb(tmp_path):
    arr = np.random.default_rng(5).random((3, 10, 12)).astype(np.float32)
    tifffile.imwrite(tmp_path / "grey.tif", arr, photometric="minisblack", planarconfig="separate")
    tifffile.imwrite(tmp_path / "rgb.tif", arr, photometric="rgb", planarconfig="separate")
    with pytest.raises(ImageReadError, match="3 channels"):
        read_tiff(tmp_path / "grey.tif")  # 3 samples, but not colours: channels
    grey = read_tiff(tmp_path / "grey.tif", channel=1)
    assert grey.axes == "YX" and grey.data.dtype == np.float32
    np.testing.assert_array_equal(grey.data, arr[1])
    rgb = read_tiff(tmp_path / "rgb.tif")  # planar RGB: colour axis moved last
    assert rgb.axes == "YXC"
    np.testing.assert_array_equal(rgb.data, np.moveaxis(arr, 0, -1))


def test_tiff_jpeg_stack_decodes(tmp_path):
    from PIL import Image as PILImage

    yy, xx = np.mgrid[0:24, 0:32]
    arr = np.stack([(yy * 4 + xx * 3 + 10 * k) % 256 for k in range(7)]).astype(np.uint8)
    frames = [PILImage.fromarray(f) for f in arr]
    path = tmp_path / "jpeg_stack.tif"
    frames[0].save(path, save_all=True, append_images=frames[1:], compression="jpeg", quality=95)
    im = read_tiff(path)
    assert (im.axes, im.data.shape, im.data.dtype) == ("ZYX", (7, 24, 32), np.uint8)
    assert np.abs(im.data.astype(int) - arr).mean() < 4  # lossy, but the same planes in order


def test_tiff_truncated_2d(data, tmp_path):
    path = tmp_path / "cut.tif"
    raw = (data / "gt/dsb2018_256/image.tif").read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ImageReadError, match="cannot read image") as err:
        read_tiff(path)
    assert_names_file_and_action(err, path)


def test_tiff_truncated_stack_is_not_read_short(data, tmp_path):
    path = tmp_path / "cut_stack.tif"
    raw = (data / "raw/nuclei_3d_stack.tif").read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ImageReadError) as err:
        read_tiff(path)
    assert_names_file_and_action(err, path)


def test_tiff_random_bytes_and_missing_file(tmp_path):
    path = tmp_path / "noise.tif"
    path.write_bytes(np.random.default_rng(6).bytes(2000))
    with pytest.raises(ImageReadError) as err:
        read_tiff(path)
    assert_names_file_and_action(err, path)
    with pytest.raises(ImageReadError, match="file not found"):
        read_tiff(tmp_path / "missing.tif")


# ---------------------------------------------------------------- LIF

def test_list_lif_images(data):
    sweep = list_lif_images(data / LIF_SWEEP)
    assert [s["name"] for s in sweep] == ["x_y_lambdaEmi", "x_y_lambdaExc", "x_y_z_t_lambdaEmi"]
    assert sweep[2]["dims"] == {"x": 64, "y": 64, "z": 11, "t": 2, "c": 1, "m": 1}
    assert sweep[0]["other_dims"] == {"emission_wavelength": 20}
    assert sweep[2]["bit_depth"] == (8,) and sweep[2]["scale"][0] == pytest.approx(9.5406712)
    xz = list_lif_images(data / LIF_XZ)
    assert [(s["name"], s["axes"], s["plane"], s["file_order"]) for s in xz] == [
        ("x-z", "YX", "XZ", "XZ"), ("x-z-t", "YX", "XZ", "XZT"), ("x-z-y", "ZYX", "XY", "XZY")]
    two = list_lif_images(data / LIF_2CH_XZ)
    assert [s["name"] for s in two] == ["xzt", "xzy", "xz"]
    assert all(s["channels"] == 2 for s in two) and two[0]["channel_names"] == ["Green", "Red"]
    (tiles,) = list_lif_images(data / LIF_TILES)
    assert tiles["dims"] == {"x": 64, "y": 64, "z": 3, "t": 2, "c": 2, "m": 4}
    assert tiles["index"] == 0 and tiles["axes"] == "ZYX"


def test_lif_all_images_single_channel(data):
    images = read_lif(data / LIF_SWEEP)
    assert [im.name for im in images] == [
        "LeicaLASX_wavelength-sweep_example/x_y_lambdaEmi",
        "LeicaLASX_wavelength-sweep_example/x_y_lambdaExc",
        "LeicaLASX_wavelength-sweep_example/x_y_z_t_lambdaEmi",
    ]
    assert [(im.axes, im.data.shape) for im in images] == [
        ("YX", (64, 64)), ("YX", (64, 64)), ("ZYX", (11, 64, 64))]
    assert all(im.data.dtype == np.uint8 for im in images)
    assert images[0].meta["pixel_size_um"]["x"] == pytest.approx(1 / 9.54067119984844)
    np.testing.assert_array_equal(images[0].data, plane(data / LIF_SWEEP, 0))  # first wavelength


def test_lif_by_name_and_index_same_pixels(data):
    (by_name,) = read_lif(data / LIF_SWEEP, image="x_y_z_t_lambdaEmi")
    (by_index,) = read_lif(data / LIF_SWEEP, image=2)
    np.testing.assert_array_equal(by_name.data, by_index.data)
    assert by_index.meta["lif_index"] == 2
    picked = read_lif(data / LIF_SWEEP, image=[0, "x_y_lambdaExc"])
    assert [im.meta["lif_index"] for im in picked] == [0, 1]


def test_lif_time_point_and_z_range(data):
    path = data / LIF_SWEEP
    (t0,) = read_lif(path, image=2)
    (t1,) = read_lif(path, image=2, t=1)
    (sub,) = read_lif(path, image=2, t=1, z=(2, 5))
    assert not np.array_equal(t0.data, t1.data)
    for k in (0, 4, 10):
        np.testing.assert_array_equal(t1.data[k], plane(path, 2, z=k, t=1))
    np.testing.assert_array_equal(sub.data, t1.data[2:5])
    assert sub.meta["z"] == (2, 5) and sub.meta["t"] == 1
    with pytest.raises(ImageReadError, match=r"images\.t=2 is out of range; it has 2 time points"):
        read_lif(path, image=2, t=2)
    with pytest.raises(ImageReadError, match="11 Z plane"):
        read_lif(path, image=2, z=(11, 12))


def test_lif_unknown_image_lists_available(data):
    path = data / LIF_SWEEP
    with pytest.raises(ImageReadError) as err:
        read_lif(path, image="nope")
    msg = str(err.value)
    assert str(path) in msg and "'nope'" in msg
    for name in ("0: x_y_lambdaEmi", "1: x_y_lambdaExc", "2: x_y_z_t_lambdaEmi"):
        assert name in msg
    assert "z=11 t=2" in msg
    with pytest.raises(ImageReadError, match="available images"):
        read_lif(path, image=3)


def test_lif_channel_rules(data):
    with pytest.raises(ImageReadError, match="available channels: 0: Green"):
        read_lif(data / LIF_SWEEP, image=0, channel=1)
    with pytest.raises(ImageReadError, match=r"has 2 channels \(0: Green, 1: Red\); set images\.channel to 0\.\.1"):
        read_lif(data / LIF_2CH_XZ, image="xz")


def test_lif_xz_scan_is_2d_with_z_rows(data):
    path = data / LIF_2CH_XZ
    green, red = (read_lif(path, image="xz", channel=c)[0] for c in (0, 1))
    assert (red.axes, red.data.shape, red.meta["plane"]) == ("YX", (512, 512), "XZ")
    np.testing.assert_array_equal(red.data, plane(path, 2, c=1))
    assert not np.array_equal(green.data, red.data)
    assert red.meta["pixel_size_um"]["y"] == pytest.approx(1 / 9.73733769754076)  # the Z step
    (rows,) = read_lif(path, image="xz", channel=1, z=(100, 200))
    np.testing.assert_array_equal(rows.data, red.data[100:200])


def test_lif_xz_time_series(data):
    path = data / LIF_XZ
    (im,) = read_lif(path, image="x-z-t", t=3)
    assert (im.axes, im.data.shape) == ("YX", (128, 128))
    np.testing.assert_array_equal(im.data, plane(path, 1, t=3))
    (xzt,) = read_lif(data / LIF_2CH_XZ, image="xzt", channel=1, t=19)
    np.testing.assert_array_equal(xzt.data, plane(data / LIF_2CH_XZ, 0, c=1, t=19))


@pytest.mark.parametrize("rel, index, channel, shape", [
    (LIF_XZ, 2, 0, (64, 38, 128)), (LIF_2CH_XZ, 1, 1, (128, 23, 128))])
def test_lif_xzy_scan_is_a_zyx_volume(data, rel, index, channel, shape):
    (im,) = read_lif(data / rel, image=index, channel=channel)
    assert (im.axes, im.data.shape) == ("ZYX", shape)
    for y in (0, shape[1] // 2, shape[1] - 1):
        np.testing.assert_array_equal(im.data[:, y, :], plane(data / rel, index, c=channel, y=y))


def test_lif_mosaic_tiles(data):
    path = data / LIF_TILES
    tiles = read_lif(path, channel=0)
    assert [im.name for im in tiles] == [f"tilescan_2ch_3z_2t/TileScan_001/m{k}" for k in range(4)]
    assert all((im.axes, im.data.shape) == ("ZYX", (3, 64, 64)) for im in tiles)
    assert [im.meta["mosaic_position"][:2] for im in tiles] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert all(v > 0 for v in tiles[0].meta["pixel_size_um"].values())
    (one,) = read_lif(path, channel=1, mosaic=2, t=1, z=(1, 3))
    assert one.name.endswith("/m2") and one.data.shape == (2, 64, 64)
    for k, zk in enumerate((1, 2)):
        np.testing.assert_array_equal(one.data[k], plane(path, 0, c=1, z=zk, t=1, m=2))
    with pytest.raises(ImageReadError, match="4 mosaic tiles"):
        read_lif(path, channel=0, mosaic=4)


def test_lif_single_tile_has_no_suffix(data):
    (im,) = read_lif(data / LIF_SWEEP, image=1, mosaic=0)
    assert im.name == "LeicaLASX_wavelength-sweep_example/x_y_lambdaExc"


def test_lif_corrupt_and_truncated(data, tmp_path):
    noise = tmp_path / "noise.lif"
    noise.write_bytes(np.random.default_rng(7).bytes(5000))
    with pytest.raises(ImageReadError) as err:
        read_lif(noise)
    assert_names_file_and_action(err, noise)
    cut = tmp_path / "cut.lif"  # a temporary truncated copy, deleted with tmp_path
    raw = (data / LIF_TILES).read_bytes()
    cut.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ImageReadError, match="truncated") as err:
        read_lif(cut, channel=0)
    assert_names_file_and_action(err, cut)


# ---------------------------------------------------------------- dispatch

def test_read_image_dispatch(data):
    (tif,) = read_image(data / "raw/bbbc022_3channel.tif", channel=0, z=None)
    assert tif.data.shape == (395, 695)
    lif = read_image(data / LIF_TILES, channel=1, mosaic=None)
    assert len(lif) == 4
    with pytest.raises(ImageReadError, match="mosaic do not apply to TIFF"):
        read_image(data / "raw/bbbc022_3channel.tif", channel=0, mosaic=1)


def test_read_image_unknown_suffix(tmp_path):
    path = tmp_path / "picture.png"
    path.write_bytes(b"\x89PNG")
    with pytest.raises(ImageReadError) as err:
        read_image(path)
    msg = str(err.value)
    assert str(path) in msg and ".tif" in msg and ".tiff" in msg and ".lif" in msg


def test_read_image_suffix_case_insensitive(tmp_path):
    arr = np.arange(12, dtype=np.uint16).reshape(3, 4)
    tifffile.imwrite(tmp_path / "UPPER.TIFF", arr)
    (im,) = read_image(tmp_path / "UPPER.TIFF")
    np.testing.assert_array_equal(im.data, arr)
    assert os.fspath(tmp_path / "UPPER.TIFF") == im.source
