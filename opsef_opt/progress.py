"""Progress of trials and of apply: a bar with the time left on a terminal, plain lines elsewhere.

On a terminal (``stream.isatty()``) a tqdm bar shows done/total, the time
spent and the time left; log lines printed meanwhile appear above it (the
logging handlers are routed through ``tqdm.write`` while it is open). When
the output goes to a file or a pipe (CI, ``nohup``, a cluster job) there is
no bar: :meth:`Progress.left` gives the time left as text to append to the
plain progress lines, and :meth:`Progress.update` prints a line now and then
(and :meth:`Progress.close` the last one) for work that has no lines of its own.
"""
from __future__ import annotations

import atexit
import contextlib
import sys
import time
from typing import Any, TextIO

__all__ = ["Progress", "trial_progress", "duration"]


def duration(seconds: float) -> str:
    """``1h02m``, ``3m05s``, ``42s``."""
    seconds = max(0, int(round(seconds)))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


class Progress:
    """``total`` units of work, ``done`` of them before this process started (a resumed study or apply run)."""

    def __init__(self, total: int, desc: str, unit: str, done: int = 0, stream: TextIO | None = None,
                 terminal: bool | None = None, every: float = 10.0, lines: bool = True) -> None:
        self.total, self.desc, self.unit = max(int(total), 0), desc, unit
        self.n = self.start = min(int(done), self.total)
        self.stream = stream or sys.stderr
        self.terminal = self.stream.isatty() if terminal is None else terminal
        self.every = every
        #: without a terminal: print plain lines (False: the caller prints its own, with :meth:`left`)
        self.lines = lines
        self.t0 = time.monotonic()
        self._last_line = self.t0
        self._printed = self.n
        self._postfix: dict[str, Any] = {}
        self._bar = None
        self._redirect: contextlib.AbstractContextManager | None = None
        if self.terminal:
            from tqdm import tqdm
            from tqdm.contrib.logging import logging_redirect_tqdm

            self._bar = tqdm(total=self.total, initial=self.n, desc=desc, unit=unit, file=self.stream,
                             dynamic_ncols=True, mininterval=0.2, smoothing=0.1,
                             bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} {unit}s "
                                        "[{elapsed} spent, {remaining} left{postfix}]")
            self._redirect = logging_redirect_tqdm()
            self._redirect.__enter__()

    # ----------------------------------------------------------------- estimate
    def seconds_left(self) -> float | None:
        """Time left at this process's pace so far (None before the first unit is done)."""
        done = self.n - self.start
        if done <= 0:
            return None
        return (time.monotonic() - self.t0) / done * (self.total - self.n)

    def left(self) -> str:
        """``"about 3m05s left"`` for plain lines ("" on a terminal, where the bar shows it)."""
        if self.terminal or self.n >= self.total:
            return ""
        seconds = self.seconds_left()
        return "" if seconds is None else f"about {duration(seconds)} left"

    # ----------------------------------------------------------------- updates
    def update(self, n: int = 1) -> None:
        """``n`` more units done; without a terminal a plain line every ``every`` s, and one at :meth:`close`."""
        self.set(self.n + n)

    def set(self, n: int) -> None:
        n = min(max(n, self.n), self.total)
        if self._bar is not None:
            self._bar.update(n - self.n)
        self.n = n
        if self._bar is None and self.lines and n < self.total and time.monotonic() - self._last_line >= self.every:
            self._line()

    def _line(self) -> None:
        now = time.monotonic()
        self._last_line, self._printed = now, self.n
        post = "".join(f", {k} {v}" for k, v in self._postfix.items())
        left = self.left()
        print(f"{self.desc}: {self.n}/{self.total} {self.unit}s ({100 * self.n / max(self.total, 1):.0f}%), "
              f"{duration(now - self.t0)} spent{', ' + left if left else ''}{post}", file=self.stream, flush=True)

    def set_postfix(self, **values: Any) -> None:
        self._postfix = values
        if self._bar is not None:
            self._bar.set_postfix(values, refresh=False)

    def close(self) -> None:
        """End the bar; without a terminal, the last state as a line (when it was not printed yet)."""
        if self._bar is None and self.lines and self.n > self._printed:
            self._line()
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self._redirect is not None:
            self._redirect.__exit__(None, None, None)
            self._redirect = None

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


#: the open trial bar of each stage (Optuna study name) in this process
_TRIALS: dict[str, Progress] = {}


@atexit.register
def _close_trial_bars() -> None:
    """A stage stopped before its budget (Ctrl-C, every trial failed): end its bar on its own line."""
    for bar in list(_TRIALS.values()):
        bar.close()
    _TRIALS.clear()


def trial_progress(study_name: str, n: int, budget: int, stream: TextIO | None = None) -> str:
    """Trial ``n`` of ``budget`` of a stage has ended: move its bar; return the time left for a plain line.

    The first call of a stage opens its bar; the time left is estimated
    from the trials this process finished after that one (the first trial
    also loads models, and a resumed stage's earlier trials ran elsewhere).
    The last call closes the bar.
    """
    bar = _TRIALS.get(study_name)
    if bar is None or bar.total != budget:
        if bar is not None:
            bar.close()
        bar = _TRIALS[study_name] = Progress(budget, study_name.rsplit("/", 1)[-1], "trial", done=n,
                                             stream=stream, lines=False)  # the caller prints the lines
    bar.set(n)
    left = bar.left()
    if n >= budget:
        bar.close()
        _TRIALS.pop(study_name, None)
    return left
