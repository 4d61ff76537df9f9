"""The built-in unsupervised proxies; importing this package registers them.

One module per proxy, each imported here so that it registers (see each
module's docstring for what it measures and why it tracks segmentation
quality), plus :mod:`.combine`. Every proxy is a function
``(ImageResult, **options) -> {name: value, "name.detail": ...}`` registered
in :data:`opsef_opt.score.registry.PROXIES`; the array-level helpers are pure
functions on numpy arrays.

Which failure each proxy detects (asserted in tests/test_score_proxies.py on
dsb2018_256, mitocheck and StarDist's test image; "giant" = one label over
the foreground closed by a large disc, "salt" = 5% single-pixel objects):

==========  ==============  ===========================  ==========  ===========================================
proxy       all background  one giant object             salt noise  blind spot
==========  ==============  ===========================  ==========  ===========================================
consensus   yes             yes                          yes         errors shared by most of the pool
stability   yes             no (by design)               yes         consistent errors (the same merge each run)
shape       yes             yes (low solidity)           yes         wrong objects of plausible shape and size
contrast    yes             yes (diluted inside)         yes         missed objects; splits/merges of touching
                                                                     objects (``contrast.separation`` sees
                                                                     missed objects)
confidence  NaN             NaN                          NaN         models without confidence; confident errors
sanity      yes (0)         above 1/6 of the image only  yes (0)     anything plausible-looking: it is a gate
combine     yes             yes                          yes
==========  ==============  ===========================  ==========  ===========================================

Default weights (provisional; to be set from ``bench/proxy_validity.py``)
--------------------------------------------------------------------------
consensus 1.0, shape 1.0, contrast 0.5, stability 0.5, confidence 0.5;
sanity is the gate (weight 0). From a first check: 32 classical candidates
(no preprocessing or Gaussian; Otsu, Li, triangle, Yen thresholds; watershed
min_distance 0, 3, 6, 10) per image, Spearman rho with ground-truth F1 on
dsb2018_256 / mitocheck / StarDist's test image: consensus +0.28 / +0.96 /
+0.81, shape +0.32 / +0.84 / +0.49, contrast +0.84 / -0.12 / -0.36,
stability (noise, zoom_out) +0.04 / +0.58 / -0.08; combined with these
weights +0.51 / +0.93 / +0.87 (equal weights: +0.61 / +0.77 / +0.80).
Consensus and shape were positive everywhere; contrast and stability were
mixed, hence half weight. Three images and one model family: a sanity check
of directions, not a validation.
"""
from opsef_opt.score.proxies._match import Match, match_instances
from opsef_opt.score.proxies.combine import combine, default_weights
from opsef_opt.score.proxies.confidence import confidence_score, mean_confidence
from opsef_opt.score.proxies.consensus import ConsensusAccumulator, consensus_labels, consensus_score
from opsef_opt.score.proxies.contrast import (contrast_score, edge_alignment, object_contrast, reference_image,
                                              separation)
from opsef_opt.score.proxies.sanity import sanity_gate, sanity_score, sanity_stats
from opsef_opt.score.proxies.separation import separation_score
from opsef_opt.score.proxies.shape import MIN_AREA, eccentricity, object_areas, shape_score, solidity
from opsef_opt.score.proxies.stability import (PERTURBATIONS, perturb, stability_score, unperturb_labels,
                                               valid_region)

__all__ = [
    "ConsensusAccumulator", "MIN_AREA", "Match", "PERTURBATIONS", "combine", "confidence_score",
    "consensus_labels", "consensus_score", "contrast_score", "default_weights", "eccentricity",
    "edge_alignment", "match_instances", "mean_confidence", "object_areas", "object_contrast",
    "perturb", "reference_image", "sanity_gate", "sanity_score", "sanity_stats", "separation_score", "separation", "shape_score",
    "solidity", "stability_score", "unperturb_labels", "valid_region",
]
