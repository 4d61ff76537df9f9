"""Per-image outputs of the apply mode: OME-TIFF labels carry pixel size and provenance."""
from __future__ import annotations

import numpy as np
import tifffile

from opsef_opt.batch.outputs import preview_step, read_provenance, write_labels
from opsef_opt.batch.source import list_sources
from opsef_opt.config import ImagesSpec, ReshapeSpec

from conftest import shared

SPEC = ImagesSpec(None, "*.tif", (), "auto", None, None, None, None, 0, None, None, "{stem}.tif", None)


def test_pixel_size_from_imagej_metadata_follows_binning_into_the_ome_tiff(tmp_path):
    image = tifffile.imread(shared("raw", "nuclei_plk1.tif"))
    path = tmp_path / "plk1.tif"
    tifffile.imwrite(path, image, imagej=True, resolution=(1 / 0.25, 1 / 0.25), metadata={"unit": "um"})
    (plain,), _ = list_sources(SPEC, ReshapeSpec(), [path])
    (binned,), _ = list_sources(SPEC, ReshapeSpec(bin=2), [path])
    assert plain.pixel_size_um == 0.25 and binned.pixel_size_um == 0.5
    assert binned.shape_yx == (341, 341)
    labels = np.zeros(binned.shape_yx, np.int32)
    labels[10:20, 30:45] = 7
    out = write_labels(tmp_path / "labels.ome.tif", labels, binned.pixel_size_um,
                       {"image": "plk1", "pipeline": "p", "tiles": 4})
    with tifffile.TiffFile(out) as tif:
        assert tif.is_ome
        pixels = tif.ome_metadata
        np.testing.assert_array_equal(tif.asarray(), labels)
    assert 'PhysicalSizeX="0.5"' in pixels and 'PhysicalSizeXUnit="µm"' in pixels
    assert read_provenance(out) == {"image": "plk1", "pipeline": "p", "tiles": 4}
    assert not (tmp_path / "labels.ome.tif.part").exists()


def test_lazy_and_full_reads_give_the_same_pixels():
    """Plain TIFFs are read window by window (Zarr view); the result equals the full reader's."""
    from dataclasses import replace

    (source,), _ = list_sources(SPEC, ReshapeSpec(bin=2), [shared("raw", "he_example.tif")])
    assert source.lazy and source.axes == "YXC"
    full = replace(source, lazy=False)
    for window in [(0, 100, 0, 100), (350, 742, 500, 690)]:
        np.testing.assert_array_equal(source.read_window(window), full.read_window(window))


def test_preview_step_bounds_the_overlay_size():
    assert preview_step((1484, 1380)) == 1
    assert preview_step((20000, 6000)) == 5 and -(-20000 // 5) <= 4096


def test_apply_sources_leave_out_degenerate_images_and_rescale_huge_floats(tmp_path):
    good = tifffile.imread(shared("gt", "dsb2018_256", "image.tif"))
    tifffile.imwrite(tmp_path / "good.tif", good)
    tifffile.imwrite(tmp_path / "huge.tif", good.astype(np.float64) * 1e302)
    nan = good.astype(np.float32)
    nan[0, 0] = np.nan
    tifffile.imwrite(tmp_path / "nan.tif", nan)
    # (plain 2D integer TIFFs are read lazily, window by window, and checked for size only: a
    # constant one gives an image without objects; floats take the full reader and every check)
    tifffile.imwrite(tmp_path / "blank.tif", np.zeros((64, 64), np.float32))
    tifffile.imwrite(tmp_path / "tiny.tif", good[:8, :8])
    files = sorted(tmp_path.glob("*.tif"))
    sources, problems = list_sources(SPEC, ReshapeSpec(), files)
    assert sorted(s.name for s in sources) == ["good", "huge"]
    text = "\n".join(problems)
    assert "image nan left out: 1 of 65536 pixels are NaN or infinite" in text
    assert "image blank left out: every pixel has the value 0" in text
    assert "image tiny.tif left out: 8 x 8 px (Y x X) is smaller than the minimum of 16 x 16 px" in text
    huge = next(s for s in sources if s.name == "huge").read()
    assert huge.dtype == np.float32 and np.isfinite(huge).all()
    expected = (good - good.min()) / (good.max() - good.min())
    assert np.allclose(huge, expected, atol=1e-6)
