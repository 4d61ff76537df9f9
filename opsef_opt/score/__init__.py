"""Scores for trials: ground-truth metrics and unsupervised proxies, behind a registry."""
from opsef_opt.score import gt, proxy  # noqa: F401  (register built-in scores)
from opsef_opt.score.gt import instance_metrics
from opsef_opt.score.proxy import boundary_contrast
from opsef_opt.score.registry import SCORES, ImageResult, ScoreFn, register_score

__all__ = ["SCORES", "ImageResult", "ScoreFn", "boundary_contrast", "instance_metrics", "register_score"]
