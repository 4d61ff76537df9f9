"""File names for images' outputs: image names may hold '/' (LIF series, tiles)."""
from __future__ import annotations

__all__ = ["safe_name"]


def safe_name(name: str) -> str:
    """A file-system safe stem for an image name: '/' becomes '__', other odd characters '_'."""
    name = name.replace("/", "__")
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
