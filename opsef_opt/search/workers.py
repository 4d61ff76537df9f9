"""``n_workers``: more worker processes on this machine, sharing the stage through its storage.

Optuna's RDB storage is the coordination layer (no scheduler of our own):
each worker loads its images and models once, then asks the shared study
for trials until the shared budget is spent; a grid point is handed to
exactly one worker by the storage's queue. Workers are started with the
``spawn`` method (no inherited threads or database connections). Several
machines work the same way: run the same command on each against a shared
``storage=postgresql://...`` and ``tracking_uri=http://mlflow-server``.
"""
from __future__ import annotations

import logging
import multiprocessing
import os
import signal

from typing import Callable

from opsef_opt.settings import Settings

__all__ = ["Workers"]

log = logging.getLogger("opsef_opt")


class Workers:
    """The extra worker processes of one stage (none when ``n`` is 0)."""

    def __init__(self, settings: Settings, stage_name: str, n: int,
                 target: Callable[[Settings, str, int], None]) -> None:
        #: ``target(settings, stage_name, index)`` runs in each process (a module-level function: spawn imports it)
        self.target = target
        self.args = (settings, stage_name)
        self.n = n
        self.procs: list[multiprocessing.Process] = []

    def __enter__(self) -> "Workers":
        if self.n:
            from opsef_opt.segment.device import share_cpus

            log.info("%d worker processes, %d CPU thread(s) each", self.n + 1, share_cpus(self.n + 1))
        ctx = multiprocessing.get_context("spawn")
        for i in range(self.n):
            p = ctx.Process(target=self.target, args=(*self.args, i + 1), name=f"opsef-worker-{i + 1}")
            p.start()
            self.procs.append(p)
        if self.n:
            log.info("started %d more worker process(es)", self.n)
        return self

    def wait(self) -> None:
        """Wait for every worker to finish its last trial."""
        for p in self.procs:
            p.join()
            if p.exitcode not in (0, None):
                log.warning("%s ended with exit code %s", p.name, p.exitcode)

    def stop(self, received: int | None = None, timeout: float = 120) -> None:
        """Ask the workers to stop after their current image (as Ctrl-C does), then wait for them.

        Ctrl-C in a terminal reaches every worker by itself (``received`` =
        SIGINT); any other stop (a SIGTERM sent to this process only) is passed on.
        """
        for p in self.procs:
            if p.is_alive() and received != signal.SIGINT:
                os.kill(p.pid, signal.SIGTERM)
        for p in self.procs:
            p.join(timeout)
            if p.is_alive():
                p.kill()

    def __exit__(self, *exc) -> None:
        if any(p.is_alive() for p in self.procs):
            self.stop()
