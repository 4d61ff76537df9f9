"""The built-in unsupervised proxies; importing this package registers them.

One module per proxy, each imported here so that it registers (see each
module's docstring for what it measures and why it tracks segmentation
quality), plus :mod:`.combine`. Every proxy is a function
``(ImageResult, **options) -> {name: value, "name.detail": ...}`` registered
in :data:`opsef_opt.score.registry.PROXIES`; the array-level helpers are pure
functions on numpy arrays.

Which failure each proxy detects (asserted in tests/test_score_proxies.py and,
for ``plausible``, tests/test_plausible.py on
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
plausible   yes (0)         no (sanity's job)            yes (0)     a veto (below): images without a clear
                                                         where the   polarity (tissue-only brightfield tiles: set
                                                         polarity    ``expect``); right-polarity merges of dense
                                                         is clear    tissue can fail its tiling check
combine     yes             yes                          yes
==========  ==============  ===========================  ==========  ===========================================

``plausible`` (:mod:`.plausible`) is a veto, not averaged in: a result that
fails it (objects on the background's side of the intensities as the raw
image itself tells them, e.g. an H&E image segmented without ``invert``; the
background cut into pieces; one object larger than all others together) is
mapped below 0 by :func:`.combine`, under every plausible result, whatever
its other proxies.

Default weights (from ``bench/proxy_validity.py``)
---------------------------------------------------
shape 2.0, consensus 0.5, separation 0.5; contrast, stability and confidence
are logged for every trial (and feed the tag model) with weight 0; sanity is
the gate. Measured on every instance ground truth available here (DSB 2018
256x256, MitoCheck, BBBC007 sparse x 6, StarDist's DSB 512x512), each with
the same 108 candidates (6 preprocessings x 12 classical threshold/watershed
settings + 6 U-Net settings): Spearman rho of the combined score with GT F1
0.85 / 0.88 / 0.86 / 0.92 (mean 0.88), regret 0.14 / 0 / 0.01 / 0 (mean
0.04). Single proxies are uneven across datasets (contrast 0.86 on DSB but
0.05 on MitoCheck; consensus 1.0 on MitoCheck but 0.43 on BBBC007); shape
was the only one with near-zero regret everywhere. The weights were chosen
on a grid {0, 0.5, 1, 2} per proxy by leave-one-dataset-out: in each of the
four folds the best point on the other three datasets had shape 2 and
consensus 0.5 (separation 0.5 in three of four; held-out rho 0.81 / 0.52 /
0.89 / 0.93). Four datasets of nuclei and two model families: treat these
defaults as a starting point, and tag a few runs (the tag model reached rho
0.85 from 15 tags in the same bench).
"""
from opsef_opt.score.proxies._match import Match, match_instances
from opsef_opt.score.proxies.combine import combine, default_weights
from opsef_opt.score.proxies.confidence import confidence_score, mean_confidence
from opsef_opt.score.proxies.consensus import ConsensusAccumulator, consensus_labels, consensus_score
from opsef_opt.score.proxies.contrast import (contrast_score, edge_alignment, object_contrast, reference_image,
                                              separation)
from opsef_opt.score.proxies.plausible import (background_peak, enclosed_background, expected_polarity,
                                               largest_share, plausible_score, polarity)
from opsef_opt.score.proxies.sanity import sanity_gate, sanity_score, sanity_stats
from opsef_opt.score.proxies.separation import separation_score
from opsef_opt.score.proxies.shape import MIN_AREA, eccentricity, object_areas, shape_score, solidity
from opsef_opt.score.proxies.stability import (PERTURBATIONS, perturb, stability_score, unperturb_labels,
                                               valid_region)

__all__ = [
    "ConsensusAccumulator", "MIN_AREA", "Match", "PERTURBATIONS", "background_peak", "combine", "confidence_score",
    "consensus_labels", "consensus_score", "contrast_score", "default_weights", "eccentricity",
    "edge_alignment", "enclosed_background", "expected_polarity", "largest_share", "match_instances",
    "mean_confidence", "object_areas", "object_contrast", "perturb", "plausible_score", "polarity", "reference_image",
    "sanity_gate", "sanity_score", "sanity_stats", "separation_score", "separation", "shape_score",
    "solidity", "stability_score", "unperturb_labels", "valid_region",
]
