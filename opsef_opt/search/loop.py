"""The trial loop of one stage: start trials until the budget shared by every worker is spent.

Optuna's ``optimize`` runs the trials; a callback ends it when the budget
is filled (finished trials plus those running elsewhere), and the loop
waits for trials running in other processes, which either finish or are
failed and queued again by their missing heartbeats.
"""
from __future__ import annotations

import logging
import time
import warnings
from datetime import datetime

import optuna
from optuna.trial import TrialState

from opsef_opt.search import attrs as A
from opsef_opt.search.budget import budget_counts
from opsef_opt.search.control import StopRequest
from opsef_opt.search.space import pipeline_from_params
from opsef_opt.search.trial import TrialContext, TrialFailed, evaluate, record_trial, run_trial
from opsef_opt.settings import Settings

__all__ = ["trial_loop", "BudgetCallback", "fail_stale", "record_unrecorded", "report"]

log = logging.getLogger("opsef_opt")


def trial_loop(settings: Settings, study: optuna.Study, ctx: TrialContext, budget: int,
               stop: StopRequest | None = None, worker: bool = False) -> optuna.Study:
    """Start trials until the budget (shared by every worker on this storage) is spent.

    ``stop``: the process's Ctrl-C / SIGTERM request (:func:`opsef_opt.search.control.stop_on_signals`),
    checked between images and between trials; without it a KeyboardInterrupt stops at once.
    """
    stop = stop if stop is not None else StopRequest()
    ctx.check_stop = stop.check
    # a failed trial is reported by our progress line; Optuna's own (with a traceback) is noise
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    budget_check = BudgetCallback(settings, ctx, budget, stop)
    waited = False
    try:
        while True:
            done, running = budget_check.counts(study)
            if done >= budget:
                break
            if done + running >= budget:
                if not waited and not worker:
                    log.info("waiting for %d running trial(s): finishing elsewhere, or interrupted and "
                             "retried after %d s without heartbeat", running, settings.heartbeat_grace)
                    waited = True
                time.sleep(settings.heartbeat_interval)
                continue
            stop.check()
            study.optimize(lambda t: run_trial(t, ctx), catch=(TrialFailed,), gc_after_trial=False,
                           callbacks=[budget_check])
    finally:
        ctx.recorder.close()
    return study


class BudgetCallback:
    """Optuna callback after each trial: its progress line, and ``study.stop()`` once the budget is filled.

    The budget counts trials that ran to an end in any process
    (:func:`opsef_opt.search.budget.count_trials`); trials running elsewhere
    count too, so no process starts a trial the budget has no room for. Dead
    processes' trials are failed (and queued again) at most once per
    heartbeat interval: reading every trial's heartbeat after every trial is
    a storage round trip the loop does not need.
    """

    def __init__(self, settings: Settings, ctx: TrialContext, budget: int, stop: StopRequest) -> None:
        self.settings, self.ctx, self.budget, self.stop = settings, ctx, budget, stop
        self.started: set[int] = set()
        self.checked = float("-inf")

    def counts(self, study: optuna.Study) -> tuple[int, int]:
        """(trials that count against the budget, trials running now), after failing stale ones when due."""
        now = time.monotonic()
        if now - self.checked >= self.settings.heartbeat_interval:
            self.checked = now
            fail_stale(study, self.settings.heartbeat_grace, self.started)
        return budget_counts(study)

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        done, running = self.counts(study)
        report(self.ctx.last, done, self.budget, self.ctx)
        if done + running >= self.budget or self.stop.requested:
            study.stop()


def fail_stale(study: optuna.Study, grace: int, started: set[int]) -> None:
    """Fail (and requeue) trials whose process died.

    Optuna only judges trials that recorded a heartbeat; a process killed
    between creating a trial and its first heartbeat would leave it RUNNING
    forever. For a RUNNING trial older than the grace period we record one
    heartbeat on its behalf (once): a live trial refreshes it anyway, a dead
    one then goes stale after another grace period.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    now = datetime.now()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if (t._trial_id not in started and t.datetime_start
                and (now - t.datetime_start).total_seconds() > grace):
            study._storage.record_heartbeat(t._trial_id)
            started.add(t._trial_id)


def record_unrecorded(study: optuna.Study, ctx: TrialContext) -> None:
    """Record again the completed trials whose recording a killed process did not finish.

    The pipeline is deterministic, so re-evaluating it reproduces the labels;
    the model and preprocessing caches make this cheap.
    """
    open_runs = ctx.tracker.running_trial_runs(study.study_name)
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        run_id = t.user_attrs.get(A.MLFLOW_RUN_ID)
        if run_id in open_runs:
            log.info("recording trial %d again (its process was killed while recording it)", t.number)
            value, metrics, outputs = evaluate(ctx, pipeline_from_params(ctx.space, t.params), t.number)
            ctx.store.save(t.number, {o.name: o.labels for o in outputs}, {o.name: o.metrics for o in outputs})
            record_trial(ctx.tracker, run_id, outputs if ctx.log_artifacts else [], metrics)


def report(last: dict, n: int, budget: int, ctx: TrialContext) -> None:
    """One line per ended trial; on a terminal also a progress bar with the time left (opsef_opt.progress)."""
    from opsef_opt.progress import trial_progress
    from opsef_opt.track.names import stage_of, trial_name

    if last.get("over_budget"):
        return
    name = trial_name(stage_of(ctx.study_name), last["number"])
    left = trial_progress(ctx.study_name, n, budget)  # "" on a terminal: the bar shows it
    left = f"  ({left})" if left else ""
    if last.get("pruned"):
        log.info("[%d/%d] %s pruned (%s)  %s%s", n, budget, name, last["pruned"], last["pipeline"], left)
    elif last.get("error"):
        log.warning("[%d/%d] %s FAILED: %s%s", n, budget, name, last["error"], left)
    elif "value" in last:
        # a score against the pool so far is provisional (and without consensus while few families vote)
        value, note = (ctx.pool.progress(last["number"], last["value"], ctx.objective.name)
                       if ctx.pool is not None else (last["value"], ""))
        log.info("[%d/%d] %s  score %.4f%s  %s%s", n, budget, name, value, note, last["pipeline"], left)
