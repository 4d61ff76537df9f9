"""Record finished trials in a separate process, so recording and searching use two cores.

A trial's recording (overlay and label PNGs, the label TIFF, the region
table, the MLflow images, metrics and run end) is about twice the demo's
model time per trial, and much of it is Python holding the interpreter lock
(SQLAlchemy, pandas): on a thread it slowed the search thread as much as it
overlapped with it. Here one recording process per Python process (started
with the first stage, reused by later stages and studies of the same process)
receives each call pickled, arrays included, through a pipe, and runs the
calls in order.

Nothing is lost when that process cannot start or dies: the calls it had not
finished are run in this process instead, and the following ones on a thread
(:class:`~opsef_opt.track.recorder.Recorder`), after one warning. A study
killed while its recording process still had trials to record records them
again when it resumes (:func:`opsef_opt.search.loop.record_unrecorded`), as
with a thread. The process ignores Ctrl-C, so an interrupted study still
records the trials that ended before the interruption.
"""
from __future__ import annotations

import atexit
import logging
import os
import pickle
import queue
import signal
import struct
import subprocess
import sys
import threading
from collections import deque
from concurrent.futures import Future
from typing import Any, BinaryIO, Callable

from opsef_opt.track.recorder import Recorder

__all__ = ["ProcessRecorder", "recording_process_pid"]

log = logging.getLogger("opsef_opt")

_HEAD = struct.Struct("<QQ")  # task id, payload length


class _Gone(Exception):
    """The recording process ended before answering."""


def _write(out: BinaryIO, task: int, payload: bytes) -> None:
    out.write(_HEAD.pack(task, len(payload)))
    out.write(payload)
    out.flush()


def _read(src: BinaryIO) -> tuple[int, bytes] | None:
    head = src.read(_HEAD.size)
    if len(head) < _HEAD.size:
        return None
    task, n = _HEAD.unpack(head)
    payload = src.read(n)
    return None if len(payload) < n else (task, payload)


class _Worker:
    """The recording process and the pipes to it (one per Python process)."""

    def __init__(self) -> None:
        req_r, req_w = os.pipe()
        res_r, res_w = os.pipe()
        env = dict(os.environ)
        # the same imports as here (an editable install, a test's PYTHONPATH, a notebook's sys.path)
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "opsef_opt.track.record_process", str(req_r), str(res_w)],
                pass_fds=(req_r, res_w), stdin=subprocess.DEVNULL, env=env)
        except OSError:
            os.close(req_w)
            os.close(res_r)
            raise
        finally:
            os.close(req_r)
            os.close(res_w)
        try:  # a 1 MiB pipe (Linux; else the default 64 KiB): a trial's arrays pass in fewer turns
            import fcntl

            fcntl.fcntl(req_w, getattr(fcntl, "F_SETPIPE_SZ", 1031), 1 << 20)
        except (ImportError, OSError):
            pass
        self._out = os.fdopen(req_w, "wb")
        self._lock = threading.Lock()
        self._futures: dict[int, Future] = {}
        self._next = 0
        self.alive = True
        # a writer thread: writing a trial's arrays into the pipe waits for the reader, not for this thread
        self._outbox: queue.Queue = queue.Queue()
        self._sender = threading.Thread(target=self._send, daemon=True, name="opsef-record-send")
        self._sender.start()
        threading.Thread(target=self._answers, args=(os.fdopen(res_r, "rb"),), daemon=True,
                         name="opsef-record-answers").start()

    def submit(self, fn: Callable[..., Any], args: tuple) -> Future:
        """Send ``fn(*args)``; the future's result is None or the error's text. Raises if it cannot be pickled."""
        payload = pickle.dumps((fn, args), protocol=pickle.HIGHEST_PROTOCOL)
        fut: Future = Future()
        with self._lock:
            if not self.alive:
                raise _Gone()
            task, self._next = self._next, self._next + 1
            self._futures[task] = fut
        self._outbox.put((task, payload))
        return fut

    def _send(self) -> None:
        while (item := self._outbox.get()) is not None:
            try:
                _write(self._out, *item)
            except OSError:  # the process is gone (broken pipe)
                self._gone()
                return
        try:
            self._out.close()
        except OSError:
            pass

    def _answers(self, src: BinaryIO) -> None:
        while (frame := _read(src)) is not None:
            task, payload = frame
            with self._lock:
                fut = self._futures.pop(task, None)
            if fut is not None:
                fut.set_result(pickle.loads(payload))
        self._gone()

    def _gone(self) -> None:
        """The process ended: every call it had not answered fails with :class:`_Gone` (and is run here)."""
        with self._lock:
            self.alive = False
            left, self._futures = self._futures, {}
        for fut in left.values():
            fut.set_exception(_Gone())

    def close(self, timeout: float = 60.0) -> None:
        """End the process after the calls it has (it reads to the end of the pipe)."""
        self._outbox.put(None)
        self._sender.join(timeout)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()


_WORKER: _Worker | None = None
_START_FAILED = False


def _worker() -> _Worker | None:
    """The process's recording process, started on first use; None when it cannot run."""
    global _WORKER, _START_FAILED
    if _WORKER is not None and _WORKER.alive:
        return _WORKER
    if _START_FAILED or _WORKER is not None:  # could not start, or died: no second one this process
        return None
    try:
        _WORKER = _Worker()
    except (OSError, ValueError) as e:  # ValueError: no pass_fds (Windows)
        _START_FAILED = True
        log.warning("recording process not started (%s); recording on a thread instead", e)
        return None
    atexit.register(_WORKER.close)
    return _WORKER


def recording_process_pid() -> int | None:
    """Process id of the running recording process (None: none running)."""
    return _WORKER.proc.pid if _WORKER is not None and _WORKER.alive else None


class ProcessRecorder:
    """:class:`~opsef_opt.track.recorder.Recorder`'s interface, recording in the recording process.

    ``fn`` and its arguments must pickle (a module-level function; a
    :class:`~opsef_opt.track.mlflow_tracker.Tracker` does); a call that does
    not is run on the thread instead. At most ``max_pending`` calls wait.
    """

    def __init__(self, max_pending: int = 2) -> None:
        self.max_pending = max_pending
        self._pending: deque[tuple[str, Future, Callable[..., Any], tuple]] = deque()
        self._thread: Recorder | None = None
        _worker()  # start it now: it imports while the first trial runs

    def _fallback(self) -> Recorder:
        if self._thread is None:
            self._thread = Recorder(self.max_pending)
        return self._thread

    def submit(self, what: str, fn: Callable[..., Any], *args: Any) -> None:
        """Record ``fn(*args)`` in the recording process (``what`` names it in warnings)."""
        worker = _worker() if self._thread is None else None
        if worker is not None:
            try:
                fut = worker.submit(fn, args)
            except _Gone:
                self._lost()
            except (pickle.PicklingError, TypeError, AttributeError):  # not for another process: on the thread
                pass
            else:
                self._pending.append((what, fut, fn, args))
                while len(self._pending) > self.max_pending:
                    self._settle(*self._pending.popleft())
                return
        self._fallback().submit(what, fn, *args)

    def _settle(self, what: str, fut: Future, fn: Callable[..., Any], args: tuple) -> None:
        try:
            error = fut.result()
        except _Gone:
            self._lost()
            Recorder._run(what, fn, *args)  # here, now: nothing submitted is lost
            return
        if error is not None:
            log.warning("could not record %s: %s", what, error)

    def _lost(self) -> None:
        if self._thread is None:
            log.warning("the recording process ended unexpectedly; recording in this process instead")
            self._fallback()

    def drain(self) -> None:
        """Wait until everything submitted is recorded."""
        while self._pending:
            self._settle(*self._pending.popleft())
        if self._thread is not None:
            self._thread.drain()

    def close(self) -> None:
        """Drain (the recording process stays for the next stage; it ends with this process)."""
        self.drain()
        if self._thread is not None:
            self._thread.close()
            self._thread = None


def _serve(requests: int, answers: int) -> None:
    """The recording process: run each call read from ``requests`` in order, answer on ``answers``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C stops the search; the trials it ended get recorded
    inbox: queue.Queue = queue.Queue()

    def read() -> None:  # read ahead, so the search process never waits on a full pipe
        with os.fdopen(requests, "rb") as src:
            while (frame := _read(src)) is not None:
                inbox.put(frame)
        inbox.put(None)

    threading.Thread(target=read, daemon=True).start()
    with os.fdopen(answers, "wb") as out:
        while (frame := inbox.get()) is not None:
            task, payload = frame
            try:
                fn, args = pickle.loads(payload)
                fn(*args)
                error = None
            except Exception as e:  # reported by the search process; recording must never stop the study
                error = f"{type(e).__name__}: {e}"
            _write(out, task, pickle.dumps(error))


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s [recording] %(message)s")
    _serve(int(sys.argv[1]), int(sys.argv[2]))
