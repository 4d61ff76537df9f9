"""StarDist adapter: real inference with a tiny model trained here, offline behaviour of pretrained names.

Pretrained StarDist weights cannot be downloaded in CI, so a tiny StarDist2D
is trained once per module (about a minute on 2 CPU cores) on the top half of
StarDist's 512 x 512 DSB 2018 nuclei image (125 manually labelled nuclei,
CC0) and evaluated on the unseen bottom part.
"""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
import zipfile

import numpy as np
import pytest

from opsef_opt.score.gt import instance_metrics
from opsef_opt.segment import ModelUnavailable, load_segmenter
from opsef_opt.segment import stardist_model as sm
from opsef_opt.segment.stardist_model import PRETRAINED, StarDistSegmenter, n_tiles_for

pytest.importorskip("stardist")

# rows of the 512 x 512 image: train on [0, 256), validate on [256, 352), test on [352, 512)
TRAIN, VAL, TEST = slice(0, 256), slice(256, 352), slice(352, 512)
#: measured held-out F1 (IoU 0.5) of the tiny model: 0.82-0.87 (seeds 0-2; CPU runs vary slightly)
MIN_F1 = 0.7


@pytest.fixture(scope="module")
def nuclei():
    from stardist.data import test_image_nuclei_2d

    img, lbl = test_image_nuclei_2d(return_mask=True)
    return (img / img.max()).astype(np.float32), lbl.astype(np.int32)


@pytest.fixture(scope="module")
def trained(nuclei, tmp_path_factory):
    from opsef_opt.train.stardist_train import train_stardist

    img, lbl = nuclei
    t0 = time.perf_counter()
    folder = train_stardist([img[TRAIN]], [lbl[TRAIN]], tmp_path_factory.mktemp("stardist"), name="tiny",
                            val_images=[img[VAL]], val_labels=[lbl[VAL]], seed=0)
    print(f"\ntiny StarDist trained in {time.perf_counter() - t0:.1f} s -> {folder}")
    return folder


# ----------------------------------------------------------------------------- no TensorFlow needed

def test_import_does_not_load_tensorflow():
    code = ("import sys, opsef_opt.segment.stardist_model as m; "
            "m.StarDistSegmenter.availability(model='2D_versatile_fluo'); "
            "assert 'tensorflow' not in sys.modules and 'stardist.models' not in sys.modules, 'TF imported'")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


def test_n_tiles_bounds_tile_size():
    assert n_tiles_for((512, 512)) == (1, 1)
    assert n_tiles_for((1025, 300)) == (2, 1)
    assert n_tiles_for((3000, 1500, 3), "YXC") == (3, 2, 1)


def test_missing_pretrained_model_fails_fast_with_instructions(tmp_path, monkeypatch):
    home = tmp_path / "keras"  # an empty Keras cache (not even created)
    monkeypatch.setenv("KERAS_HOME", str(home))
    cache = home / "models" / "StarDist2D" / "2D_versatile_fluo"
    url = PRETRAINED["2D_versatile_fluo"]["url"]

    ok, reason = StarDistSegmenter.availability(model="2D_versatile_fluo")
    assert not ok and str(cache) in reason and url in reason

    t0 = time.perf_counter()
    with pytest.raises(ModelUnavailable) as e:
        StarDistSegmenter(model="2D_versatile_fluo", download=False)
    assert time.perf_counter() - t0 < 2.0
    msg = str(e.value)
    print(msg)
    assert "\n" not in msg
    assert f"looked in {cache} for 2D_versatile_fluo.zip" in msg and f"download {url}" in msg
    assert "study.search.models.<label>.init.model=/path/to/model_folder" in msg
    assert not home.exists()  # nothing created, in particular no empty model folders


def test_failed_download_leaves_no_empty_folders(tmp_path, monkeypatch):
    home = tmp_path / "keras"
    monkeypatch.setenv("KERAS_HOME", str(home))
    # a URL nothing listens on: the download attempt fails at once, with or without network
    bad = dict(PRETRAINED["2D_versatile_fluo"], url="https://127.0.0.1:9/python_2D_versatile_fluo.zip")
    monkeypatch.setitem(PRETRAINED, "2D_versatile_fluo", bad)
    t0 = time.perf_counter()
    with pytest.raises(ModelUnavailable, match="127.0.0.1:9"):
        StarDistSegmenter(model="2D_versatile_fluo", download=True)
    assert time.perf_counter() - t0 < 2.0
    assert not (home / "models").exists()


def test_unknown_name_and_incomplete_folder_are_unavailable(tmp_path):
    with pytest.raises(ModelUnavailable, match="neither a pretrained name"):
        StarDistSegmenter(model=str(tmp_path / "no_such_model"))
    folder = tmp_path / "no_weights"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    ok, reason = StarDistSegmenter.availability(model=str(folder))
    assert not ok and "incomplete" in reason
    with pytest.raises(ModelUnavailable, match=r"incomplete.*found config\.json"):
        StarDistSegmenter(model=str(folder))


# ----------------------------------------------------------------------------- real inference

@pytest.mark.slow
def test_trained_model_segments_held_out_nuclei(trained, nuclei):
    img, lbl = nuclei
    assert StarDistSegmenter.availability(model=str(trained))[0]
    model = load_segmenter("stardist", model=str(trained))
    assert load_segmenter("stardist", model=str(trained)) is model
    assert model.input_axes == ("YX",) and model.device in ("cpu", "cuda")

    t0 = time.perf_counter()
    result = model(img[TEST], "YX")
    print(f"held-out inference {time.perf_counter() - t0:.2f} s")
    assert result.labels.dtype == np.int32 and result.labels.shape == img[TEST].shape
    f1 = instance_metrics(lbl[TEST], result.labels)["f1"]
    print(f"held-out F1 at IoU 0.5: {f1:.3f}")
    assert f1 >= MIN_F1

    ids = set(np.unique(result.labels).tolist()) - {0}
    assert ids and set(result.confidence) == ids
    assert all(0.0 <= p <= 1.0 for p in result.confidence.values())
    # default thresholds are the optimised ones saved with the model
    saved = json.loads((trained / "thresholds.json").read_text())
    assert result.extra["prob_thresh"] == pytest.approx(saved["prob"])
    # a stricter probability threshold keeps fewer, more confident objects
    high = (1.0 + saved["prob"]) / 2
    strict = model(img[TEST], "YX", prob_thresh=high)
    assert strict.labels.max() < result.labels.max()
    assert all(p >= high for p in strict.confidence.values())

    with pytest.raises(ValueError, match="expects an image with axes YX"):
        model(np.repeat(img[TEST, :, None], 3, axis=2), "YXC")


@pytest.mark.slow
def test_large_image_is_tiled(trained, nuclei):
    img, lbl = nuclei
    model = load_segmenter("stardist", model=str(trained))
    big = np.pad(img, ((0, 1100 - 512), (0, 0)), mode="reflect")
    result = model(big, "YX")
    assert result.extra["n_tiles"] == (2, 1)
    assert result.labels.shape == big.shape
    # the stitched result agrees with the untiled one on the original image
    f1 = instance_metrics(model(img, "YX").labels, result.labels[:512])["f1"]
    assert f1 > 0.9


@pytest.mark.slow
def test_pretrained_name_loads_from_the_keras_cache(trained, nuclei, tmp_path, monkeypatch):
    """A zip in the Keras cache (as StarDist's download leaves it) is unpacked and loaded without network."""
    home = tmp_path / "keras"
    cache = home / "models" / "StarDist2D" / "tiny_test"
    cache.mkdir(parents=True)
    zipped = cache / "tiny_test.zip"
    with zipfile.ZipFile(zipped, "w") as z:
        for f in ("config.json", "thresholds.json", "weights_best.h5"):
            z.write(trained / f, f)
    digest = hashlib.sha256(zipped.read_bytes()).hexdigest()
    monkeypatch.setitem(PRETRAINED, "tiny_test",
                        dict(url="https://127.0.0.1:9/tiny_test.zip", hash=digest, aliases=()))
    monkeypatch.setenv("KERAS_HOME", str(home))

    ok, reason = StarDistSegmenter.availability(model="tiny_test")
    assert ok and str(zipped) in reason
    model = StarDistSegmenter(model="tiny_test", download=False)
    assert model.folder.parent == cache and (model.folder / "weights_best.h5").is_file()
    assert model(nuclei[0][TEST], "YX").labels.max() > 10
    assert StarDistSegmenter.availability(model="tiny_test")[1].startswith("cached at")


@pytest.mark.slow
def test_pretrained_table_matches_stardist_registry():
    from csbdeep.models.pretrained import get_model_details
    from stardist.models import StarDist2D

    for key, entry in PRETRAINED.items():
        _, _, details = get_model_details(StarDist2D, key)
        assert (details["url"], details["hash"]) == (entry["url"], entry["hash"])
        for alias in entry["aliases"]:
            assert get_model_details(StarDist2D, alias)[0] == key


@pytest.mark.slow
def test_torch_and_tensorflow_in_one_process(trained, nuclei):
    torch = pytest.importorskip("torch")
    a = torch.ones(64, 64)
    assert float((a @ a).sum()) == 64.0 ** 3
    model = load_segmenter("stardist", model=str(trained))
    assert model(nuclei[0][TEST], "YX").labels.max() > 10
    assert float(torch.nn.functional.conv2d(torch.ones(1, 1, 8, 8), torch.ones(1, 1, 3, 3)).sum()) == 9 * 36


def test_train_stardist_checks_inputs_before_loading_tensorflow(tmp_path):
    from opsef_opt.train.stardist_train import _split_validation, train_stardist

    img = np.zeros((128, 96), np.float32)
    with pytest.raises(ValueError, match="same Y, X shape"):
        train_stardist([img], [np.zeros((64, 96), np.int32)], tmp_path)
    with pytest.raises(ValueError, match="labels must be integers"):
        train_stardist([img], [img], tmp_path)
    with pytest.raises(ValueError, match="multiple of 8"):
        train_stardist([img], [img.astype(np.int32)], tmp_path, patch_size=60)
    (tmp_path / "tiny").mkdir()
    with pytest.raises(FileExistsError, match="overwrite=True"):
        train_stardist([img], [img.astype(np.int32)], tmp_path)
    # one image without validation data: its bottom quarter validates
    tr, _, va, _ = _split_validation([img], [img.astype(np.int32)], 64)
    assert tr[0].shape == (96, 96) and va[0].shape == (32, 96)


def test_module_registers_family():
    from opsef_opt.segment import SEGMENTERS

    assert SEGMENTERS.get("stardist") is sm.StarDistSegmenter
