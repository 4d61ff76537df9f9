"""The segmentation cache: a pipeline evaluated again on the same image reuses its labels, nothing else changes."""
from __future__ import annotations

import numpy as np
import pytest
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

    folder = tmp_path / "my_model"
    folder.mkdir()
    (folder / "weights.bin").write_bytes(b"v1")
    key1 = segment_key("pre", "stardist", {"model": str(folder)}, {})
    assert segment_key("pre", "stardist", {"model": str(folder)}, {}) == key1
    (folder / "weights.bin").write_bytes(b"v2 longer")
    os.utime(folder / "weights.bin", ns=(1, 1))
    assert segment_key("pre", "stardist", {"model": str(folder)}, {}) != key1
    assert segment_key("pre", "stardist", {"model": "2D_versatile_fluo"}, {}) != key1  # a name, not a path


def test_a_model_retrained_in_this_process_is_loaded_again_and_a_failed_load_retried(tmp_path):
    """A notebook session: weights put in place or retrained at the same path are used without a restart."""
    import os
    from pathlib import Path

    from opsef_opt.segment import SEGMENTERS, Segmentation, Segmenter, load_segmenter, register_segmenter
    from opsef_opt.segment.registry import forget_failed_loads

    class FromFile(Segmenter):
        family = "test_from_file"
        installed = True  # stands for a library or cache outside the files init names

        def __init__(self, path: str) -> None:
            super().__init__(path=path)
            if not FromFile.installed:
                raise RuntimeError("library missing")
            self.value = int(Path(path).read_text())  # fails while the file is missing

        def segment(self, image, **params):
            return Segmentation(np.full(image.shape, self.value, np.int32))

    if "test_from_file" not in SEGMENTERS:
        register_segmenter(FromFile)
    path = tmp_path / "weights.txt"
    with pytest.raises(FileNotFoundError):
        load_segmenter("test_from_file", path=str(path))
    path.write_text("1")  # the weights put in place: a new file stamp, loaded at the next use
    first = load_segmenter("test_from_file", path=str(path))
    assert first.value == 1 and load_segmenter("test_from_file", path=str(path)) is first
    path.write_text("22")  # retrained at the same path
    os.utime(path, ns=(1, 1))
    again = load_segmenter("test_from_file", path=str(path))
    assert again is not first and again.value == 22

    other = tmp_path / "other.txt"
    other.write_text("3")
    FromFile.installed = False
    with pytest.raises(RuntimeError):
        load_segmenter("test_from_file", path=str(other))
    FromFile.installed = True
    with pytest.raises(RuntimeError):  # remembered within a search: its trials fail fast
        load_segmenter("test_from_file", path=str(other))
    forget_failed_loads()  # what each search does when it starts
    assert load_segmenter("test_from_file", path=str(other)).value == 3
