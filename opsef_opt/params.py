"""Declared tunable parameters shared by preprocessing steps and segmenters.

A step or a model declares its parameters once (name, kind, bounds or choices,
default). The same declaration serves three purposes: validating the user's
config before any work starts, building the Optuna search space, and
documenting the parameter (``python -m opsef_opt models``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

__all__ = ["Param", "ParamError", "check_value"]

KINDS = ("int", "float", "categorical", "bool", "str", "list")


class ParamError(ValueError):
    """A parameter value does not match its declaration."""


@dataclass(frozen=True)
class Param:
    """One tunable parameter.

    Attributes
    ----------
    name : str
        Keyword argument name of the function that takes it.
    kind : {"int", "float", "categorical", "bool", "str", "list"}
        ``str`` is free text such as a model name or a file path; ``list``
        a list of values (each one of ``choices`` when choices are given,
        else numbers or text).
    default : Any
        Value used when the study does not mention the parameter.
    low, high : float, optional
        Inclusive bounds for ``int``/``float`` kinds.
    choices : tuple, optional
        Allowed values for ``categorical`` kind.
    odd : bool
        For kernel sizes: only odd integers are allowed.
    help : str
        One line for users.
    """

    name: str
    kind: str
    default: Any = None
    low: float | None = None
    high: float | None = None
    choices: tuple = field(default_factory=tuple)
    odd: bool = False
    nullable: bool = False
    help: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"Param {self.name!r}: kind must be one of {KINDS}")

    def describe(self) -> str:
        """Human-readable range, e.g. ``int in [1, 51], odd``."""
        if self.kind == "categorical":
            rng = "one of " + ", ".join(map(str, self.choices))
        elif self.kind == "bool":
            rng = "true or false"
        elif self.kind == "str":
            rng = "text (a name or a path)"
        elif self.kind == "list":
            rng = ("a list of " + ", ".join(map(str, self.choices))) if self.choices else "a list of values"
        else:
            rng = f"{self.kind} in [{self.low}, {self.high}]"
            if self.odd:
                rng += ", odd"
        if self.nullable:
            rng += " or null"
        return rng


def check_value(param: Param, value: Any, where: str) -> Any:
    """Validate (and lightly coerce) one value against its declaration.

    ``where`` is the config key shown in the error, e.g.
    ``study.search.preprocess.filter[1].size``. Ints are accepted for float
    params; floats are *not* accepted for int params (a kernel size of 3.5 is
    a mistake the user must see).
    """
    if value is None:
        if param.nullable:
            return None
        raise ParamError(f"{where}: null is not allowed; expected {param.describe()}")
    if param.kind == "bool":
        if not isinstance(value, bool):
            raise ParamError(f"{where}={value!r}: expected true or false")
        return value
    if param.kind == "str":
        if not isinstance(value, str):
            raise ParamError(f"{where}={value!r}: expected text (a name or a path)")
        return value
    if param.kind == "list":
        if not isinstance(value, (list, tuple)):
            raise ParamError(f"{where}={value!r}: expected {param.describe()}")
        for v in value:
            if param.choices and v not in param.choices:
                raise ParamError(f"{where}: {v!r} is not allowed; expected items from {list(param.choices)}")
            if not param.choices and (isinstance(v, bool) or not isinstance(v, (int, float, str))):
                raise ParamError(f"{where}: {v!r} is not allowed; expected numbers or text")
        return list(value)
    if param.kind == "categorical":
        if value not in param.choices:
            raise ParamError(
                f"{where}={value!r}: not allowed; expected one of {list(param.choices)}"
            )
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ParamError(f"{where}={value!r}: expected {param.describe()}")
    if param.kind == "int":
        if isinstance(value, float):
            raise ParamError(
                f"{where}={value!r}: must be an integer ({param.describe()})"
            )
    else:
        value = float(value)
    if (param.low is not None and value < param.low) or (
        param.high is not None and value > param.high
    ):
        raise ParamError(f"{where}={value!r}: out of range; expected {param.describe()}")
    if param.odd and int(value) % 2 == 0:
        raise ParamError(f"{where}={value!r}: must be odd ({param.describe()})")
    return value


def check_kwargs(params: Sequence[Param], values: dict, where: str) -> dict:
    """Validate a mapping of parameter values; unknown names are an error."""
    known = {p.name: p for p in params}
    out = {}
    for key, value in values.items():
        if key not in known:
            allowed = ", ".join(known) or "(none)"
            raise ParamError(f"{where}.{key}: unknown parameter; allowed: {allowed}")
        out[key] = check_value(known[key], value, f"{where}.{key}")
    return out
