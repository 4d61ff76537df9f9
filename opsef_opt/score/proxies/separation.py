"""Foreground/background separation proxy: does the mask split the image where its intensities split?

Why it tracks quality: the share of the raw image's intensity variance that
the object/background partition explains (Otsu's criterion applied to the
mask: ``w (1 - w) (mean_fg - mean_bg)^2 / var``) is highest when the objects
contain the bright (or dark) structures and the background the rest. Unlike
the per-object :mod:`.contrast`, it also sees *missed* objects: nuclei left
in the background lower the separation, which a conservative threshold that
keeps only the brightest nuclei would otherwise get away with. Symmetric
under intensity inversion (dark nuclei in H&E or brightfield). It says
nothing about how touching objects are split: :mod:`.shape` and
:mod:`.consensus` see that.

Measured on ``result.raw`` (the same reference image for every candidate).
No objects: 0. 2D and 3D.
"""
from __future__ import annotations

from opsef_opt.score.proxies.contrast import reference_image, separation
from opsef_opt.score.registry import ImageResult, register_proxy

__all__ = ["separation_score"]


@register_proxy("separation", weight=0.5)  # weights: see "Default weights" in __init__
def separation_score(result: ImageResult) -> dict[str, float]:
    """Share of the raw intensity variance explained by the object mask (Otsu's criterion)."""
    if result.labels.max() == 0:
        return {"separation": 0.0}
    return {"separation": separation(result.labels, reference_image(result))}
