"""Run each network once per distinct input: the raw model outputs, cached per inference key.

A model call is split into a forward pass (:meth:`Segmenter.infer`, which
depends only on the preprocessed image, the model's init settings and the
parameters its family declares in ``inference_params``) and a post-processing
step (thresholds, seed distances, NMS; see :mod:`opsef_opt.segment.base`).
Trials that differ only in post-processing parameters share one forward pass:
its raw output (probability maps, flows, distances) is kept here under the
*inference key* -- preprocessing key + family + init (with the size and
modification time of model files it names) + inference params (+ the
perturbation, for the stability proxy's perturbed inputs) -- in memory (least
recently used first out, bounded in bytes) and on disk under the study's
``cache/infer`` folder (atomic writes, so trials, stages, workers and resumed
runs on one machine share it).

Cached arrays are handed out read-only: post-processing must not change them.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from opsef_opt.segment.registry import model_files_stamp

__all__ = ["InferenceCache", "inference_key", "study_inference_cache", "DEFAULT_MEMORY_BYTES"]

#: default bound of the in-memory part (raw outputs of a 512 x 512 image are 1-4 MB)
DEFAULT_MEMORY_BYTES = 512 * 2**20


def inference_key(preprocess_key: str, family: str, init: Mapping[str, Any], inference: Mapping[str, Any],
                  raw_version: str = "1", perturbation: str | None = None) -> str:
    """Stable hex key of one forward pass: which input, which network, which inference params."""
    init_json = json.dumps(dict(init), sort_keys=True, default=str)
    payload = json.dumps(["infer", raw_version, preprocess_key, family, init_json, dict(inference),
                          model_files_stamp(init), perturbation], sort_keys=True, default=str)
    return hashlib.sha1(payload.encode()).hexdigest()


def _nbytes(raw: Mapping[str, np.ndarray]) -> int:
    return sum(int(np.asarray(v).nbytes) for v in raw.values())


def _frozen(raw: Mapping[str, Any]) -> dict[str, np.ndarray]:
    out = {}
    for k, v in raw.items():
        a = np.asarray(v)
        if a.dtype == object:
            raise TypeError(f"raw model output {k!r} is not a numeric array")
        a.flags.writeable = False
        out[k] = a
    return out


class InferenceCache:
    """Raw model outputs by inference key: memory (``max_bytes``) then ``folder`` (None: memory only).

    ``enabled=False`` turns caching off (every lookup runs the forward pass; the counts still count).
    """

    def __init__(self, folder: Path | None, max_bytes: int = DEFAULT_MEMORY_BYTES, enabled: bool = True) -> None:
        self.folder = Path(folder) if folder is not None else None
        self.max_bytes = int(max_bytes)
        self.enabled = enabled
        self._memory: OrderedDict[str, dict[str, np.ndarray]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.keys: set[str] = set()  # distinct inference keys asked for in this process
        self.stats = {"forward_passes": 0, "memory_hits": 0, "disk_hits": 0}

    def _path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.npz"

    def get(self, key: str, compute: Callable[[], Mapping[str, Any]]) -> tuple[dict[str, np.ndarray], str]:
        """(raw output for ``key``, where it came from: ``memory``, ``disk`` or ``computed``)."""
        with self._lock:
            self.keys.add(key)
            found = self._memory.get(key) if self.enabled else None
            if found is not None:
                self._memory.move_to_end(key)
                self.stats["memory_hits"] += 1
                return found, "memory"
        if self.enabled and self.folder is not None:
            found = self._load(self._path(key))
            if found is not None:
                with self._lock:
                    self.stats["disk_hits"] += 1
                self._remember(key, found)
                return found, "disk"
        raw = _frozen(compute())
        with self._lock:
            self.stats["forward_passes"] += 1
        if self.enabled:
            self._remember(key, raw)
            if self.folder is not None:
                self._save(self._path(key), raw)
        return raw, "computed"

    def _remember(self, key: str, raw: dict[str, np.ndarray]) -> None:
        size = _nbytes(raw)
        if size > self.max_bytes:
            return
        with self._lock:
            if key in self._memory:
                return
            self._memory[key] = raw
            self._bytes += size
            while self._bytes > self.max_bytes and self._memory:
                _, old = self._memory.popitem(last=False)
                self._bytes -= _nbytes(old)

    @property
    def memory_bytes(self) -> int:
        return self._bytes

    @staticmethod
    def _load(path: Path) -> dict[str, np.ndarray] | None:
        try:
            with np.load(path, allow_pickle=False) as z:
                return _frozen({k: z[k] for k in z.files})
        except FileNotFoundError:
            return None
        except Exception:  # a damaged entry (disk full, killed writer): run the network again
            return None

    @staticmethod
    def _save(path: Path, raw: Mapping[str, np.ndarray]) -> None:
        tmp = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
            with os.fdopen(fd, "wb") as f:
                np.savez(f, **raw)  # uncompressed: float maps barely compress and loading must be fast
            os.replace(tmp, path)
        except OSError:  # a full or read-only disk costs the reuse, never the trial
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)


def study_inference_cache(study_dir: Path) -> InferenceCache:
    """The study's inference cache (``<study>/cache/infer``).

    Environment: ``OPSEF_INFERENCE_CACHE=0`` turns it off (every trial runs its network again,
    as before the split; for benchmarks), ``OPSEF_INFERENCE_CACHE_MB`` bounds its memory part
    (default 512).
    """
    enabled = os.environ.get("OPSEF_INFERENCE_CACHE", "1").strip().lower() not in ("0", "false", "off", "no")
    mb = float(os.environ.get("OPSEF_INFERENCE_CACHE_MB", DEFAULT_MEMORY_BYTES / 2**20))
    return InferenceCache(Path(study_dir) / "cache" / "infer", max_bytes=int(mb * 2**20), enabled=enabled)
