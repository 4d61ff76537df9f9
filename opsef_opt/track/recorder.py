"""Record finished trials on a background thread, so writing files never holds up the search.

The search thread hands over a trial's label images and metrics and moves on
to the next trial while this thread writes the overlay PNGs, label TIFFs and
region tables, logs them to MLflow and closes the run. At most ``max_pending``
trials wait (bounded memory); :meth:`Recorder.drain` waits for all of them and
is called before the study ends or is interrupted. A trial that completed but
whose recording was cut short by ``kill -9`` is found and recorded again when
the study resumes (see :func:`opsef_opt.search.study.run_search`).
"""
from __future__ import annotations

import logging
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable

__all__ = ["Recorder"]

log = logging.getLogger("opsef_opt")


class Recorder:
    """A single background worker with a bounded queue."""

    def __init__(self, max_pending: int = 2, background: bool = True) -> None:
        self.background = background
        self.max_pending = max_pending
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="opsef-record") if background else None
        self._pending: deque[tuple[str, Future]] = deque()

    def submit(self, what: str, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` (in the background when enabled); ``what`` names it in warnings."""
        if self._pool is None:
            self._run(what, fn, *args)
            return
        self._pending.append((what, self._pool.submit(self._run, what, fn, *args)))
        while len(self._pending) > self.max_pending:
            self._pending.popleft()[1].result()

    def drain(self) -> None:
        """Wait until everything submitted is recorded."""
        while self._pending:
            self._pending.popleft()[1].result()

    @staticmethod
    def _run(what: str, fn: Callable[..., Any], *args: Any) -> None:
        try:
            fn(*args)
        except Exception as e:  # recording must never stop the study
            log.warning("could not record %s: %s: %s", what, type(e).__name__, e)

    def close(self) -> None:
        self.drain()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
