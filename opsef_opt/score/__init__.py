"""Scores for trials: ground-truth metrics, unsupervised proxies (a registry), human tags."""
from opsef_opt.score import proxies  # noqa: F401  (registers the built-in proxies)
from opsef_opt.score.registry import PROXIES, ImageResult, Proxy, register_proxy

__all__ = ["PROXIES", "ImageResult", "Proxy", "register_proxy"]
