"""Outline polygons of the objects of a label image, shared by the ImageJ and QuPath exports.

Each object becomes one polygon that follows the pixel edges ("crack" outline), in the coordinate
convention ImageJ and QuPath share: x to the right, y down, (0, 0) the top-left *corner* of the
first pixel, so pixel (row r, column c) is the unit square [c, c+1] x [r, r+1]. Such a polygon is
what ImageJ's wand / "Create Selection" and QuPath's label-image import produce, its area equals
the object's pixel count, and filling it with the rule both programs use (a pixel is inside when
its centre is inside) gives back exactly the pixels of the object.

How it is traced: the object's bounding-box crop, padded by one pixel, is contoured with
``skimage.measure.find_contours`` at level 0.5. The marching-squares vertices are the midpoints of
the pixel edges between the object and the background; wherever the contour turns, the shared
pixel corner is put in, and the corners alone form the outline (integer coordinates, no collinear
vertices). Only the crop is processed, so thousands of objects stay fast.

What a single polygon cannot carry (documented limits):

* **several components** (pixels of one label that do not touch by an edge): only the largest
  4-connected component is outlined; the smaller pieces are left out;
* **holes**: only the outer boundary is traced, so holes are filled;
* **pinch points**: where the outline touches itself at one pixel corner (two object pixels meeting
  diagonally around a background pocket), both visits of that corner are moved 1/8 pixel towards
  their own object pixel. The ring is then simple (valid GeoJSON / OGC) and still rasterises to the
  same pixels (pixel centres are 1/2 pixel away); those vertices have fractional coordinates.
"""
from __future__ import annotations

from collections import Counter

import numpy as np
from scipy import ndimage as ndi
from skimage import measure

__all__ = ["label_polygons", "check_labels"]

#: how far a pinch-point vertex is moved towards its own pixel (exact in float32)
PINCH_SHIFT = 0.125


def check_labels(labels: np.ndarray) -> np.ndarray:
    """The label image as a 2-D integer array; a clear ValueError otherwise."""
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"label image must be 2-D (Y, X), got shape {labels.shape}")
    if labels.dtype == bool:
        return labels.astype(np.uint8)
    if labels.dtype.kind not in "iu":
        raise ValueError(f"label image must have an integer dtype, got {labels.dtype}")
    if labels.size and labels.min() < 0:
        raise ValueError("label image has negative values; labels must be >= 0 (0 = background)")
    return labels


def label_polygons(labels: np.ndarray, offset: tuple[int, int] = (0, 0)) -> dict[int, np.ndarray]:
    """Pixel-edge outline of every object: ``{label: (N, 2) float array of (x, y) vertices}``.

    ``offset`` is (y, x) of the label image's top-left pixel in the full image (for tiles); it is
    added to every vertex. Rings are open (the first vertex is not repeated) and ordered so that
    the shoelace area in (x, y) is positive. See the module docstring for components, holes and
    pinch points.
    """
    labels = check_labels(labels)
    oy, ox = (float(v) for v in offset)
    polygons: dict[int, np.ndarray] = {}
    for index, bbox in enumerate(ndi.find_objects(labels)):
        if bbox is None:
            continue
        label = index + 1
        ring = _crack_outline(labels[bbox] == label)
        ring[:, 0] += bbox[1].start + ox
        ring[:, 1] += bbox[0].start + oy
        polygons[label] = ring
    return polygons


def _largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 4-connected component of a boolean mask (ties: the first in raster order)."""
    components, count = ndi.label(mask)  # default structure: 4-connectivity
    if count <= 1:
        return mask
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    return components == int(np.argmax(sizes))


def _crack_outline(mask: np.ndarray) -> np.ndarray:
    """Pixel-edge outline (x, y) of the largest component of ``mask``, in crop coordinates."""
    padded = np.pad(_largest_component(mask), 1).astype(np.float64)
    # fully_connected="low": background 8-connected, object 4-connected, matching the component
    # rule above, so one component has exactly one outer contour.
    contours = measure.find_contours(padded, 0.5, fully_connected="low")
    outer = max(contours, key=lambda c: abs(_shoelace(c)))[:-1]  # closed: drop repeated vertex
    following = np.roll(outer, -1, axis=0)
    turns = (outer[:, 0] != following[:, 0]) & (outer[:, 1] != following[:, 1])
    a, b = outer[turns], following[turns]
    # edge midpoints have one half-integer coordinate (on a pixel-corner line) and one integer
    # one; the corner shared by two perpendicular edges takes the half-integer one of each.
    a_on_row_line = (a[:, 0] % 1) == 0.5
    rows = np.where(a_on_row_line, a[:, 0], b[:, 0])
    cols = np.where(a_on_row_line, b[:, 1], a[:, 1])
    # index coordinates -> pixel-corner coordinates (+0.5), minus the one-pixel padding
    ring = np.column_stack([cols - 0.5, rows - 0.5])
    ring = np.round(ring)  # exact already; removes -0.0 and float noise
    ring = _separate_pinches(ring)
    if _shoelace(ring) < 0:
        ring = ring[::-1].copy()
    return ring


def _separate_pinches(ring: np.ndarray) -> np.ndarray:
    """Move both visits of a corner the outline passes twice 1/8 pixel towards their own pixel."""
    counts = Counter(map(tuple, ring.tolist()))
    repeated = {vertex for vertex, n in counts.items() if n > 1}
    if not repeated:
        return ring
    ring = ring.copy()
    previous, following = np.roll(ring, 1, axis=0), np.roll(ring, -1, axis=0)
    for i, vertex in enumerate(map(tuple, ring.tolist())):
        if vertex in repeated:
            incoming = np.sign(ring[i] - previous[i])
            outgoing = np.sign(following[i] - ring[i])
            # the quadrant between the incoming and the outgoing edge is this visit's pixel
            ring[i] = ring[i] + PINCH_SHIFT * (outgoing - incoming)
    return ring


def _shoelace(points: np.ndarray) -> float:
    """Signed area of a ring given as (N, 2) points (either axis order; sign flips with order)."""
    x, y = points[:, 0], points[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))
