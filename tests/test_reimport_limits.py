"""Re-import at scale: bulk rasterisation, one summary line per archive, refusals that say why.

Archives are generated here (roifile writes one template ROI, its header position is patched per
entry), so nothing depends on ../shared/data. The mode=reimport tests run ``run_reimport`` in
this process on settings composed by Hydra, so the log lines can be counted with caplog.
"""
from __future__ import annotations

import logging
import struct
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import roifile
import tifffile
import shapely

from opsef_opt.export import reimport
from opsef_opt.export.reimport import ReimportError, import_edited, read_roi_zip

NO_MATCH = "no label image or ROI zip matches"


def _square_template(size: int) -> bytes:
    pts = np.array([[0, 0], [size, 0], [size, size], [0, size]], np.int32)
    return roifile.ImagejRoi.frompoints(pts, name="sq").tobytes()


def _at(template: bytes, x: int, y: int) -> bytes:
    """The template ROI moved to top-left corner (x, y): header top, left, bottom, right."""
    data = bytearray(template)
    top, left, bottom, right = struct.unpack(">hhhh", data[8:16])
    struct.pack_into(">hhhh", data, 8, y, x, y + bottom - top, x + right - left)
    return bytes(data)


def _write_zip(path: Path, entries: list[tuple[str, bytes]]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for name, data in entries:
            zf.writestr(name, data)
    return path


def _bulk_archive(path: Path) -> tuple[Path, int]:
    """20,200 4x4-pixel squares on a 2000x2000 image, with duplicates, clipped and outside ones.

    * 20,000 squares on a 10 px grid (rows y < 1000), none touching another;
    * 100 copies of the first 100 grid squares at the end: those 100 are entirely covered;
    * 50 squares across the right border (x 1998..2002): 2 of their 4 columns are inside;
    * 50 squares at x = 2100: they cover no pixel.
    """
    template = _square_template(4)
    entries = [(f"g{i:05d}.roi", _at(template, 10 * (i % 200), 10 * (i // 200))) for i in range(20_000)]
    entries += [(f"c{i:05d}.roi", _at(template, 1998, 1000 + 10 * i)) for i in range(50)]
    entries += [(f"o{i:05d}.roi", _at(template, 2100, 1000 + 10 * i)) for i in range(50)]
    entries += [(f"d{i:05d}.roi", _at(template, 10 * i, 0)) for i in range(100)]
    return _write_zip(path, entries), len(entries)


def test_template_positions_decode_as_written():
    roi = roifile.ImagejRoi.frombytes(_at(_square_template(4), 1998, 1010))
    np.testing.assert_array_equal(roi.coordinates(), [[1998, 1010], [2002, 1010], [2002, 1014], [1998, 1014]])


@pytest.fixture(scope="module")
def bulk(tmp_path_factory) -> Path:
    path, n_entries = _bulk_archive(tmp_path_factory.mktemp("bulk") / "rois.zip")
    assert n_entries == 20_200
    return path


def test_bulk_archive_is_rasterised_exactly_and_summarised_in_one_line(bulk, caplog):
    path = bulk
    caplog.set_level(logging.DEBUG)
    t0 = time.perf_counter()
    labels = read_roi_zip(path, (2000, 2000))  # no notes list: the summary is logged
    seconds = time.perf_counter() - t0
    print(f"20,200 ROIs rasterised in {seconds:.2f} s")
    counts = np.bincount(labels.ravel())
    present = np.flatnonzero(counts[1:]) + 1
    # 20,000 grid squares - 100 covered + 100 copies + 50 clipped; the 50 outside take no number
    assert len(present) == 20_050
    assert labels.max() == 20_150 and counts[1:101].sum() == 0  # the covered first 100 left gaps
    areas = counts[present]
    assert (areas == 16).sum() == 20_000 and (areas == 8).sum() == 50  # clipped: 2 x 4 pixels
    np.testing.assert_array_equal(labels[0:4, 0:4], 20_051)  # the first copy (after 20,050 ROIs)
    np.testing.assert_array_equal(labels[1000:1004, 1998:2000], 20_001)  # first clipped square
    records = [r for r in caplog.records if r.name == reimport.log.name]
    assert len(records) == 1 and records[0].levelno == logging.WARNING
    line = records[0].getMessage()
    assert "\n" not in line and str(path) in line
    assert "50 ROIs were partly outside the 2000x2000 image (clipped)" in line
    assert "50 ROIs cover no pixel" in line and "'o00000.roi'" in line
    assert "100 ROIs are entirely covered by later ROIs" in line and "'g00000.roi'" in line
    assert "overlap later ROIs" not in line  # the copies cover the originals entirely
    assert seconds < 30, f"20,200 small ROIs took {seconds:.1f} s"


def test_import_edited_passes_the_summary_as_one_problem(bulk, tmp_path):
    folder = tmp_path / "edited"
    folder.mkdir()
    (folder / "img.zip").symlink_to(bulk)
    for i in range(5):
        (folder / f"stray{i}.tif").write_bytes(b"x")
    edited, problems = import_edited(folder, ["img"], {"img": (2000, 2000)})
    assert set(edited) == {"img"} and len(np.unique(edited["img"])) - 1 == 20_050
    assert len(problems) == 2, problems  # the archive's summary + one line for the 5 stray files
    assert sum("img.zip" in p for p in problems) == 1
    (stray,) = [p for p in problems if "stray" in p]
    assert "5 files" in stray and "matches no image name" in stray


def test_big_outline_with_many_vertices_is_fast_and_exact(tmp_path):
    # skimage.draw.polygon tests every pixel of the bounding box against every edge: ~70 s here
    angle = np.linspace(0, 2 * np.pi, 4000, endpoint=False)
    pts = np.c_[1000 + 900 * np.cos(angle), 1000 + 900 * np.sin(angle)].astype(np.float32)
    path = _write_zip(tmp_path / "big.zip", [("big.roi", roifile.ImagejRoi.frompoints(pts).tobytes())])
    t0 = time.perf_counter()
    labels = read_roi_zip(path, (2000, 2000), notes=[])
    seconds = time.perf_counter() - t0
    assert seconds < 10, f"one 4000-vertex ROI took {seconds:.1f} s"
    yy, xx = np.mgrid[0:2000, 0:2000]
    inside = shapely.contains_xy(shapely.Polygon(pts.astype(np.float64)), xx.ravel() + 0.5, yy.ravel() + 0.5)
    assert inside.sum() > 2_500_000
    np.testing.assert_array_equal(labels.ravel() == 1, inside)


def test_subpixel_polygons_fill_the_pixels_whose_centres_are_inside(tmp_path):
    rng = np.random.default_rng(3)
    entries, outlines = [], []
    for i in range(40):
        n = int(rng.integers(3, 15))
        angle = np.sort(rng.uniform(0, 2 * np.pi, n))
        radius = rng.uniform(2, 25, n)
        centre = rng.uniform(-10, 90, 2)
        pts = np.c_[centre[0] + radius * np.cos(angle), centre[1] + radius * np.sin(angle)].astype(np.float32)
        entries.append((f"{i:02d}.roi", roifile.ImagejRoi.frompoints(pts).tobytes()))
        outlines.append(pts.astype(np.float64))
    labels = read_roi_zip(_write_zip(tmp_path / "s.zip", entries), (70, 80), notes=[])
    yy, xx = np.mgrid[0:70, 0:80]
    expected = np.zeros(70 * 80, np.int32)
    number = 0
    for pts in outlines:  # later ROIs win; ROIs without pixels take no number
        inside = shapely.contains_xy(shapely.Polygon(pts), xx.ravel() + 0.5, yy.ravel() + 0.5)
        if inside.any():
            number += 1
            expected[inside] = number
    assert number > 20
    np.testing.assert_array_equal(labels.ravel(), expected)


def test_rois_sharing_an_edge_split_its_pixels_without_overlap(tmp_path):
    # the diagonal passes through pixel centres: each goes to exactly one triangle, the one on its
    # right (java.awt's rule: a centre on the outline is inside when the area to its right is)
    lower = roifile.ImagejRoi.frompoints(np.array([[0, 0], [10, 10], [0, 10]], np.int32)).tobytes()
    upper = roifile.ImagejRoi.frompoints(np.array([[0, 0], [10, 0], [10, 10]], np.int32)).tobytes()
    notes: list[str] = []
    labels = read_roi_zip(_write_zip(tmp_path / "t.zip", [("a.roi", upper), ("b.roi", lower)]), (12, 12),
                          notes=notes)
    assert notes == []  # no overlap to report
    assert (labels[:10, :10] > 0).all() and (labels[10:, :] == 0).all() and (labels[:, 10:] == 0).all()
    assert np.bincount(labels.ravel()).tolist() == [144 - 100, 55, 45]  # not "the later ROI wins"
    assert (np.diag(labels)[:10] == 1).all()


def test_partial_overlaps_are_counted_not_listed(tmp_path):
    template = _square_template(6)
    entries = [(f"{i:04d}.roi", _at(template, 3 * i, 0)) for i in range(300)]  # each overlaps the next
    notes: list[str] = []
    labels = read_roi_zip(_write_zip(tmp_path / "o.zip", entries), (10, 1000), notes=notes)
    assert len(notes) == 1
    assert "299 ROIs overlap later ROIs, which win the shared pixels: '0000.roi', '0001.roi', '0002.roi', ..." \
        in notes[0]
    assert np.bincount(labels.ravel())[1:].tolist() == [18] * 299 + [36]


def test_rasterising_budget_refuses_stacked_rois(tmp_path, monkeypatch):
    template = _square_template(100)
    path = _write_zip(tmp_path / "stacked.zip", [(f"{i:03d}.roi", _at(template, 0, 0)) for i in range(300)])
    assert read_roi_zip(path, (100, 100), notes=[]).max() == 300  # 3 million pixels: within the default
    monkeypatch.setattr(reimport, "RASTER_WORK_MIN", 1_000_000)
    with pytest.raises(ReimportError) as err:
        read_roi_zip(path, (100, 100), notes=[])
    message = str(err.value)
    assert message.startswith(f"{path}: its ROIs are too costly to rasterise")
    assert "RASTER_WORK_FACTOR = 8" in message and "RASTER_WORK_MIN = 1000000" in message


def test_far_away_coordinates_are_refused(tmp_path):
    pts = np.array([[0, 0], [3e8, 0], [0, 5]], np.float32)
    path = _write_zip(tmp_path / "far.zip", [("far.roi", roifile.ImagejRoi.frompoints(pts).tobytes())])
    with pytest.raises(ReimportError, match=r"far\.zip: entry 'far\.roi' has coordinates beyond"):
        read_roi_zip(path, (10, 10))


# ---------------------------------------------------------------- mode=reimport messages

def _settings(tmp_path: Path, edited: Path, names=("a", "b")):
    from hydra import compose, initialize_config_module

    from opsef_opt.config import validate
    from opsef_opt.resolvers import register_resolvers

    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for name in names:
        tifffile.imwrite(images / f"{name}.tif", rng.integers(0, 1000, (64, 64), dtype=np.uint16))
    conf = tmp_path / "conf" / "study"
    conf.mkdir(parents=True)
    conf.joinpath("edits.yaml").write_text(f"""name: edits
n_trials: 2
seed: 0
images:
  folder: {images}
search:
  sampler: grid
  models:
    classical:
      params: {{threshold: [otsu]}}
apply:
  analysis: false
  export: {{imagej: false, qupath: false}}
""")
    register_resolvers()
    with initialize_config_module(config_module="opsef_opt.conf", version_base="1.3"):
        cfg = compose(config_name="config", overrides=[
            "study=edits", f"hydra.searchpath=[file://{tmp_path / 'conf'}]", "mode=reimport",
            f"edited={edited}", f"studies_dir={tmp_path / 'studies'}"])
    return validate(cfg, base=tmp_path)


def _slip_archive(path: Path) -> Path:
    square = _at(_square_template(4), 2, 2)
    return _write_zip(path, [("0001.roi", square), ("../evil.roi", square)])


def test_refused_archive_says_what_is_wrong_not_that_nothing_matched(tmp_path):
    from opsef_opt.batch.run import ApplyError
    from opsef_opt.batch.reimport_mode import run_reimport

    edited = tmp_path / "edited"
    edited.mkdir()
    archive = _slip_archive(edited / "a.zip")
    with pytest.raises(ApplyError) as err:
        run_reimport(_settings(tmp_path, edited))
    message = str(err.value)
    assert NO_MATCH not in message
    assert f"{archive}: unsafe entry name '../evil.roi'" in message and "'..' component" in message


def test_too_many_entries_names_the_archive_and_the_limit(tmp_path, monkeypatch):
    from opsef_opt.batch.run import ApplyError
    from opsef_opt.batch.reimport_mode import run_reimport

    edited = tmp_path / "edited"
    edited.mkdir()
    template = _square_template(2)
    archive = _write_zip(edited / "b_ROIs.zip", [(f"{i:03d}.roi", _at(template, 3 * i, 0)) for i in range(21)])
    monkeypatch.setattr(reimport, "MAX_ENTRIES", 20)
    with pytest.raises(ApplyError) as err:
        run_reimport(_settings(tmp_path, edited))
    message = str(err.value)
    assert NO_MATCH not in message
    assert f"{archive}: 21 entries, more than the limit of 20" in message


def test_true_no_match_keeps_the_no_match_message(tmp_path):
    from opsef_opt.batch.run import ApplyError
    from opsef_opt.batch.reimport_mode import run_reimport

    edited = tmp_path / "edited"
    edited.mkdir()
    _slip_archive(edited / "unrelated.zip")  # would be refused, but matches no image: never read
    with pytest.raises(ApplyError) as err:
        run_reimport(_settings(tmp_path, edited))
    message = str(err.value)
    assert NO_MATCH in message
    assert "unrelated.zip: matches no image name" in message and "unsafe" not in message


@pytest.mark.slow  # a whole run: MLflow store, outputs (~10-20 s)
def test_one_refused_archive_fails_its_image_and_the_other_is_imported(tmp_path, caplog):
    from opsef_opt.batch.reimport_mode import run_reimport

    edited = tmp_path / "edited"
    edited.mkdir()
    archive = _slip_archive(edited / "a.zip")
    template = _square_template(4)
    entries = [(f"{i:03d}.roi", _at(template, 6 * (i % 10), 6 * (i // 10))) for i in range(100)]
    entries += [(f"x{i:03d}.roi", _at(template, 62, 6 * i)) for i in range(10)]  # clipped at x = 64
    _write_zip(edited / "b.zip", entries)
    caplog.set_level(logging.INFO)
    report = run_reimport(_settings(tmp_path, edited))
    assert report.done == ["b"] and set(report.failed) == {"a"}
    assert report.failed["a"].startswith(f"{archive}: unsafe entry name '../evil.roi'")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings  # b.zip's 10 clipped ROIs: one line
    assert "b.zip" in warnings[0] and "10 ROIs were partly outside the 64x64 image (clipped)" in warnings[0]
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [report.failed["a"]]
    regions = (report.run_dir / "images" / "b" / "regions.csv").read_text().splitlines()
    assert len(regions) - 1 == 110
