"""The apply and reimport modes through the real CLI, on real images."""
from __future__ import annotations

import json
import shutil
import time

import numpy as np
import pandas as pd
import pytest
import tifffile
from mlflow import MlflowClient

from opsef_opt.batch.outputs import read_provenance

from conftest import popen_cli, run_cli, shared

PIPELINE = """\
pipeline: gaussian(sigma=1.0) | classical(min_distance=5,threshold=otsu)
reshape: {bin: 1, scale: 1.0, substack: null, tile_size: null, tile_overlap: 0}
preprocess:
- {slot: filter, name: gaussian, sigma: 1.0}
model: {label: classical, family: classical, init: {}, params: {threshold: otsu, min_distance: 5}}
"""


def _study(tmp, images, apply: str = "", extra: str = "") -> list[str]:
    conf = tmp / "conf" / "study"
    conf.mkdir(parents=True, exist_ok=True)
    conf.joinpath("applied.yaml").write_text(f"""name: applied
n_trials: 2
seed: 0
images:
  folder: {images}
{extra}
search:
  sampler: grid
  models:
    classical:
      params: {{threshold: [otsu]}}
apply:
  tile: {{size: 256, overlap: 48}}
{apply}
""")
    (tmp / "pipeline.yaml").write_text(PIPELINE)
    return ["study=applied", f"hydra.searchpath=[file://{tmp / 'conf'}]", "mode=apply",
            f"pipeline={tmp / 'pipeline.yaml'}", "apply_run=r1"]


def _images(tmp, names=("raw/nuclei_plk1.tif", "gt/dsb2018_256/image.tif", "gt/mitocheck/image.tif")):
    folder = tmp / "images"
    folder.mkdir()
    for n in names:
        stem = n.split("/")[-2] if n.endswith("image.tif") else n.split("/")[-1][:-4]
        shutil.copy(shared(*n.split("/")), folder / f"{stem}.tif")
    return folder


def test_apply_writes_per_image_outputs_dataset_table_plots_and_an_mlflow_run(tmp_path):
    args = _study(tmp_path, _images(tmp_path), apply="""  filter: {area: [20, null]}
  analysis: {scatter: [[area, mean_intensity]], pca: true, tsne: true, cluster: {method: kmeans, n_clusters: 2}}
  export: {imagej: true, qupath: true, annotatorj: true}""")
    r = run_cli(*args, cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    run = tmp_path / "studies" / "applied" / "apply" / "r1"
    objects = pd.read_csv(run / "objects.csv")
    assert pd.read_parquet(run / "objects.parquet").shape == objects.shape
    assert set(objects["image"]) == {"nuclei_plk1", "dsb2018_256", "mitocheck"}
    assert "cluster" in objects and objects["area"].min() >= 20
    for name in ("nuclei_plk1", "dsb2018_256", "mitocheck"):
        d = run / "images" / name
        labels = tifffile.imread(d / "labels.ome.tif")
        kept, removed = pd.read_csv(d / "regions.csv"), pd.read_csv(d / "removed.csv")
        # every object of the label image is reported once, kept or removed (and why)
        assert sorted([*kept["label"], *removed["label"]]) == list(range(1, labels.max() + 1))
        assert (removed["area"] < 20).all() and removed["removed_by"].str.contains("area").all()
        assert np.bincount(labels.ravel())[kept["label"]].tolist() == kept["area"].astype(int).tolist()
        prov = read_provenance(d / "labels.ome.tif")
        assert prov["pipeline"].startswith("gaussian(sigma=1.0)") and prov["image"] == name
        assert (d / "overlay.png").stat().st_size > 0 and (d / "rois.zip").is_file()
        assert len(json.loads((d / "objects.geojson").read_text())["features"]) == len(kept)
        assert json.loads((d / "done.json").read_text())["n_kept"] == len(kept)
    # the 682 x 682 image ran in tiles (256 px windows, 48 px overlap); the 256 x 256 one whole
    assert json.loads((run / "images" / "nuclei_plk1" / "done.json").read_text())["tiles"] > 1
    assert json.loads((run / "images" / "dsb2018_256" / "done.json").read_text())["tiles"] == 1
    assert {p.name for p in (run / "plots").glob("*.png")} >= {"scatter_area_vs_mean_intensity.png", "pca.png",
                                                                "tsne.png"}
    client = MlflowClient(f"sqlite:///{tmp_path / 'studies' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("applied")
    (mrun,) = client.search_runs([exp.experiment_id], "tags.`opsef.mode` = 'apply'")
    assert mrun.data.metrics["n_objects"] == len(objects) and mrun.data.metrics["megapixels_per_s"] > 0
    logged = {a.path for a in client.list_artifacts(mrun.info.run_id)}
    assert {"objects.csv", "objects.parquet", "pipeline.yaml", "plots", "images"} <= logged
    assert "Mpx/s" in r.stdout


def test_interrupted_apply_resumes_and_a_bad_image_fails_alone(tmp_path):
    folder = _images(tmp_path)
    (folder / "broken.tif").write_bytes(b"II*\x00" + b"\x00" * 64)  # a truncated TIFF
    args = _study(tmp_path, folder)
    run = tmp_path / "studies" / "applied" / "apply" / "r1" / "images"
    p = popen_cli(*args, cwd=tmp_path)
    deadline = time.time() + 120
    while time.time() < deadline and not list(run.glob("*/done.json")):
        time.sleep(0.2)
    p.kill()
    p.wait()
    first = {d.parent.name: d.stat().st_mtime_ns for d in run.glob("*/done.json")}
    assert 0 < len(first) < 3, f"the kill should come after the first image, before the last: {first}"
    r = run_cli(*args, cwd=tmp_path, timeout=300)
    assert r.returncode == 4, r.stdout + r.stderr
    assert "broken.tif" in r.stderr and "failed" in r.stdout
    again = {d.parent.name: d.stat().st_mtime_ns for d in run.glob("*/done.json")}
    assert set(again) == {"nuclei_plk1", "dsb2018_256", "mitocheck"}
    assert all(again[k] == v for k, v in first.items())  # finished images were not redone
    assert f"{len(first)} already done" in r.stdout
    assert not list(run.glob("*/.labels.int32"))  # no scratch left behind


@pytest.mark.slow
def test_two_dask_workers_give_the_same_labels_as_one(tmp_path):
    args = _study(tmp_path, _images(tmp_path, ("raw/nuclei_plk1.tif", "gt/dsb2018_256/image.tif")))
    r = run_cli(*args, cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    r = run_cli(*args[:-1], "apply_run=r2", "n_workers=2", cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "2 worker(s)" in r.stdout
    base = tmp_path / "studies" / "applied" / "apply"
    for name in ("nuclei_plk1", "dsb2018_256"):
        one = tifffile.imread(base / "r1" / "images" / name / "labels.ome.tif")
        two = tifffile.imread(base / "r2" / "images" / name / "labels.ome.tif")
        np.testing.assert_array_equal(one, two)


def test_classification_by_a_channel_mask_and_second_channel_quantification(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    shutil.copy(shared("raw", "fluorescence_multichannel_example.tif"), folder / "two_channels.tif")
    args = _study(tmp_path, folder, extra="  channel: 0", apply="""  classify:
    mask: {channel: 1, sigma: 2.0, otsu_factor: 1.0}
    rule: centroid
    names: [positive, negative]
  quantify: [1]
  analysis: false""")
    r = run_cli(*args, cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    d = tmp_path / "studies" / "applied" / "apply" / "r1" / "images" / "two_channels"
    kept = pd.read_csv(d / "regions.csv")
    assert set(kept["class"]) <= {"positive", "negative"} and len(kept)
    assert "ch1.mean_intensity" in kept
    # objects called positive are brighter in channel 1 than negative ones, on average
    if {"positive", "negative"} <= set(kept["class"]):
        means = kept.groupby("class")["ch1.mean_intensity"].mean()
        assert means["positive"] > means["negative"]
        assert (d / "regions_positive.csv").is_file() and (d / "regions_negative.csv").is_file()


def test_reimported_roi_zip_gives_the_same_objects(tmp_path):
    args = _study(tmp_path, _images(tmp_path, ("gt/dsb2018_256/image.tif",)))
    assert run_cli(*args, cwd=tmp_path, timeout=300).returncode == 0
    d = tmp_path / "studies" / "applied" / "apply" / "r1" / "images" / "dsb2018_256"
    edited = tmp_path / "edited"
    edited.mkdir()
    shutil.copy(d / "rois.zip", edited / "dsb2018_256.zip")
    r = run_cli(*args[:-2], "mode=reimport", f"edited={edited}", cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    back = tmp_path / "studies" / "applied" / "apply" / "edited-edited" / "images" / "dsb2018_256"
    before, after = pd.read_csv(d / "regions.csv"), pd.read_csv(back / "regions.csv")
    assert len(after) == len(before)
    assert abs(after["area"].sum() - before["area"].sum()) / before["area"].sum() < 0.1


def test_apply_config_errors_are_caught_before_work(tmp_path):
    args = _study(tmp_path, _images(tmp_path, ("gt/mitocheck/image.tif",)), apply="  filter: {roundness: [0, 1]}")
    r = run_cli(*args, cwd=tmp_path)
    assert r.returncode == 2 and "study.apply.filter.roundness: unknown property" in r.stderr, r.stderr
    args = _study(tmp_path, tmp_path / "images")
    r = run_cli(*args[:-2], "mode=apply", cwd=tmp_path)  # no search yet, no pipeline given
    assert r.returncode == 2 and "best.yaml not found" in r.stderr and "pipeline=" in r.stderr, r.stderr


HE_PIPELINE = """\
pipeline: stain(stain=hematoxylin) | classical(min_distance=4,threshold=otsu)
reshape: {bin: 1, scale: 1.0, substack: null, tile_size: null, tile_overlap: 0}
preprocess:
- {slot: color, name: stain, stain: hematoxylin}
model: {label: classical, family: classical, init: {}, params: {threshold: otsu, min_distance: 4}}
"""


def test_tiled_segmentation_of_a_real_image_matches_the_untiled_one(tmp_path):
    """H&E image, 1484 x 1380: 512 px tiles use the whole image's ranges and threshold, so they agree."""
    from stardist.matching import matching

    args = _study(tmp_path, _images(tmp_path, ("raw/he_example.tif",)),
                  apply="  analysis: false\n  export: {imagej: false, qupath: false}")
    (tmp_path / "pipeline.yaml").write_text(HE_PIPELINE)
    runs = {"whole": "study.apply.tile.size=2048", "tiled": "study.apply.tile.size=512"}
    for name, tile in runs.items():
        r = run_cli(*args[:-1], f"apply_run={name}", tile, "study.apply.tile.overlap=64", cwd=tmp_path, timeout=300)
        assert r.returncode == 0, r.stdout + r.stderr
    base = tmp_path / "studies" / "applied" / "apply"
    whole = tifffile.imread(base / "whole" / "images" / "he_example" / "labels.ome.tif")
    tiled = tifffile.imread(base / "tiled" / "images" / "he_example" / "labels.ome.tif")
    prov = read_provenance(base / "tiled" / "images" / "he_example" / "labels.ome.tif")
    assert prov["tiles"] == 16 and "threshold" in prov["image_stats"]["model"]
    assert read_provenance(base / "whole" / "images" / "he_example" / "labels.ome.tif")["tiles"] == 1
    m = matching(whole, tiled, thresh=0.5)
    print(f"tiled vs untiled: F1@0.5 {m.f1:.4f} ({m.n_true} vs {m.n_pred} objects)")
    assert whole.max() > 100 and m.f1 >= 0.97
