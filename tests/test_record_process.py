"""The recording process: trials are recorded in another process, in order, and nothing is lost when it dies."""
from __future__ import annotations

import logging
import os
import pickle
import signal
import time
from pathlib import Path

from opsef_opt.track import Tracker
from opsef_opt.track import record_process
from opsef_opt.track.record_process import ProcessRecorder, recording_process_pid


def note_pid(path: Path, i: int) -> None:
    """A recording call: append ``<pid> <i>`` (module level, so the recording process can import it)."""
    with open(path, "a") as f:
        f.write(f"{os.getpid()} {i}\n")


def fail(i: int) -> None:
    raise ValueError(f"bad call {i}")


def _lines(path: Path) -> list[tuple[int, int]]:
    return [tuple(map(int, line.split())) for line in path.read_text().splitlines()]


def test_calls_run_in_the_recording_process_in_order_and_errors_are_reported(tmp_path, caplog):
    out = tmp_path / "calls.txt"
    rec = ProcessRecorder(max_pending=1)
    for i in range(4):
        rec.submit(f"call {i}", note_pid, out, i)
    rec.submit("the bad one", fail, 7)
    rec.submit("call 4", note_pid, out, 4)
    with caplog.at_level(logging.WARNING, logger="opsef_opt"):
        rec.close()
    lines = _lines(out)
    assert [i for _, i in lines] == [0, 1, 2, 3, 4]
    pids = {pid for pid, _ in lines}
    assert pids == {recording_process_pid()} and os.getpid() not in pids
    assert "could not record the bad one: ValueError: bad call 7" in caplog.text


def test_a_call_that_does_not_pickle_is_recorded_on_a_thread(tmp_path):
    out = tmp_path / "calls.txt"
    rec = ProcessRecorder()
    rec.submit("a lambda", lambda: note_pid(out, 1))
    rec.close()
    assert _lines(out) == [(os.getpid(), 1)]


def test_nothing_is_lost_when_the_recording_process_dies(tmp_path, caplog):
    out = tmp_path / "calls.txt"
    rec = ProcessRecorder(max_pending=50)
    rec.submit("warm-up", note_pid, out, 0)
    rec.drain()
    pid = recording_process_pid()
    assert pid is not None
    try:
        with caplog.at_level(logging.WARNING, logger="opsef_opt"):
            # calls queued behind a slow one are in flight when the process is killed
            rec.submit("slow", time.sleep, 2.0)
            for i in range(1, 6):
                rec.submit(f"call {i}", note_pid, out, i)
            os.kill(pid, signal.SIGKILL)
            for i in range(6, 9):
                rec.submit(f"call {i}", note_pid, out, i)
            rec.close()
        lines = _lines(out)
        assert sorted(i for _, i in lines) == list(range(9))  # each call exactly once
        assert {p for p, i in lines if i >= 6} == {os.getpid()}  # after the death: here
        assert "the recording process ended unexpectedly" in caplog.text
        assert recording_process_pid() is None
    finally:
        record_process._WORKER = None  # later tests get a new recording process


def test_a_tracker_pickles_to_the_same_store_and_experiment(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri, tmp_path / "artifacts", "exp")
    copy = pickle.loads(pickle.dumps(tracker))
    assert (copy.tracking_uri, copy.experiment_id) == (tracker.tracking_uri, tracker.experiment_id)
    parent = tracker.open_parent(None, "stage", {})
    run_id = copy.start_trial(parent, 0, "exp/search", {"a": 1}, tags={"pipeline": "p"})
    copy.finish(run_id, "FINISHED")
    run = tracker.client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.params == {"a": "1"}


def test_a_replaced_store_is_opened_again(tmp_path):
    """A study folder deleted and run again in one notebook: the new file gets the runs, not the deleted one."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    first = pickle.loads(pickle.dumps(Tracker(uri, tmp_path / "artifacts", "exp")))
    assert pickle.loads(pickle.dumps(first)).client is first.client  # opened once per tracker
    (tmp_path / "mlflow.db").unlink()
    for extra in tmp_path.glob("mlflow.db-*"):
        extra.unlink()
    tracker = Tracker(uri, tmp_path / "artifacts", "exp")
    second = pickle.loads(pickle.dumps(tracker))
    assert second.client is not first.client
    run_id = second.start_trial(tracker.open_parent(None, "stage", {}), 0, "exp/search", {}, tags={})
    assert tracker.client.get_run(run_id).info.run_id == run_id


def test_the_recording_process_ignores_ctrl_c(tmp_path):
    """Ctrl-C reaches every process of the terminal's group; the trials already ended still get recorded."""
    out = tmp_path / "calls.txt"
    rec = ProcessRecorder()
    rec.submit("warm-up", note_pid, out, 0)
    rec.drain()
    os.kill(recording_process_pid(), signal.SIGINT)
    for i in range(1, 3):
        rec.submit(f"call {i}", note_pid, out, i)
    rec.close()
    assert [i for _, i in _lines(out)] == [0, 1, 2]
