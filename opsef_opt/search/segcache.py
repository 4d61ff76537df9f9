"""Segment each distinct (preprocessed image, model, parameters) once, across trials, stages and workers.

A staged search evaluates some pipelines again on the same images: a
``refine`` stage starts with the top-k of its source stage, a ``confirm``
stage re-runs them on images that include the training ones, a resumed study
re-records a trial. The models are deterministic, so their labels are taken
from disk instead of running the model again; everything after the model
(scores, MLflow runs, artifacts) is computed as for any trial. Entries are
written atomically (temporary file + rename), so concurrent workers on one
machine share them safely. Only labels and per-object confidences are
kept: they are all that scoring uses (``Segmentation.extra`` is not).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from opsef_opt.segment.base import Segmentation
from opsef_opt.segment.registry import model_files_stamp

__all__ = ["SegmentCache", "segment_key"]


def segment_key(preprocess_key: str, family: str, init: Mapping[str, Any], params: Mapping[str, Any]) -> str:
    """Stable hex key of one model setting applied to one preprocessed image.

    Model files named in ``init`` (a folder or a weights file of your own)
    enter with their size and modification time, so a model trained again
    at the same path is not mistaken for the old one.
    """
    init_json = json.dumps(dict(init), sort_keys=True, default=str)
    payload = json.dumps([preprocess_key, family, init_json, dict(params), model_files_stamp(init)],
                         sort_keys=True, default=str)
    return hashlib.sha1(payload.encode()).hexdigest()


class SegmentCache:
    """Disk cache of segmentations (``<study>/cache/segment``); ``folder=None`` turns it off."""

    def __init__(self, folder: Path | None) -> None:
        self.folder = Path(folder) if folder is not None else None
        self.stats = {"computed": 0, "reused": 0}

    def _path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.npz"

    def get(self, key: str, compute: Callable[[], Segmentation]) -> tuple[Segmentation, bool]:
        """The segmentation for ``key`` and whether it was reused (``compute()`` runs only on a miss)."""
        if self.folder is not None:
            found = self._load(self._path(key))
            if found is not None:
                self.stats["reused"] += 1
                return found, True
        seg = compute()
        self.stats["computed"] += 1
        if self.folder is not None:
            self._save(self._path(key), seg)
        return seg, False

    @staticmethod
    def _load(path: Path) -> Segmentation | None:
        try:
            with np.load(path, allow_pickle=False) as z:
                labels = z["labels"]
                conf = None
                if "conf_ids" in z.files:
                    conf = {int(i): float(v) for i, v in zip(z["conf_ids"], z["conf_values"])}
                return Segmentation(labels, confidence=conf)
        except FileNotFoundError:
            return None
        except Exception:  # a damaged entry (disk full, killed writer): compute it again
            return None

    @staticmethod
    def _save(path: Path, seg: Segmentation) -> None:
        arrays = {"labels": np.asarray(seg.labels)}
        if seg.confidence is not None:
            ids = sorted(seg.confidence)
            arrays["conf_ids"] = np.asarray(ids, np.int64)
            arrays["conf_values"] = np.asarray([seg.confidence[i] for i in ids], np.float64)
        tmp = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
            with os.fdopen(fd, "wb") as f:
                np.savez_compressed(f, **arrays)
            os.replace(tmp, path)
        except OSError:  # a full or read-only disk costs the reuse, never the trial
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
