"""Small checks every config validator uses: one-line errors that name the key, the value and the fix.

Each raises :class:`~opsef_opt.settings.ConfigError`; unknown keys and choices
get a "did you mean ..." from the allowed ones.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from opsef_opt.settings import ConfigError, Range

__all__ = ["did_you_mean", "check_keys", "typed", "integer", "choice", "value_range", "is_range", "path_value"]

def did_you_mean(word: Any, options: Any) -> str:
    """``"; did you mean X?"`` for the options closest to a mistyped ``word`` ("" when none is close)."""
    import difflib

    close = difflib.get_close_matches(str(word), [str(o) for o in options], n=3, cutoff=0.6)
    return f"; did you mean {' or '.join(close)}?" if close else ""


def check_keys(where: str, node: Mapping, allowed: Mapping[str, Any]) -> None:
    for key in node:
        if key not in allowed:
            hint = did_you_mean(key, allowed)
            keys = f" (allowed keys: {', '.join(allowed)})" if hint else f"; allowed keys: {', '.join(allowed)}"
            raise ConfigError(f"{f'{where}.' if where else ''}{key}: unknown key{hint}{keys}")


def typed(where: str, value: Any, types: tuple, what: str, nullable: bool = False) -> Any:
    if value is None and nullable:
        return None
    if isinstance(value, bool) and bool not in types:
        raise ConfigError(f"{where}={value!r}: expected {what}")
    if not isinstance(value, types):
        raise ConfigError(f"{where}={value!r}: expected {what}")
    return value


def integer(where: str, value: Any, low: int | None = None, nullable: bool = False) -> int | None:
    value = typed(where, value, (int,), "an integer", nullable)
    if value is not None and low is not None and value < low:
        raise ConfigError(f"{where}={value!r}: must be >= {low}")
    return value


def choice(where: str, value: Any, allowed: tuple) -> Any:
    if value not in allowed:
        raise ConfigError(f"{where}={value!r}: expected one of {', '.join(map(str, allowed))}"
                          f"{did_you_mean(value, allowed)}")
    return value


def value_range(where: str, node: Mapping) -> Range:
    check_keys(where, node, {"low": 0, "high": 0, "log": 0, "step": 0})
    if "low" not in node or "high" not in node:
        raise ConfigError(f"{where}: a range needs both 'low' and 'high'")
    low = typed(f"{where}.low", node["low"], (int, float), "a number")
    high = typed(f"{where}.high", node["high"], (int, float), "a number")
    if low > high:
        raise ConfigError(f"{where}: low={low} is greater than high={high}")
    log = typed(f"{where}.log", node.get("log", False), (bool,), "true or false")
    step = typed(f"{where}.step", node.get("step"), (int, float), "a number", nullable=True)
    return Range(low, high, log, step)


def is_range(value: Any) -> bool:
    return isinstance(value, Mapping) and ("low" in value or "high" in value)


def path_value(where: str, value: Any, base: Path) -> Path:
    typed(where, value, (str,), "a path")
    p = Path(value).expanduser()
    return p if p.is_absolute() else base / p
