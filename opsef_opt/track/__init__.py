"""Tracking: MLflow runs and the per-image artifacts users keep."""
from opsef_opt.track.artifacts import overlay_rgb, write_image_artifacts
from opsef_opt.track.mlflow_tracker import Tracker, metric_name, tracking_client

__all__ = ["Tracker", "metric_name", "tracking_client", "overlay_rgb", "write_image_artifacts"]
