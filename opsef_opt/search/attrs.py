"""The names of what opsef-opt stores on Optuna studies and trials (user attributes), in one place.

Optuna keeps these in its storage next to each trial, so a resumed or
parallel run reads what another process wrote; the leaderboard, best.yaml,
re-scoring, budget and tag seeding all read them.
"""
from __future__ import annotations

# ---- on trials
#: MLflow run id of the trial's run
MLFLOW_RUN_ID = "mlflow_run_id"
#: what the leaderboard shows without an MLflow round trip (labels, times, object counts, GT metrics)
SUMMARY = "summary"
#: why the trial failed ("<ExceptionType>: message")
ERROR = "error"
#: stopped by Ctrl-C / SIGTERM (queued again: it is retried first)
INTERRUPTED = "interrupted"
#: started after the shared budget was spent (not counted, its grid point queued again)
OVER_BUDGET = "over_budget"
#: host:pid of the process that ran it
WORKER = "worker"
#: the interrupted trial this one retries / the over-budget trial whose grid point it took over
RETRY_OF = "retry_of"
REQUEUED_FROM = "requeued_from"
#: "<stage>#<n>" of the earlier stage's trial it was handed over from, and that trial's score
SOURCE_TRIAL = "source_trial"
SOURCE_SCORE = "source_score"
#: a refine stage's queued post-processing neighbour of an earlier stage's top pipeline (``stage#n``)
NEIGHBOUR_OF = "neighbour_of"
#: "tag" for a seeded trial whose value is an analyst's tag (else evaluated)
VALUE_SOURCE = "value_source"
TAG = "tag"
SEEDED_FROM = "seeded_from"

# ---- on studies (stages)
#: {trial number: final score against the common pool} and the pool's fingerprint
FINAL_SCORES = "final_scores"
FINAL_POOL = "final_pool"
OBJECTIVE = "objective"
SPACE_SIGNATURE = "space_signature"
GRID_ENQUEUED = "grid_enqueued"
SOURCES_ENQUEUED = "sources_enqueued"
DERIVED_FROM = "derived_from"
REQUEUED = "requeued"
SEEDED = "seeded"
SKIPPED_MODELS = "skipped_models"
CACHE_STATS = "cache_stats"
