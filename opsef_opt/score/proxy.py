"""A simple unsupervised score, used when a study has no ground truth.

Provisional by design: the validated proxy set (consensus, stability, ...)
comes with the scoring issue. This one rewards what a human checks first on an
overlay: objects that are compact (solidity) and that stand out from their
immediate surroundings (boundary contrast); an empty result scores 0.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from skimage.measure import regionprops_table

from opsef_opt.score.registry import ImageResult, register_score

__all__ = ["boundary_contrast", "proxy_basic"]


def boundary_contrast(labels: np.ndarray, image: np.ndarray, ring: int = 2) -> float:
    """Mean intensity inside objects minus mean in a ``ring``-pixel band outside them.

    Scaled by the image's 1–99 percentile range and clipped to [0, 1]: 1 when
    objects are as bright against their surroundings as the image allows.
    """
    fg = labels > 0
    if not fg.any():
        return 0.0
    band = ndi.binary_dilation(fg, iterations=ring) & ~fg
    if not band.any():
        return 0.0
    lo, hi = np.percentile(image, (1, 99))
    spread = max(float(hi - lo), 1e-6)
    return float(np.clip((image[fg].mean() - image[band].mean()) / spread, 0.0, 1.0))


@register_score("proxy_basic", key="proxy")
def proxy_basic(result: ImageResult, **_) -> dict[str, float]:
    """Unsupervised: mean of object solidity and boundary contrast (0 if nothing found)."""
    labels = result.labels
    if labels.max() == 0:
        return dict(proxy=0.0, solidity=0.0, contrast=0.0)
    props = regionprops_table(labels, properties=("solidity",))
    solidity = float(np.mean(props["solidity"]))
    contrast = boundary_contrast(labels, result.image)
    return dict(proxy=0.5 * (solidity + contrast), solidity=solidity, contrast=contrast)
