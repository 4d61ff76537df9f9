"""From a foreground mask or probability map to instance labels.

Shared by every model that predicts *where* objects are but not *which*
object a pixel belongs to (classical thresholding, semantic U-Nets): a
distance-transform watershed splits touching objects.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from skimage import morphology, segmentation
from skimage.feature import peak_local_max

__all__ = ["split_foreground", "instances_from_probability"]


def split_foreground(fg: np.ndarray, min_distance: int = 5, min_size: int = 0) -> np.ndarray:
    """Label a boolean foreground, splitting touching objects by distance-transform watershed.

    Parameters
    ----------
    fg : (Y, X) bool array
    min_distance : int
        Minimum distance between seeds (maxima of the distance transform),
        about the smallest object radius in pixels; 0 = no splitting
        (connected components).
    min_size : int
        Objects smaller than this many pixels are removed.

    Returns
    -------
    (Y, X) int32 labels, 1..N, every foreground component keeps at least one object.
    """
    fg = np.asarray(fg, bool)
    components, n = ndi.label(fg)
    if n == 0:
        return np.zeros(fg.shape, np.int32)
    if min_distance <= 0:
        labels = components
    else:
        dist = ndi.distance_transform_edt(fg)
        peaks = peak_local_max(dist, min_distance=int(min_distance), labels=components, exclude_border=False)
        markers = np.zeros(fg.shape, np.int32)
        markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
        # every component gets at least one seed, so no object is lost
        missing = np.setdiff1d(np.arange(1, n + 1), np.unique(components[markers > 0]))
        if missing.size:
            for k, p in enumerate(ndi.maximum_position(dist, components, missing), start=len(peaks) + 1):
                markers[p] = k
        labels = segmentation.watershed(-dist, markers, mask=fg)
    if min_size > 1:
        labels = morphology.remove_small_objects(labels, max_size=min_size - 1)
    labels, _, _ = segmentation.relabel_sequential(labels)
    return labels.astype(np.int32)


def instances_from_probability(
    prob: np.ndarray, threshold: float = 0.5, min_distance: int = 5, min_size: int = 20
) -> np.ndarray:
    """Instances from a foreground probability map: threshold, fill holes, then :func:`split_foreground`."""
    fg = ndi.binary_fill_holes(np.asarray(prob) > threshold)
    return split_foreground(fg, min_distance=min_distance, min_size=min_size)
