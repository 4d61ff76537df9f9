"""The search: space, trials, stages, scoring pools, leaderboards and best pipelines."""
