"""opsef-opt: find which preprocessing and segmentation model segments your cells or nuclei well.

The public API (loaded on first use, so ``import opsef_opt`` stays fast)::

    import opsef_opt
    result = opsef_opt.run_study("demo", n_trials=6)     # same files and runs as the CLI
    result.leaderboard.head()                            # every pipeline, best first
    labels = result.best(image)                          # the chosen Pipeline, called on an array
    pipeline = opsef_opt.load_pipeline("studies/demo/best.yaml")
    labels_by_image = opsef_opt.apply(pipeline, "data/more_images/")
"""
from __future__ import annotations

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from typing import Any

try:
    __version__ = version("opsef-opt")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

#: public name -> module that defines it
_EXPORTS = {
    "run_study": "opsef_opt.api",
    "load_pipeline": "opsef_opt.api",
    "apply": "opsef_opt.api",
    "StudyResult": "opsef_opt.api",
    "compose_config": "opsef_opt.api",
    "Pipeline": "opsef_opt.pipeline",
    "PipelineResult": "opsef_opt.pipeline",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'opsef_opt' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
