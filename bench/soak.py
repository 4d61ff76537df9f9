"""Kill -9 a study at random moments over its whole life; does the same command still give the same answer?

Two phases, each against an uninterrupted reference run of the same command
(same seed, budget and workers) in its own folder:

- **first start**: each cycle starts the command in a *new* folder and kills
  it (the whole process group, as a power loss would) at a fixed offset
  after start, spread over the first seconds, when the databases are being
  created and migrated; then runs the same command to the end.
- **mid-trial**: one folder; each cycle starts the command and kills it at a
  random moment after it started a trial of its own (during preprocessing,
  model, scoring, recording, or between trials); after all cycles the same
  command runs to the end.

Printed per phase: how many restarts failed, completed trials, trials left
RUNNING, duplicate pipelines among completed trials, the trial <-> MLflow run
mapping (every completed trial has a FINISHED run tagged with its number;
every FINISHED trial run belongs to a completed trial; interrupted attempts
are KILLED), and whether the set of completed pipelines and the best score
equal the reference's.

Usage: python bench/soak.py [--start-cycles 20] [--mid-cycles 20] [--workers 1] [--trials 30]
       [--study demo] [--seed 0] [--keep DIR]
``tests/test_soak.py`` runs a short version.
"""
from __future__ import annotations

import argparse
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import optuna
from mlflow import MlflowClient


@dataclass
class Outcome:
    """What one folder's study ended with."""

    complete: int = 0
    running: int = 0
    failed_interrupted: int = 0
    duplicates: int = 0
    pipelines: frozenset = frozenset()
    best: float | None = None
    mapping_errors: list[str] = field(default_factory=list)


def command(folder: Path, study: str, trials: int, workers: int, seed: int, extra: list[str]) -> list[str]:
    return [sys.executable, "-m", "opsef_opt", f"study={study}", f"studies_dir={folder / 'studies'}",
            f"n_trials={trials}", f"n_workers={workers}", f"seed={seed}", "heartbeat.interval=1",
            "heartbeat.grace=3", *extra]


def start(cmd: list[str], cwd: Path, log: Path) -> subprocess.Popen:
    """Start the command in its own process group (so a kill reaches its workers too)."""
    out = open(log, "a")
    return subprocess.Popen(cmd, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def finish(cmd: list[str], cwd: Path, log: Path, timeout: float = 900) -> int:
    with open(log, "a") as out:
        return subprocess.run(cmd, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, timeout=timeout).returncode


def _query(db: Path, sql: str) -> int:
    if not db.exists():
        return 0
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)
        try:
            return con.execute(sql).fetchone()[0] or 0
        finally:
            con.close()
    except sqlite3.Error:
        return 0


def last_trial_id(db: Path) -> int:
    return _query(db, "select max(trial_id) from trials")


def new_running_trials(db: Path, after: int) -> int:
    """Trials this process started and is running (not one left RUNNING by the previous kill)."""
    return _query(db, f"select count(*) from trials where state = 'RUNNING' and trial_id > {after}")


def outcome(folder: Path, study: str) -> Outcome:
    """Read the finished study back from Optuna and MLflow, as a user would."""
    studies = folder / "studies"
    storage = f"sqlite:///{studies / study / 'optuna.db'}"
    out = Outcome()
    names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
    client = MlflowClient(f"sqlite:///{studies / 'mlflow.db'}")
    exp = client.get_experiment_by_name(study)
    runs = {r.info.run_id: r for r in client.search_runs([exp.experiment_id], max_results=50000)} if exp else {}
    pipelines, best = [], None
    complete_runs = set()
    for name in names:
        s = optuna.load_study(study_name=name, storage=storage)
        for t in s.get_trials(deepcopy=False):
            state = t.state.name
            if state == "COMPLETE":
                out.complete += 1
                pipelines.append((name, tuple(sorted(t.params.items()))))
                best = t.value if best is None else max(best, t.value)
                run = runs.get(t.user_attrs.get("mlflow_run_id", ""))
                if run is None:
                    out.mapping_errors.append(f"{name}#{t.number}: no MLflow run")
                    continue
                complete_runs.add(run.info.run_id)
                if run.info.status != "FINISHED" or run.data.tags.get("optuna.trial") != str(t.number):
                    out.mapping_errors.append(f"{name}#{t.number}: run {run.info.run_id} is {run.info.status}, "
                                              f"tagged trial {run.data.tags.get('optuna.trial')}")
            elif state == "RUNNING":
                out.running += 1
            elif state == "FAIL" and "error" not in t.user_attrs:
                out.failed_interrupted += 1
                run = runs.get(t.user_attrs.get("mlflow_run_id", ""))
                if run is not None and run.info.status not in ("KILLED", "FAILED"):
                    out.mapping_errors.append(f"{name}#{t.number}: interrupted, but its run is {run.info.status}")
    for run_id, run in runs.items():
        if ("mlflow.parentRunId" in run.data.tags and run.info.status == "FINISHED"
                and run.data.tags.get("opsef.status") == "complete" and run_id not in complete_runs):
            out.mapping_errors.append(f"run {run_id} FINISHED but belongs to no completed trial")
    out.duplicates = len(pipelines) - len(set(pipelines))
    out.pipelines = frozenset(pipelines)
    out.best = best
    return out


def report(title: str, got: Outcome, ref: Outcome, restarts_failed: int, cycles: int) -> bool:
    same = got.pipelines == ref.pipelines and got.best == ref.best
    print(f"{title}: {cycles} kills, restarts that failed: {restarts_failed}, completed trials {got.complete} "
          f"(reference {ref.complete}), left RUNNING {got.running}, interrupted attempts {got.failed_interrupted}, "
          f"duplicate pipelines {got.duplicates}, trial<->run mapping errors {len(got.mapping_errors)}, "
          f"same pipelines as uninterrupted: {got.pipelines == ref.pipelines}, best {got.best} vs {ref.best}: "
          f"{'SAME' if same else 'DIFFERENT'}")
    for e in got.mapping_errors[:5]:
        print(f"  mapping: {e}")
    if got.pipelines != ref.pipelines:
        print(f"  only here: {len(got.pipelines - ref.pipelines)}, only in the reference: "
              f"{len(ref.pipelines - got.pipelines)}")
    return same and not got.running and not got.duplicates and not got.mapping_errors and not restarts_failed


def first_start_phase(root: Path, args, ref: Outcome) -> bool:
    """Kill each new study at an offset spread over its first seconds, then run the same command to the end."""
    ok = True
    offsets = [args.start_window * (i + 0.5) / args.start_cycles for i in range(args.start_cycles)]
    failed = 0
    worst: Outcome | None = None
    for i, offset in enumerate(offsets):
        folder = root / f"start{i:02d}"
        folder.mkdir()
        cmd = command(folder, args.study, args.start_trials, args.workers, args.seed, args.extra)
        proc = start(cmd, folder, folder / "log.txt")
        time.sleep(offset)
        kill(proc)
        rc = finish(cmd, folder, folder / "log.txt")
        if rc != 0:
            failed += 1
            print(f"  first start killed at {offset:.2f} s: the same command then exited {rc} "
                  f"(see {folder / 'log.txt'})")
            continue
        got = outcome(folder, args.study)
        if got.pipelines != ref.pipelines or got.best != ref.best or got.running or got.duplicates \
                or got.mapping_errors:
            ok = False
            worst = got
            print(f"  first start killed at {offset:.2f} s: the resumed study differs (completed {got.complete}, "
                  f"best {got.best}, mapping errors {len(got.mapping_errors)})")
    print(f"first-start kills: {len(offsets)} (offsets {offsets[0]:.2f}..{offsets[-1]:.2f} s after start), "
          f"restarts that failed: {failed}, resumed studies equal to the uninterrupted one: "
          f"{len(offsets) - failed - (worst is not None)}/{len(offsets)}")
    return ok and failed == 0


def mid_trial_phase(root: Path, args, ref: Outcome) -> bool:
    """Kill one study repeatedly at random moments while trials run, then run the same command to the end."""
    folder = root / "mid"
    folder.mkdir()
    cmd = command(folder, args.study, args.trials, args.workers, args.seed, args.extra)
    db = folder / "studies" / args.study / "optuna.db"
    rng = random.Random(args.seed)
    kills = 0
    for _ in range(args.mid_cycles):
        before = last_trial_id(db)
        proc = start(cmd, folder, folder / "log.txt")
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None and new_running_trials(db, before) == 0:
            time.sleep(0.02)
        if proc.poll() is not None:
            print("  the study finished before all kills were made; raise --trials")
            break
        time.sleep(rng.uniform(0, args.mid_window))
        kill(proc)
        kills += 1
    rc = finish(cmd, folder, folder / "log.txt")
    got = outcome(folder, args.study)
    return report(f"mid-trial kills (final resume exit {rc})", got, ref, int(rc != 0), kills)


def reference(folder: Path, args, trials: int) -> Outcome | None:
    """The uninterrupted run of the same command (None, with its log, when it failed)."""
    folder.mkdir()
    rc = finish(command(folder, args.study, trials, args.workers, args.seed, args.extra), folder, folder / "log.txt")
    if rc != 0:
        print(f"the uninterrupted reference run failed (exit {rc}):\n" + (folder / "log.txt").read_text()[-3000:])
        return None
    ref = outcome(folder, args.study)
    print(f"reference ({trials} trials, uninterrupted, exit {rc}): best {ref.best}")
    return ref


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--start-cycles", type=int, default=20)
    p.add_argument("--start-window", type=float, default=8.0, help="first-start kills spread over this many s")
    p.add_argument("--start-trials", type=int, default=4, help="budget of the first-start studies")
    p.add_argument("--mid-cycles", type=int, default=20)
    p.add_argument("--mid-window", type=float, default=3.0, help="kill up to this many s after a trial runs")
    p.add_argument("--trials", type=int, default=30)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--study", default="demo")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--keep", type=Path, default=None, help="folder to keep the runs in (default: a temp folder)")
    p.add_argument("extra", nargs="*", help="more overrides for the command")
    args = p.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="opsef-soak-"))
    root.mkdir(parents=True, exist_ok=True)
    print(f"soak: study {args.study}, {args.workers} worker(s), seed {args.seed}, folder {root}")
    ok = True
    t0 = time.time()
    for cycles, name, trials, phase in ((args.start_cycles, "ref_start", args.start_trials, first_start_phase),
                                        (args.mid_cycles, "ref_mid", args.trials, mid_trial_phase)):
        if not cycles:
            continue
        ref = reference(root / name, args, trials)
        if ref is None:
            return 1
        ok &= phase(root, args, ref)
    print(f"soak {'PASSED' if ok else 'FAILED'} in {time.time() - t0:.0f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
