"""Command line: ``python -m opsef_opt [study=NAME] [key=value ...]`` (Hydra overrides).

``python -m opsef_opt models`` lists the segmentation models and whether they can run here.
"""
from __future__ import annotations

import logging
import sys

import hydra
from omegaconf import DictConfig

from opsef_opt.resolvers import register_resolvers

log = logging.getLogger("opsef_opt")


@hydra.main(version_base="1.3", config_path="pkg://opsef_opt.conf", config_name="config")
def _hydra_entry(cfg: DictConfig) -> None:
    from opsef_opt.app import run

    sys.exit(run(cfg))


def main() -> None:
    """Console entry point (``opsef-opt`` / ``python -m opsef_opt``)."""
    register_resolvers()
    if sys.argv[1:2] in (["models"],):  # `python -m opsef_opt models` = mode=models
        sys.argv[1] = "mode=models"
    _hydra_entry()


if __name__ == "__main__":
    main()
