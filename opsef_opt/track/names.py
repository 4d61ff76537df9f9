"""One name per trial, the same in MLflow, the leaderboard, the tag prompt and the contact sheet."""
from __future__ import annotations

__all__ = ["trial_name", "stage_of"]


def stage_of(study_name: str) -> str:
    """The stage part of an Optuna study name (``<study>/<stage>``; a one-stage study's own name)."""
    return study_name.rsplit("/", 1)[-1]


def trial_name(stage: str, number: int) -> str:
    """``<stage>#<number>``, e.g. ``coarse#18``: stages number their trials from 0 each, so the stage is part of it.

    Examples
    --------
    >>> trial_name("coarse", 18)
    'coarse#18'
    """
    return f"{stage}#{int(number)}"
