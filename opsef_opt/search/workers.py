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
import sys

from opsef_opt.config import Settings

__all__ = ["Workers", "worker_main"]

log = logging.getLogger("opsef_opt")


def worker_main(settings: Settings, stage_name: str, index: int) -> None:
    """Entry point of a worker process: run trials of the stage until its budget is spent."""
    logging.basicConfig(level=logging.INFO, format=f"[worker {index}] %(message)s", stream=sys.stdout)
    for name in ("alembic", "mlflow", "optuna", "urllib3", "numba", "git"):
        logging.getLogger(name).setLevel(logging.WARNING)
    from opsef_opt.search.study import available_space, quiet_libraries, run_stage, stage_items
    from opsef_opt.track import Tracker

    quiet_libraries()
    stage = next(s for s in settings.study.stages if s.name == stage_name)
    items, _ = stage_items(settings, stage, quiet=True)
    space, skipped = available_space(settings.study.search)
    tracker = Tracker(settings.tracking_uri, settings.studies_dir / "mlartifacts", settings.study.name,
                      settings.study.description)
    try:
        run_stage(settings, stage, items, space, tracker, skipped=skipped, worker=True)
    except KeyboardInterrupt:
        sys.exit(130)


class Workers:
    """The extra worker processes of one stage (none when ``n`` is 0)."""

    def __init__(self, settings: Settings, stage_name: str, n: int) -> None:
        self.args = (settings, stage_name)
        self.n = n
        self.procs: list[multiprocessing.Process] = []

    def __enter__(self) -> "Workers":
        if self.n:
            from opsef_opt.segment.device import share_cpus

            log.info("%d worker processes, %d CPU thread(s) each", self.n + 1, share_cpus(self.n + 1))
        ctx = multiprocessing.get_context("spawn")
        for i in range(self.n):
            p = ctx.Process(target=worker_main, args=(*self.args, i + 1), name=f"opsef-worker-{i + 1}")
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

    def stop(self, timeout: float = 120) -> None:
        """Ask the workers to stop after their current image (as Ctrl-C does), then wait for them.

        Ctrl-C in a terminal reaches every worker by itself; a SIGTERM sent to
        this process only is passed on.
        """
        from opsef_opt.search.study import StopRequest

        for p in self.procs:
            if p.is_alive() and StopRequest.last_signal != signal.SIGINT:
                os.kill(p.pid, signal.SIGTERM)
        for p in self.procs:
            p.join(timeout)
            if p.is_alive():
                p.kill()

    def __exit__(self, *exc) -> None:
        if any(p.is_alive() for p in self.procs):
            self.stop()
