"""Optuna's plots of a stage (optimisation history, parameter importances, parallel coordinates) as PNGs."""
from __future__ import annotations

import logging
import warnings
from pathlib import Path

import optuna

__all__ = ["stage_plots"]

log = logging.getLogger("opsef_opt")


def stage_plots(study: optuna.Study, folder: Path) -> list[Path]:
    """Write the plots that apply to this study (importances need two or more varied parameters)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ovm

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, plot in (("optimization_history", ovm.plot_optimization_history),
                       ("param_importances", ovm.plot_param_importances),
                       ("parallel_coordinate", ovm.plot_parallel_coordinate)):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                axes = plot(study)
            fig = axes.figure if hasattr(axes, "figure") else axes.flat[0].figure
            path = folder / f"{name}.png"
            fig.savefig(path, dpi=100, bbox_inches="tight")
            plt.close(fig)
            written.append(path)
        except Exception as e:  # e.g. one parameter only: no importances
            log.info("plot %s not drawn: %s: %s", name, type(e).__name__, e)
    return written
