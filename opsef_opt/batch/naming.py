"""File names for images' outputs (kept here for existing imports; the function is :mod:`opsef_opt.io.naming`'s)."""
from __future__ import annotations

from opsef_opt.io.naming import safe_name

__all__ = ["safe_name"]
