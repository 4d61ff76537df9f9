"""Stopping a study cleanly: Ctrl-C / SIGTERM become a request checked between images.

Signal handlers are installed only by a process's entry point (the CLI,
a worker process) through :func:`stop_on_signals`; a study run from a
notebook keeps the kernel's own Ctrl-C (a plain KeyboardInterrupt).
"""
from __future__ import annotations

import logging
import signal
from contextlib import contextmanager
from typing import Iterator

import optuna
from optuna.trial import TrialState

from opsef_opt.search import attrs as A

__all__ = ["StopRequest", "stop_on_signals", "requeue_interrupted"]

log = logging.getLogger("opsef_opt")


def requeue_interrupted(study: optuna.Study) -> None:
    """After Ctrl-C: queue the parameters of the trial that was cut short."""
    retried = set(study.user_attrs.get(A.REQUEUED, []))
    for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
        if t.user_attrs.get(A.INTERRUPTED) and t.number not in retried:
            study.enqueue_trial(t.params, user_attrs={A.RETRY_OF: t.number})
            retried.add(t.number)
    study.set_user_attr(A.REQUEUED, sorted(retried))


class StopRequest:
    """Ctrl-C / SIGTERM handler: the first signal asks the study to stop at the next image.

    Raising KeyboardInterrupt at an arbitrary point could cut a storage write
    in half and leave the SQLite database locked; so the first signal only
    sets a flag that the trial checks between images, and a second signal
    stops at once.
    """

    def __init__(self) -> None:
        self.requested = False
        #: the signal that asked this process to stop (workers get SIGINT from the terminal themselves)
        self.last_signal: int | None = None

    def __call__(self, signum, frame) -> None:
        self.last_signal = signum
        if self.requested:
            raise KeyboardInterrupt(f"signal {signum}")
        self.requested = True
        log.warning("stopping after the current image (signal %d); send it again to stop at once", signum)

    def check(self) -> None:
        if self.requested:
            raise KeyboardInterrupt("stop requested")


@contextmanager
def stop_on_signals() -> Iterator[StopRequest]:
    """Route SIGINT and SIGTERM to a new :class:`StopRequest` while the block runs; the previous handlers come back after."""
    request = StopRequest()
    previous = {sig: signal.signal(sig, request) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield request
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
