"""Tests for opsef_opt.io.reshape: binning, rescaling, Z sub-stacks and tiling."""
from __future__ import annotations

import numpy as np
import pytest

from opsef_opt.io import bin_image, scale_image, tile_image, z_substacks

RNG = np.random.default_rng(0)


def reassemble(shape, tiles, axes_idx, dtype):
    """Write tiles back at their origins; also count how often each pixel is covered."""
    out = np.zeros(shape, dtype=dtype)
    count = np.zeros(shape, dtype=int)
    for origin, tile in tiles:
        index = [slice(None)] * len(shape)
        for i, start, n in zip(axes_idx, origin, (tile.shape[i] for i in axes_idx)):
            index[i] = slice(start, start + n)
        out[tuple(index)] = tile
        count[tuple(index)] += 1
    return out, count


# ---------------------------------------------------------------- tile_image

@pytest.mark.parametrize("shape, size, overlap", [
    ((37, 53), (16, 10), 0), ((37, 53), (16, 10), 3), ((64, 64), (32, 32), 0),
    ((20, 50), (8, 16), (2, 5)), ((5, 40), (16, 16), 4)])
def test_tiles_cover_every_pixel(shape, size, overlap):
    data = RNG.integers(0, 1000, shape).astype(np.uint16)
    tiles = tile_image(data, "YX", size, overlap)
    out, count = reassemble(shape, tiles, (0, 1), data.dtype)
    assert count.min() >= 1
    np.testing.assert_array_equal(out, data)


def test_non_square_tiles_keep_orientation():
    data = RNG.random((20, 50))
    tiles = tile_image(data, "YX", (8, 16))
    for (y, x), tile in tiles:
        assert tile.shape == (8, 16)  # (h, w), never swapped
        np.testing.assert_array_equal(tile, data[y:y + 8, x:x + 16])
    assert max(y for (y, _), _ in tiles) == 12 and max(x for (_, x), _ in tiles) == 34


def test_tiles_of_second_image_come_from_second_image():
    first, second = RNG.random((30, 40)), RNG.random((30, 40)) + 10
    tiles_first = tile_image(first, "YX", (16, 16))
    tiles_second = tile_image(second, "YX", (16, 16))
    assert [o for o, _ in tiles_first] == [o for o, _ in tiles_second]
    for (y, x), tile in tiles_second:
        np.testing.assert_array_equal(tile, second[y:y + 16, x:x + 16])
        assert tile.min() >= 10


def test_overlap_honoured_and_last_tile_end_aligned():
    data = np.zeros((100, 70))
    tiles = tile_image(data, "YX", (32, 20), overlap=(8, 5))
    ys = sorted({y for (y, _), _ in tiles})
    xs = sorted({x for (_, x), _ in tiles})
    assert ys == [0, 24, 48, 68] and xs == [0, 15, 30, 45, 50]
    for starts, size, overlap in ((ys, 32, 8), (xs, 20, 5)):
        assert all(b - a <= size - overlap for a, b in zip(starts, starts[1:]))  # overlap >= asked
    assert all(t.shape == (32, 20) for _, t in tiles)


def test_axis_smaller_than_tile_gives_one_full_length_tile():
    data = RNG.random((5, 40))
    tiles = tile_image(data, "YX", (16, 16), overlap=2)
    assert {t.shape for _, t in tiles} == {(5, 16)}
    assert all(o[0] == 0 for o, _ in tiles)


def test_tiles_yxc_keep_channels():
    data = RNG.integers(0, 255, (30, 45, 3), dtype=np.uint8)
    tiles = tile_image(data, "YXC", (16, 16), overlap=4)
    for (y, x), tile in tiles:
        assert tile.shape == (16, 16, 3)
        np.testing.assert_array_equal(tile, data[y:y + 16, x:x + 16])
    out, count = reassemble(data.shape, tiles, (0, 1), data.dtype)
    np.testing.assert_array_equal(out, data)


def test_2d_tiling_of_a_stack_keeps_all_planes():
    data = RNG.random((6, 30, 20))
    tiles = tile_image(data, "ZYX", (16, 16))
    assert all(t.shape == (6, 16, 16) for _, t in tiles)
    assert all(len(o) == 2 for o, _ in tiles)


def test_3d_tiling():
    data = RNG.integers(0, 50, (11, 30, 25)).astype(np.int32)
    tiles = tile_image(data, "ZYX", (4, 16, 10), overlap=(1, 4, 2))
    for (z, y, x), tile in tiles:
        assert tile.shape == (4, 16, 10)
        np.testing.assert_array_equal(tile, data[z:z + 4, y:y + 16, x:x + 10])
    out, count = reassemble(data.shape, tiles, (0, 1, 2), data.dtype)
    assert count.min() >= 1
    np.testing.assert_array_equal(out, data)
    assert sorted({z for (z, _, _), _ in tiles}) == [0, 3, 6, 7]


@pytest.mark.parametrize("axes, shape, size, overlap", [
    ("YX", (10, 10), (4, 4, 4), 0), ("YX", (10, 10), (4, 4), 4), ("YX", (10, 10), (0, 4), 0),
    ("YX", (10, 10), (4, 4), (1, 1, 1)), ("ZYX", (3, 10, 10), (4,), 0)])
def test_tile_image_rejects_bad_arguments(axes, shape, size, overlap):
    with pytest.raises(ValueError):
        tile_image(np.zeros(shape), axes, size, overlap)


# ---------------------------------------------------------------- z_substacks

def test_z_substacks_keep_last_short_block():
    data = RNG.random((10, 8, 9))
    blocks = z_substacks(data, "ZYX", 4)
    assert [(a, b) for a, b, _ in blocks] == [(0, 4), (4, 8), (8, 10)]
    assert blocks[-1][2].shape == (2, 8, 9)
    np.testing.assert_array_equal(np.concatenate([b for _, _, b in blocks]), data)


@pytest.mark.parametrize("size", [10, 25])
def test_z_substacks_size_at_least_depth_gives_one_block(size):
    data = RNG.random((10, 4, 4))
    (block,) = z_substacks(data, "ZYX", size)
    assert block[:2] == (0, 10)
    np.testing.assert_array_equal(block[2], data)


def test_z_substacks_zyxc_and_errors():
    data = RNG.integers(0, 255, (5, 6, 7, 3), dtype=np.uint8)
    blocks = z_substacks(data, "ZYXC", 2)
    assert [b.shape for _, _, b in blocks] == [(2, 6, 7, 3), (2, 6, 7, 3), (1, 6, 7, 3)]
    with pytest.raises(ValueError):
        z_substacks(np.zeros((4, 4)), "YX", 2)
    with pytest.raises(ValueError):
        z_substacks(np.zeros((4, 4, 4)), "ZYX", 0)


# ---------------------------------------------------------------- bin_image

def test_bin_image_mean_of_blocks():
    data = np.arange(4 * 6, dtype=np.uint8).reshape(4, 6)
    binned = bin_image(data, "YX", 2)
    expected = np.array([[3.5, 5.5, 7.5], [15.5, 17.5, 19.5]], dtype=np.float32)
    assert binned.dtype == np.float32
    np.testing.assert_array_equal(binned, expected)


def test_bin_image_crops_remainder_and_respects_axes():
    assert bin_image(np.ones((5, 7)), "YX", 2).shape == (2, 3)
    assert bin_image(np.ones((3, 9, 10)), "ZYX", 3).shape == (3, 3, 3)
    rgb = RNG.integers(0, 255, (9, 11, 3), dtype=np.uint8)
    binned = bin_image(rgb, "YXC", 3)
    assert binned.shape == (3, 3, 3)
    np.testing.assert_allclose(binned[1, 2], rgb[3:6, 6:9].reshape(-1, 3).mean(axis=0), rtol=1e-6)
    zyxc = RNG.random((2, 8, 6, 4))
    assert bin_image(zyxc, "ZYXC", 2).shape == (2, 4, 3, 4)


def test_bin_image_labels_stride_sampling_keeps_ids():
    labels = np.zeros((9, 12), dtype=np.uint16)
    labels[0:4, 0:4] = 7
    labels[4:9, 6:12] = 300
    binned = bin_image(labels, "YX", 2, labels=True)
    assert binned.dtype == np.uint16 and binned.shape == (4, 6)
    np.testing.assert_array_equal(binned, labels[:8, :12][::2, ::2])
    assert set(np.unique(binned)) == {0, 7, 300}
    rgb_labels = RNG.integers(0, 5, (6, 8, 3)).astype(np.int32)
    np.testing.assert_array_equal(bin_image(rgb_labels, "YXC", 2, labels=True), rgb_labels[::2, ::2])


def test_bin_image_rejects_bad_factor():
    for factor in (0, 1.5, 20):
        with pytest.raises(ValueError):
            bin_image(np.zeros((10, 10)), "YX", factor)


# ---------------------------------------------------------------- scale_image

@pytest.mark.parametrize("axes, shape, factor, expected", [
    ("YX", (40, 60), 0.5, (20, 30)), ("YX", (40, 60), 2.0, (80, 120)),
    ("ZYX", (5, 40, 60), 0.25, (5, 10, 15)), ("YXC", (40, 60, 3), 1.5, (60, 90, 3)),
    ("ZYXC", (2, 10, 20, 4), 0.5, (2, 5, 10, 4))])
def test_scale_image_shapes(axes, shape, factor, expected):
    data = RNG.integers(0, 255, shape).astype(np.uint8)
    out = scale_image(data, axes, factor)
    assert out.shape == expected and out.dtype == np.float32
    assert out.min() >= 0 and out.max() <= 255  # original value range, not [0, 1]


def test_scale_image_labels_keep_dtype_and_ids():
    labels = np.zeros((40, 60), dtype=np.int32)
    labels[5:20, 5:25] = 3
    labels[22:38, 30:58] = 1_000_000
    for factor in (0.5, 2.0, 0.75):
        out = scale_image(labels, "YX", factor, labels=True)
        assert out.dtype == np.int32
        assert set(np.unique(out)) == {0, 3, 1_000_000}
    stack = np.stack([labels, labels * 0 + 9])
    out = scale_image(stack, "ZYX", 0.5, labels=True)
    assert out.shape == (2, 20, 30) and set(np.unique(out[1])) == {9}


def test_scale_image_rejects_bad_factor():
    with pytest.raises(ValueError):
        scale_image(np.zeros((4, 4)), "YX", 0)
    with pytest.raises(ValueError):
        scale_image(np.zeros((4, 4)), "YXC", 2)
