"""The built-in unsupervised proxies; importing this package registers them.

One module per proxy (see each module's docstring for what it measures and
why it tracks segmentation quality), plus :mod:`.combine`. Every proxy is a
function ``(ImageResult, **options) -> {name: value, "name.detail": ...}``
registered in :data:`opsef_opt.score.registry.PROXIES`; the array-level
helpers are pure functions on numpy arrays.

Which failure each proxy detects, on the real test images (tests/test_score_proxies.py):

==========  ==============  ================  ===========  ============================================
proxy       all background  one giant object  salt noise   blind spot
==========  ==============  ================  ===========  ============================================
consensus   yes             yes               yes          errors shared by most of the pool
stability   yes             no (by design)    yes          consistent errors (the same merge every run)
shape       yes             yes               yes          wrong objects of plausible shape and size
contrast    yes             yes               yes          objects on the wrong contrast edge
confidence  n/a (NaN)       n/a               n/a          models without confidence; confident errors
sanity      yes (0)         yes (0)           yes (0)      anything else: it is a gate, not a ranking
combine     yes             yes               yes
==========  ==============  ================  ===========  ============================================
"""
from opsef_opt.score.proxies import confidence, consensus, contrast, sanity, shape, stability  # noqa: F401
from opsef_opt.score.proxies._match import Match, match_instances
from opsef_opt.score.proxies.combine import combine, default_weights
from opsef_opt.score.proxies.confidence import confidence_score, mean_confidence
from opsef_opt.score.proxies.consensus import ConsensusAccumulator, consensus_labels, consensus_score
from opsef_opt.score.proxies.contrast import contrast_score, edge_alignment, object_contrast, reference_image
from opsef_opt.score.proxies.sanity import sanity_gate, sanity_score, sanity_stats
from opsef_opt.score.proxies.shape import MIN_AREA, eccentricity, object_areas, shape_score, solidity
from opsef_opt.score.proxies.stability import (PERTURBATIONS, perturb, stability_score, unperturb_labels,
                                               valid_region)

__all__ = [
    "ConsensusAccumulator", "MIN_AREA", "Match", "PERTURBATIONS", "combine", "confidence_score",
    "consensus_labels", "consensus_score", "contrast_score", "default_weights", "eccentricity",
    "edge_alignment", "match_instances", "mean_confidence", "object_areas", "object_contrast",
    "perturb", "reference_image", "sanity_gate", "sanity_score", "sanity_stats", "shape_score",
    "solidity", "stability_score", "unperturb_labels", "valid_region",
]
