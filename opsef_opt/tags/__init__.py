"""Human quality tags: stored as MLflow run tags, set from the UI, a terminal flow or a CSV."""
from opsef_opt.tags.runs import NOTE_TAG, QUALITY_TAG, TrialRun, normalize_tag, set_quality, trial_runs

__all__ = ["NOTE_TAG", "QUALITY_TAG", "TrialRun", "normalize_tag", "set_quality", "trial_runs"]
