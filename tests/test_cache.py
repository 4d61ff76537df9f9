"""The preprocessing cache computes each distinct preprocessing once, across processes too."""
from __future__ import annotations

import numpy as np

from opsef_opt.preprocess.cache import PreprocessCache, cache_key


def test_memory_then_disk_reuse(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return np.arange(12, dtype=np.float32).reshape(3, 4), "YX"

    key = cache_key("img-fp", [("filter", "median", {"size": 3})])
    c1 = PreprocessCache(tmp_path)
    a, axes = c1.get(key, compute)
    b, _ = c1.get(key, compute)
    assert len(calls) == 1 and c1.stats == {"computed": 1, "memory_hits": 1, "disk_hits": 0}
    c2 = PreprocessCache(tmp_path)  # a resumed process
    c, axes2 = c2.get(key, compute)
    assert len(calls) == 1 and c2.stats["disk_hits"] == 1
    np.testing.assert_array_equal(a, c)
    assert axes == axes2 == "YX"


def test_keys_differ_by_parameters_and_image():
    k = cache_key("a", [("filter", "median", {"size": 3})])
    assert k != cache_key("a", [("filter", "median", {"size": 5})])
    assert k != cache_key("b", [("filter", "median", {"size": 3})])
    assert k == cache_key("a", [("filter", "median", {"size": 3})])


def test_truncated_entry_is_recomputed(tmp_path):
    key = cache_key("x", [])
    c = PreprocessCache(tmp_path)
    c.get(key, lambda: (np.ones((4, 4), np.float32), "YX"))
    path = next(tmp_path.rglob("*.npz"))
    path.write_bytes(path.read_bytes()[:20])
    c2 = PreprocessCache(tmp_path)
    out, _ = c2.get(key, lambda: (np.zeros((4, 4), np.float32), "YX"))
    assert c2.stats["computed"] == 1 and out.sum() == 0


def test_memory_budget_evicts_oldest(tmp_path):
    c = PreprocessCache(None, max_memory_mb=1)
    for i in range(5):
        c.get(f"k{i}", lambda: (np.zeros((256, 256), np.float32), "YX"))  # 256 KiB each
    assert len(c._mem) == 4
