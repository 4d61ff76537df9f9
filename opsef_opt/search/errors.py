"""The search's own errors: what stops a study before or after its trials (the CLI maps them to exit codes)."""
from __future__ import annotations

__all__ = ["StudyError", "StageFailed"]


class StudyError(RuntimeError):
    """The study cannot run (no readable images, changed search space, ...)."""


class StageFailed(RuntimeError):
    """Every trial of a stage failed; the message summarises the reasons in one line."""
