"""The registry of preprocessing steps and the fixed slot order of the chain.

A preprocessing step is a function registered under a *slot* (what kind of
operation it is) and a *name*. The chain (:func:`opsef_opt.preprocess.run_chain`)
applies at most one step per slot, always in the order of :data:`SLOTS`, which
is the order OpSeF used. Each step declares its tunable parameters as
:class:`opsef_opt.params.Param` so that configs can be validated and the
Optuna search space built from the same declaration.

Third-party packages can add steps through the ``opsef_opt.steps`` entry-point
group: the entry-point name is ``"<slot>.<name>"`` and it must load a
:class:`StepSpec`.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable, Sequence

from opsef_opt.params import Param
from opsef_opt.registry import Registry

__all__ = ["SLOTS", "StepSpec", "STEPS", "step", "get_step", "steps_in_slot"]

#: Slots in the fixed order in which the chain applies them (OpSeF's order).
SLOTS: tuple[str, ...] = (
    "color",
    "filter",
    "background",
    "projection",
    "histogram",
    "edges",
    "invert",
)


@dataclass(frozen=True)
class StepSpec:
    """A registered preprocessing step.

    Attributes
    ----------
    slot : str
        One of :data:`SLOTS`.
    name : str
        Name of the step within its slot (``"none"`` is the identity).
    func : callable
        The step itself. If ``planewise``, ``func(plane, **params) -> plane``
        on a 2-D float32 (YX) array; otherwise
        ``func(image, axes, **params) -> (image, axes)`` on the whole array.
    params : tuple of Param
        Tunable keyword parameters of ``func``.
    planewise : bool
        Whether the chain maps ``func`` over Z planes and colour channels.
    doc : str
        First line of the function's docstring, for listings.
    """

    slot: str
    name: str
    func: Callable
    params: tuple[Param, ...]
    planewise: bool
    doc: str

    @property
    def key(self) -> str:
        """Registry key, ``"<slot>.<name>"``."""
        return f"{self.slot}.{self.name}"


STEPS: Registry[StepSpec] = Registry("preprocessing step", "opsef_opt.steps")


def _check_signature(func: Callable, params: Sequence[Param], where: str) -> None:
    """Fail early if the declared Params drift from the function's keywords."""
    sig = inspect.signature(func).parameters
    for p in params:
        if p.name not in sig:
            raise TypeError(
                f"{where}: declared parameter {p.name!r} is not an argument"
            )
        default = sig[p.name].default
        if default is not inspect.Parameter.empty and default != p.default:
            raise TypeError(
                f"{where}: parameter {p.name!r} defaults to {default!r} in the "
                f"function but {p.default!r} in its Param declaration"
            )


def step(
    slot: str, name: str, params: Sequence[Param] = (), planewise: bool = True
) -> Callable[[Callable], Callable]:
    """Register a function as preprocessing step ``name`` of ``slot``.

    The decorated function is returned unchanged, so it stays usable on its
    own (e.g. in a notebook).

    Parameters
    ----------
    slot : str
        One of :data:`SLOTS`.
    name : str
        Step name, unique within the slot.
    params : sequence of Param
        Tunable keyword arguments of the function.
    planewise : bool
        ``True`` for 2-D functions (YX float32 in, YX float32 out) that the
        chain maps over Z planes and colour channels; ``False`` for functions
        taking ``(image, axes, **params)`` and returning ``(image, axes)``.
    """
    if slot not in SLOTS:
        raise ValueError(f"unknown slot {slot!r}; slots are {', '.join(SLOTS)}")

    def deco(func: Callable) -> Callable:
        key = f"{slot}.{name}"
        _check_signature(func, params, key)
        doc = inspect.getdoc(func) or ""
        spec = StepSpec(
            slot=slot,
            name=name,
            func=func,
            params=tuple(params),
            planewise=planewise,
            doc=doc.strip().splitlines()[0] if doc.strip() else "",
        )
        STEPS.register(key, spec)
        return func

    return deco


def steps_in_slot(slot: str) -> list[str]:
    """Names of the steps registered in ``slot``, sorted."""
    if slot not in SLOTS:
        raise KeyError(f"unknown slot {slot!r}; slots are {', '.join(SLOTS)}")
    prefix = slot + "."
    return sorted(key[len(prefix):] for key in STEPS.names() if key.startswith(prefix))


def get_step(slot: str, name: str) -> StepSpec:
    """Return the step ``name`` of ``slot``.

    Raises
    ------
    KeyError
        If the slot or the name is unknown; the message lists what is
        available, e.g. the names registered in that slot.
    """
    if slot not in SLOTS:
        raise KeyError(f"unknown slot {slot!r}; slots are {', '.join(SLOTS)}")
    key = f"{slot}.{name}"
    if key not in STEPS:
        raise KeyError(
            f"unknown {slot} step {name!r}; available in slot {slot!r}: "
            f"{', '.join(steps_in_slot(slot))}"
        )
    return STEPS.get(key)
