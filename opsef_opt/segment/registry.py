"""Registry of segmenter families and the per-process model cache."""
from __future__ import annotations

import json
from typing import Any

from opsef_opt.registry import Registry
from opsef_opt.segment.base import Segmenter

__all__ = ["SEGMENTERS", "register_segmenter", "load_segmenter", "model_cache_info"]

SEGMENTERS: Registry[type[Segmenter]] = Registry("model family", "opsef_opt.segmenters")

_LOADED: dict[str, Segmenter] = {}
_FAILED: dict[str, Exception] = {}
_STATS = {"loads": 0, "hits": 0}


def register_segmenter(cls: type[Segmenter]) -> type[Segmenter]:
    """Class decorator: register a Segmenter subclass under its ``family``."""
    SEGMENTERS.register(cls.family, cls)
    return cls


def load_segmenter(family: str, **init: Any) -> Segmenter:
    """Return the model for (family, init), constructing it once per process.

    A model that failed to load (e.g. missing weights) fails again at once
    with the same error, so its trials fail fast instead of retrying a load.
    """
    key = family + json.dumps(init, sort_keys=True, default=str)
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


def model_cache_info() -> dict[str, int]:
    """Counts of model loads and reuses in this process."""
    return dict(_STATS)
