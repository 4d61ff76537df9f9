"""The segmentation cache: a pipeline evaluated again on the same image reuses its labels, nothing else changes."""
from __future__ import annotations

import numpy as np
import tifffile

from opsef_opt.preprocess import run_chain
from opsef_opt.search.segcache import SegmentCache, segment_key
from opsef_opt.segment import load_segmenter

from conftest import shared


def _segment():
    image = tifffile.imread(shared("gt", "dsb2018_256", "image.tif"))
    pre, axes = run_chain(image, "YX", [("filter", "gaussian", {"sigma": 1.0})])
    model = load_segmenter("classical")
    calls = []

    def compute():
        calls.append(1)
        return model(pre, axes, threshold="otsu", min_distance=5)

    return compute, calls


def test_second_evaluation_reuses_labels_and_confidence(tmp_path):
    compute, calls = _segment()
    key = segment_key("pre-key", "classical", {}, {"threshold": "otsu", "min_distance": 5})
    cache = SegmentCache(tmp_path / "segment")
    first, reused = cache.get(key, compute)
    assert not reused and first.labels.max() > 20
    first.confidence = {int(i): 0.5 + i / 1000 for i in np.unique(first.labels) if i}
    cache._save(cache._path(key), first)  # with per-object confidences, as StarDist gives
    again, reused = SegmentCache(tmp_path / "segment").get(key, compute)  # a new process, a later stage
    assert reused and len(calls) == 1
    assert again.labels.dtype == first.labels.dtype and np.array_equal(again.labels, first.labels)
    assert again.confidence == first.confidence


def test_other_parameters_or_a_damaged_entry_run_the_model(tmp_path):
    compute, calls = _segment()
    cache = SegmentCache(tmp_path / "segment")
    a = segment_key("pre-key", "classical", {}, {"threshold": "otsu", "min_distance": 5})
    b = segment_key("pre-key", "classical", {}, {"threshold": "otsu", "min_distance": 6})
    c = segment_key("other-pre-key", "classical", {}, {"threshold": "otsu", "min_distance": 5})
    assert len({a, b, c}) == 3
    cache.get(a, compute)
    cache._path(a).write_bytes(b"truncated")  # a writer killed mid-way would leave only its .tmp; still
    seg, reused = cache.get(a, compute)
    assert not reused and len(calls) == 2 and seg.labels.max() > 20
    assert cache.get(a, compute)[1]  # rewritten
    off = SegmentCache(None)
    assert not off.get(a, compute)[1] and not off.get(a, compute)[1] and len(calls) == 4


def test_a_model_trained_again_at_the_same_path_gets_new_keys(tmp_path):
    import os

    from opsef_opt.search import segcache

    folder = tmp_path / "my_model"
    folder.mkdir()
    (folder / "weights.bin").write_bytes(b"v1")
    key1 = segment_key("pre", "stardist", {"model": str(folder)}, {})
    assert segment_key("pre", "stardist", {"model": str(folder)}, {}) == key1
    (folder / "weights.bin").write_bytes(b"v2 longer")
    os.utime(folder / "weights.bin", ns=(1, 1))
    segcache._files_stamp.cache_clear()  # a new process (the model is loaded once per process, too)
    assert segment_key("pre", "stardist", {"model": str(folder)}, {}) != key1
    assert segment_key("pre", "stardist", {"model": "2D_versatile_fluo"}, {}) != key1  # a name, not a path
