"""Compute each distinct preprocessing once: in memory, and on disk for resumed studies.

Keys are content fingerprints of (image item, ordered steps with parameters),
so a resumed study, a second worker or a later stage reuses earlier results.
Disk entries are written atomically (temporary file + rename), which makes
concurrent workers on one machine safe without locks.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections import OrderedDict
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

__all__ = ["PreprocessCache", "cache_key"]


def cache_key(item_fingerprint: str, steps: Sequence[tuple[str, str, dict]]) -> str:
    """Stable hex key of one item under one preprocessing chain."""
    payload = json.dumps([item_fingerprint, [list(s) for s in steps]], sort_keys=True, default=str)
    return hashlib.sha1(payload.encode()).hexdigest()


class PreprocessCache:
    """Two-level (memory LRU, then disk) cache of preprocessed arrays.

    Parameters
    ----------
    folder : Path or None
        Disk cache folder (``<study>/cache/preprocess``); ``None`` = memory only.
    max_memory_mb : float
        Memory budget; least recently used arrays are dropped beyond it.
    """

    def __init__(self, folder: Path | None, max_memory_mb: float = 2048) -> None:
        self.folder = Path(folder) if folder is not None else None
        self.max_bytes = int(max_memory_mb * 2**20)
        self._mem: OrderedDict[str, tuple[np.ndarray, str]] = OrderedDict()
        self._bytes = 0
        self.stats = {"computed": 0, "memory_hits": 0, "disk_hits": 0}

    def get(self, key: str, compute: Callable[[], tuple[np.ndarray, str]]) -> tuple[np.ndarray, str]:
        """Return ``(array, axes)`` for ``key``, calling ``compute()`` only on a miss."""
        if key in self._mem:
            self._mem.move_to_end(key)
            self.stats["memory_hits"] += 1
            return self._mem[key]
        value = self._load(key)
        if value is not None:
            self.stats["disk_hits"] += 1
        else:
            value = compute()
            self.stats["computed"] += 1
            self._save(key, value)
        self._remember(key, value)
        return value

    @property
    def hits(self) -> int:
        return self.stats["memory_hits"] + self.stats["disk_hits"]

    def _remember(self, key: str, value: tuple[np.ndarray, str]) -> None:
        self._mem[key] = value
        self._bytes += value[0].nbytes
        while self._bytes > self.max_bytes and len(self._mem) > 1:
            _, (arr, _) = self._mem.popitem(last=False)
            self._bytes -= arr.nbytes

    def _path(self, key: str) -> Path:
        assert self.folder is not None
        return self.folder / key[:2] / f"{key}.npz"

    def _load(self, key: str) -> tuple[np.ndarray, str] | None:
        if self.folder is None:
            return None
        path = self._path(key)
        if not path.exists():
            return None
        try:
            with np.load(path) as f:
                return f["data"], str(f["axes"])
        except Exception:  # a truncated file from a killed writer: recompute
            return None

    def _save(self, key: str, value: tuple[np.ndarray, str]) -> None:
        if self.folder is None:
            return
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, data=value[0], axes=np.array(value[1]))
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
