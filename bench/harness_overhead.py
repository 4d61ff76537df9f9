"""How much of a study's time goes to the harness rather than to preprocessing + segmentation?

Runs a study through the real CLI in a fresh folder (default: the demo study),
then reads the Optuna storage and MLflow store it produced and prints:

- wall time of the command and of the search loop (first trial start → last trial end);
- time in preprocessing and in segmentation (measured inside each trial);
- the share of search-loop time spent outside preprocessing + segmentation
  (scoring, Optuna storage, MLflow, artifacts: everything else), overall and
  as a fixed cost in ms per trial, and the model time per trial at which that
  fixed cost would be 5 %;
- preprocessing computations vs. cache hits;
- what the fixed cost per trial is made of (scoring vs. the rest) and the
  network forward passes the study ran (and raw outputs it reused);
- the floor no harness on this stack can go under: the study's own trials
  replayed on a fresh Optuna SQLite storage with nothing but ask, the three
  user attributes a trial stores and tell, and one bare MLflow run per trial
  with the same parameters and metrics (no artifacts), in ms per trial, next
  to the model time per trial.

Usage: python bench/harness_overhead.py [--keep DIR] [hydra overrides ...]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import optuna
from mlflow import MlflowClient


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keep", type=Path, help="run in this folder and keep it (default: a temporary folder)")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. study=demo n_trials=48")
    args = ap.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="opsef-bench-"))
    work.mkdir(parents=True, exist_ok=True)

    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "opsef_opt", *args.overrides], cwd=work,
                          capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"study failed:\n{proc.stdout}\n{proc.stderr}")

    dbs = list((work / "studies").glob("*/optuna.db"))
    (db,) = dbs
    name = db.parent.name
    study = optuna.load_study(study_name=f"{name}/search", storage=f"sqlite:///{db}")
    trials = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    pre = np.array([t.user_attrs["summary"]["time_preprocess_s"] for t in trials])
    seg = np.array([t.user_attrs["summary"]["time_segment_s"] for t in trials])
    loop = (max(t.datetime_complete for t in trials) - min(t.datetime_start for t in trials)).total_seconds()
    per_trial = [(t.datetime_complete - t.datetime_start).total_seconds() for t in trials]

    client = MlflowClient(f"sqlite:///{work / 'studies' / 'mlflow.db'}")
    exp = client.get_experiment_by_name(name)
    runs = client.search_runs([exp.experiment_id], "tags.`opsef.status` = 'complete'", max_results=5000)
    m = lambda key: np.array([r.data.metrics.get(key, np.nan) for r in runs])  # noqa: E731
    parent = [r for r in client.search_runs([exp.experiment_id], max_results=5000)
              if "mlflow.parentRunId" not in r.data.tags][0]
    cache = json.loads(parent.data.tags.get("cache", "{}"))

    n = len(trials)
    inside = pre.sum() + seg.sum()
    outside = loop - inside
    print(f"study {name}: {n} completed trials, command wall time {wall:.1f} s "
          f"(start-up, validation and leaderboard {wall - loop:.1f} s), search loop {loop:.1f} s")
    print(f"per trial (median): Optuna wall {np.median(per_trial) * 1000:.1f} ms, "
          f"preprocess {np.median(pre) * 1000:.1f} ms, segment {np.median(seg) * 1000:.1f} ms, "
          f"score {np.nanmedian(m('time_score_s')) * 1000:.1f} ms, "
          f"recording (recording process, in parallel) {np.nanmedian(m('time_log_s')) * 1000:.1f} ms")
    print(f"time in preprocessing {pre.sum():.2f} s + segmentation {seg.sum():.2f} s = {inside:.2f} s "
          f"of the {loop:.2f} s search loop")
    print(f"harness overhead (outside preprocessing + segmentation): {outside / loop:.1%} of search-loop time, "
          f"{outside / n * 1000:.0f} ms per trial")
    print(f"  -> the overhead is below 5 % once a trial's model time exceeds {outside / n / 0.05:.1f} s "
          f"(here: {seg.mean():.3f} s per trial)")
    print(f"preprocessing: {cache.get('computed', '?')} computed, "
          f"{cache.get('memory_hits', 0)} memory hits + {cache.get('disk_hits', 0)} disk hits")
    score = np.nansum(m("time_score_s"))
    rest = outside - score
    print(f"fixed cost per trial (mean): scoring (proxies + GT) {score / n * 1000:.0f} ms, everything else "
          f"(Optuna storage, MLflow run creation and logging, waiting for the recording process) "
          f"{rest / n * 1000:.0f} ms; recording itself (in parallel) {np.nanmean(m('time_log_s')) * 1000:.0f} ms")
    fwd = m("forward_passes")
    if np.isfinite(fwd).any():
        print(f"network forward passes: {int(np.nansum(fwd))} (raw outputs reused: "
              f"{int(np.nansum(m('inference_reused')))})")
    opt_ms, mlf_ms = stack_floor(trials, runs[0], Path(tempfile.mkdtemp(prefix="opsef-floor-")))
    model = inside / n * 1000
    print(f"floor per trial (this stack, no opsef-opt code): Optuna ask + 3 user attributes + tell {opt_ms:.1f} ms "
          f"in the search process; a bare MLflow run with the same {len(runs[0].data.params)} parameters and "
          f"{len(runs[0].data.metrics)} metrics {mlf_ms:.1f} ms; model time {model:.1f} ms per trial "
          f"(mean), so overhead <= 20 % of the loop means <= {model / 4:.1f} ms per trial")
    if not args.keep:
        print(f"(outputs in {work})")


def stack_floor(trials: list, run, folder: Path) -> tuple[float, float]:
    """ms per trial that Optuna's RDB storage and MLflow's store cost with nothing else around them.

    Replays ``trials`` (their distributions, parameters, values and stored
    summaries) on a fresh SQLite Optuna storage in WAL mode, as the study uses
    it, and creates one MLflow run per trial in a fresh SQLite store with the
    parameters and metrics of ``run``.
    """
    import mlflow.entities as me

    from opsef_opt.backends import fast_commits

    db = folder / "optuna.db"
    optuna.storages.RDBStorage(f"sqlite:///{db}").engine.dispose()
    fast_commits(db)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = optuna.storages.RDBStorage(f"sqlite:///{db}", heartbeat_interval=60, grace_period=120)
    study = optuna.create_study(study_name="floor", storage=storage, direction="maximize",
                                sampler=optuna.samplers.RandomSampler(seed=0))
    for t in trials:
        study.enqueue_trial(t.params)
    t0 = time.perf_counter()
    for t in trials:
        trial = study.ask(fixed_distributions=t.distributions)
        trial.set_user_attr("worker", "host:1")
        trial.set_user_attr("mlflow_run_id", "0" * 32)
        trial.set_user_attr("summary", t.user_attrs.get("summary", {}))
        study.tell(trial, t.value)
    opt = (time.perf_counter() - t0) / len(trials) * 1000

    fast_commits(folder / "mlflow.db")
    client = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    exp = client.create_experiment("floor", artifact_location=(folder / "artifacts").as_uri())
    params = [me.Param(k, v) for k, v in run.data.params.items()]
    t0 = time.perf_counter()
    for t in trials:
        r = client.create_run(exp, run_name=f"trial {t.number}", tags={"optuna.trial": str(t.number)})
        client.log_batch(r.info.run_id, params=params)
        now = int(time.time() * 1000)
        client.log_batch(r.info.run_id, metrics=[me.Metric(k, v, now, 0) for k, v in run.data.metrics.items()],
                         tags=[me.RunTag("opsef.status", "complete")])
        client.set_terminated(r.info.run_id, "FINISHED")
    mlf = (time.perf_counter() - t0) / len(trials) * 1000
    return opt, mlf


if __name__ == "__main__":
    main()
