"""Registry of segmenter families and the per-process model cache."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

from opsef_opt.registry import Registry
from opsef_opt.segment.base import Segmenter

__all__ = ["SEGMENTERS", "register_segmenter", "load_segmenter", "model_cache_info", "model_files_stamp",
           "forget_failed_loads"]

SEGMENTERS: Registry[type[Segmenter]] = Registry("model family", "opsef_opt.segmenters")

_LOADED: dict[str, Segmenter] = {}
_FAILED: dict[str, Exception] = {}
_STATS = {"loads": 0, "hits": 0}


def register_segmenter(cls: type[Segmenter]) -> type[Segmenter]:
    """Class decorator: register a Segmenter subclass under its ``family``."""
    SEGMENTERS.register(cls.family, cls)
    return cls


def model_files_stamp(init: Mapping[str, Any]) -> tuple:
    """Size and modification time of the files that ``init`` values name (a folder or a weights file).

    Part of every key of a loaded model, a cached segmentation and a cached
    forward pass, so a model trained again at the same path is loaded again
    and never mistaken for the old one. Taken afresh at each call (a few
    ``stat`` calls), never cached for the process.
    """
    stamp = []
    for value in init.values():
        if not isinstance(value, str) or not value or len(value) > 4096:
            continue
        path = Path(value).expanduser()
        try:
            files = [path] if path.is_file() else sorted(f for f in path.rglob("*") if f.is_file())[:1000] \
                if path.is_dir() else []
            stamp += [(str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files]
        except OSError:
            continue
    return tuple(stamp)


def load_segmenter(family: str, **init: Any) -> Segmenter:
    """Return the model for (family, init), constructing it once per process (per version of its files).

    A model that failed to load (e.g. missing weights) fails again at once
    with the same error, so its trials fail fast instead of retrying a load;
    until its files change or :func:`forget_failed_loads` is called (each
    search does, so weights put in place meanwhile are found).
    """
    key = family + json.dumps([init, model_files_stamp(init)], sort_keys=True, default=str)
    if key in _FAILED:
        raise _FAILED[key]
    model = _LOADED.get(key)
    if model is None:
        try:
            model = SEGMENTERS.get(family)(**init)
        except Exception as e:
            _FAILED[key] = e
            raise
        _LOADED[key] = model
        _STATS["loads"] += 1
    else:
        _STATS["hits"] += 1
    return model


def forget_failed_loads() -> None:
    """Try models that failed to load again at their next use (e.g. after their weights were put in place)."""
    _FAILED.clear()


def model_cache_info() -> dict[str, int]:
    """Counts of model loads and reuses in this process."""
    return dict(_STATS)
