"""OmegaConf resolvers usable in study configs.

``${opsef_data:demo/images}`` is the path of a data folder shipped inside the
package, so the demo study works from a checkout and after ``pip install .``.
"""
from __future__ import annotations

from importlib.resources import files

from omegaconf import OmegaConf

__all__ = ["register_resolvers", "packaged_data"]


def packaged_data(relative: str) -> str:
    """Absolute path of ``opsef_opt/data/<relative>``."""
    return str(files("opsef_opt.data").joinpath(relative))


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("opsef_data"):
        OmegaConf.register_new_resolver("opsef_data", packaged_data)
