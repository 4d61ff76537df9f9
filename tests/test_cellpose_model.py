"""Cellpose adapter and the tiny from-scratch trainer, on real DSB 2018 nuclei.

No pretrained Cellpose weights are needed (or downloadable offline): a tiny
net is trained once per module on three 256x256 tiles of stardist's 512x512
DSB image and evaluated on the fourth tile and on another DSB image.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import shared
from opsef_opt.segment import cellpose_model as cpm
from opsef_opt.segment.base import ModelUnavailable
from opsef_opt.segment.registry import load_segmenter

pytestmark = pytest.mark.skipif(cpm.cellpose_version() is None, reason="cellpose is not installed")

TRAIN_TILES = [(slice(0, 256), slice(0, 256)), (slice(0, 256), slice(256, 512)), (slice(256, 512), slice(0, 256))]
HELD_OUT = (slice(256, 512), slice(256, 512))


def _unit(img: np.ndarray) -> np.ndarray:
    img = img.astype(np.float32)
    return (img - img.min()) / (img.max() - img.min())


@pytest.fixture(scope="module")
def dsb512():
    from stardist.data import test_image_nuclei_2d

    return test_image_nuclei_2d(return_mask=True)


@pytest.fixture(scope="module")
def tiny_model(dsb512, tmp_path_factory):
    """Path of a tiny Cellpose net trained here from scratch (30-50 s with the Cellpose import)."""
    from opsef_opt.train.cellpose_train import train_cellpose

    img, lbl = dsb512
    labels = [lbl[t].copy() for t in TRAIN_TILES]
    before = [x.copy() for x in labels]
    t0 = time.perf_counter()
    path = train_cellpose([img[t] for t in TRAIN_TILES], labels, tmp_path_factory.mktemp("cp"), n_epochs=100)
    print(f"\ntrained tiny cellpose net in {time.perf_counter() - t0:.1f} s -> {path}")
    assert all(np.array_equal(a, b) for a, b in zip(labels, before)), "train_cellpose modified the labels"
    return path


@pytest.mark.slow
def test_trained_model_segments_held_out_tile(tiny_model, dsb512):
    from opsef_opt.score.gt import instance_metrics

    img, lbl = dsb512
    model = load_segmenter("cellpose", model=str(tiny_model), device="cpu")
    assert model.device == "cpu"
    assert model.widths == [2, 8, 16, 32, 64, 256]  # architecture rebuilt from the file
    assert model.diam_mean == pytest.approx(12.0)
    t0 = time.perf_counter()
    seg = model(_unit(img[HELD_OUT]), "YX")
    print(f"inference 256x256: {time.perf_counter() - t0:.2f} s")
    m = instance_metrics(lbl[HELD_OUT], seg.labels)
    print(f"held-out tile: F1={m['f1']:.3f} ({m['n_pred']:.0f} found, {m['n_true']:.0f} true)")
    assert seg.labels.dtype == np.int32 and seg.labels.shape == (256, 256)
    assert m["f1"] >= 0.8  # measured 0.91 (1 training thread), 0.95 (2 threads)
    ids = set(np.unique(seg.labels)) - {0}
    assert set(seg.confidence) == ids
    assert all(0.0 <= c <= 1.0 for c in seg.confidence.values())
    # per object: mean cell probability x flow agreement (Cellpose's flow error, 0 at its default limit 0.4)
    prob, err = seg.extra["cell_probability"], seg.extra["flow_error"]
    assert set(prob) == set(err) == ids
    assert all(0.5 <= p <= 1.0 for p in prob.values())  # mean cell probability inside objects
    assert all(0.0 <= e for e in err.values()) and np.median(list(err.values())) < 0.4
    for i in ids:
        assert seg.confidence[i] == pytest.approx(prob[i] * min(max(1 - err[i] / 0.4, 0.0), 1.0))
    # the confidence only reads the masks: the labels are Cellpose's own
    masks = model._model.eval(_unit(img[HELD_OUT]), diameter=model.default_diameter, flow_threshold=0.4,
                              cellprob_threshold=0.0, normalize=True, channels=[0, 0])[0]
    assert np.array_equal(seg.labels, masks)

    t0 = time.perf_counter()
    model(_unit(img), "YX")
    print(f"inference 512x512: {time.perf_counter() - t0:.2f} s")


@pytest.mark.slow
def test_other_image_with_its_diameter(tiny_model):
    """A different DSB image whose nuclei are ~9 px (training: ~23 px): ``diameter`` rescales it."""
    import tifffile

    from opsef_opt.score.gt import instance_metrics

    folder = shared("gt", "dsb2018_256")
    img = tifffile.imread(folder / "image.tif")
    truth = tifffile.imread(folder / "labels.tif")
    model = load_segmenter("cellpose", model=str(tiny_model), device="cpu")
    f1 = instance_metrics(truth, model(_unit(img), "YX", diameter=9.0).labels)["f1"]
    print(f"dsb2018_256 at diameter 9: F1={f1:.3f}")
    assert f1 >= 0.65  # measured 0.79-0.81


@pytest.mark.slow
def test_model_loaded_once_per_process(tiny_model):
    a = load_segmenter("cellpose", model=str(tiny_model), device="cpu")
    b = load_segmenter("cellpose", model=str(tiny_model), device="cpu")
    assert a is b


@pytest.mark.slow
def test_scale_and_diameter_reach_cellpose(tiny_model, monkeypatch):
    model = load_segmenter("cellpose", model=str(tiny_model), device="cpu")
    calls = []
    real_eval = model._model.eval

    def spy(x, **kw):  # records what reaches Cellpose, then runs it
        calls.append(kw)
        return real_eval(x, **kw)

    monkeypatch.setattr(model._model, "eval", spy)
    img = np.zeros((32, 32), np.float32)
    model(img, "YX", scale=0.5)
    assert calls[-1]["diameter"] == pytest.approx(2 * model.diam_mean)
    assert calls[-1]["channels"] == [0, 0]
    assert calls[-1]["compute_masks"] is False  # the network only: its flows are cached and post-processed
    model(img, "YX", diameter=17.0, flow_threshold=0.8, cellprob_threshold=-1.0)
    assert calls[-1]["diameter"] == 17.0
    # the thresholds act on the network's flows after it ran (Cellpose's own mask step; compared
    # pixel for pixel with eval(flow_threshold=..., cellprob_threshold=...) in test_inference_split)
    assert "flow_threshold" not in calls[-1] and "cellprob_threshold" not in calls[-1]
    model(img, "YX")  # neither: the training objects' diameter stored in the file
    assert calls[-1]["diameter"] == pytest.approx(model.default_diameter)
    assert 15 < model.default_diameter < 30  # DSB nuclei in the training tiles (~23 px)
    with pytest.raises(ValueError, match="either diameter .* or scale"):
        model(img, "YX", diameter=17.0, scale=0.5)


def _empty_model_dir(tmp_path, monkeypatch) -> Path:
    """Point Cellpose's model folder at an empty folder, as Cellpose would see it."""
    folder = tmp_path / "cellpose_models"
    folder.mkdir()
    monkeypatch.setenv("CELLPOSE_LOCAL_MODELS_PATH", str(folder))
    if "cellpose.models" in sys.modules:  # read at import: patch what the imported module uses
        monkeypatch.setattr(sys.modules["cellpose.models"], "MODEL_DIR", folder)
    return folder


def test_missing_builtin_weights_fail_fast_offline(tmp_path, monkeypatch):
    folder = _empty_model_dir(tmp_path, monkeypatch)
    ok, reason = cpm.CellposeSegmenter.availability(model="nuclei")
    assert not ok
    for part in ("nucleitorch_0", str(folder), "https://www.cellpose.org/models/nucleitorch_0",
                 "CELLPOSE_LOCAL_MODELS_PATH", "init.model=/path/to/model"):
        assert part in reason
    t0 = time.perf_counter()
    with pytest.raises(ModelUnavailable) as err:
        cpm.CellposeSegmenter(model="nuclei")
    assert time.perf_counter() - t0 < 2
    assert str(err.value).startswith(reason) and "[no download: " in str(err.value) and "\n" not in str(err.value)
    assert list(folder.iterdir()) == []  # nothing downloaded


@pytest.mark.slow
def test_builtin_name_loads_the_file_cellpose_uses(tmp_path, monkeypatch):
    """A built-in name whose file is present loads through Cellpose (stand-in weights: no download here)."""
    import torch
    from cellpose.resnet_torch import CPnet

    folder = _empty_model_dir(tmp_path, monkeypatch)
    torch.manual_seed(0)
    CPnet([2, 32, 64, 128, 256], 3, sz=3, diam_mean=17.0).save_model(str(folder / "nucleitorch_0"))
    ok, reason = cpm.CellposeSegmenter.availability(model="nuclei")
    assert ok and str(folder / "nucleitorch_0") in reason
    model = cpm.CellposeSegmenter(model="nuclei", device="cpu")
    assert model._model.pretrained_model == str(folder / "nucleitorch_0")
    assert model.widths == [2, 32, 64, 128, 256]
    assert model.diam_mean == model.default_diameter == 17.0  # built-ins run at diam_mean by default
    seg = model(np.random.default_rng(0).random((64, 64), dtype=np.float32), "YX", scale=2.0)
    assert seg.labels.shape == (64, 64) and seg.extra["diameter"] == pytest.approx(8.5)
    assert sorted(p.name for p in folder.iterdir()) == ["nucleitorch_0"]  # nothing fetched


def test_missing_weights_in_fresh_process(tmp_path):
    """Cellpose reads CELLPOSE_LOCAL_MODELS_PATH at import: check a fresh interpreter, as a study runs."""
    folder = tmp_path / "models"
    folder.mkdir()
    code = (
        "import json, sys, time\n"
        "from opsef_opt.segment.cellpose_model import CellposeSegmenter\n"
        "from opsef_opt.segment.base import ModelUnavailable\n"
        "t0 = time.perf_counter()\n"
        "try:\n"
        "    CellposeSegmenter(model='cyto3')\n"
        "except ModelUnavailable as e:\n"
        "    msg = str(e)\n"
        "print(json.dumps({'s': time.perf_counter() - t0, 'msg': msg,\n"
        "                  'imported': [m for m in ('torch', 'cellpose') if m in sys.modules]}))\n"
    )
    env = {**os.environ, "CELLPOSE_LOCAL_MODELS_PATH": str(folder), "HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["s"] < 2
    assert f"weights file cyto3 not found in {folder}" in res["msg"]
    assert "https://www.cellpose.org/models/cyto3" in res["msg"]
    assert res["imported"] == []  # failed before importing torch or cellpose: no download attempt
    assert list(folder.iterdir()) == []


def test_missing_custom_file_is_an_error_not_a_cyto3_download(tmp_path, monkeypatch):
    folder = _empty_model_dir(tmp_path, monkeypatch)
    missing = tmp_path / "no_such_model"
    ok, reason = cpm.CellposeSegmenter.availability(model=str(missing))
    assert not ok and str(missing) in reason and "does not exist" in reason
    t0 = time.perf_counter()
    with pytest.raises(ModelUnavailable, match="does not exist"):
        cpm.CellposeSegmenter(model=str(missing))
    assert time.perf_counter() - t0 < 2
    assert list(folder.iterdir()) == []


def test_wrong_version_names_and_non_model_files(tmp_path):
    ok, reason = cpm.CellposeSegmenter.availability(model="cpsam")
    if cpm.cellpose_version().startswith("3."):
        assert not ok and "cellpose>=4" in reason
    junk = tmp_path / "notes.txt"
    junk.write_text("not a model")
    with pytest.raises(ModelUnavailable, match="could not be read as a Cellpose model"):
        cpm.CellposeSegmenter(model=str(junk), device="cpu")


def test_import_is_light():
    code = "import sys, opsef_opt.segment.cellpose_model; print([m for m in ('torch', 'cellpose') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stderr


def test_declared_params():
    names = [p.name for p in cpm.CellposeSegmenter.params]
    assert names == ["diameter", "scale", "flow_threshold", "cellprob_threshold", "normalize", "invert"]
    assert [p.name for p in cpm.CellposeSegmenter.init_params] == ["model", "device"]
    assert cpm.CellposeSegmenter.family == "cellpose"
