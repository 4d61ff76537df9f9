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
                                                                     objects (``separation`` sees
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
the gate, plausible the veto. Chosen by leave-one-dataset-out on six instance
GT sets (DSB 2018 256x256, MitoCheck, BBBC007 sparse x 6, Kromp 2020 dense
x 3 and low-S/N + confocal x 4 as 512 px crops, StarDist's DSB 512x512),
each with a 60-pipeline grid (6 preprocessings incl. invert and
over-smoothing x classical, shipped U-Net, tiny self-trained StarDist and
Cellpose), jointly with the consensus families' level (0.9): the shipped
weights in four of six folds and on all six. Held-out fold numbers of the
combined score: Spearman rho with GT F1 0.97 / 0.45 / 0.94 / 0.86 / 0.87 /
0.69 (mean 0.80), regret 0.032 / 0.167 / 0.029 / 0.050 / 0.131 / 0.075 (mean
0.081); see README, Benchmarks, for why each miss happens.

Each proxy alone as the combination uses it (times the gate, behind the
veto), same sets and order, rho / regret:

===========  =========================================================================
shape        0.69/0.63  0.74/0     0.89/0.06  0.32/0.26  0.73/0.12  0.89/0.01
consensus    0.90/0.02  0.90/0     0.87/0.03  0.79/0.05  0.85/0.13  0.40/0.12
separation   0.92/0.03  0.33/0.17  0.71/0.08  0.83/0     0.88/0.07  0.72/0.14
contrast     0.89/0.03  0.44/0.17  0.74/0.05  0.63/0.33  0.86/0.17  0.89/0.01
confidence   0.42/0.02  0.59/0     0.43/0.03  0.35/0.18  0.25/0.18  0.46/0.23
stability    0.61/0.12  0.52/0.09  0.64/0.06  0.60/0.01  0.74/0.09  0.36/0.29
===========  =========================================================================

No single proxy is good everywhere: shape rewards the tiny models' regular,
too small objects on the Kromp sets (and the tiny StarDist on DSB 256),
separation is Otsu's criterion and so favours Otsu masks that leave dim
nuclei out (MitoCheck), consensus favours a crowd (CLAHE variants on the
Kromp sets, an under-split U-Net on DSB 512). Without the veto, contrast and
separation pick an inverted pipeline on five of six sets. Treat the defaults
as a starting point, and tag a few runs.

What ``score.final`` ranks by is by default :mod:`.rank`, not this weighted
mean: each proxy's percentile among the pool's plausible candidates, combined
with coefficients learned by pairwise ranking on the bench's GT sets (the
weighted mean above is what a study with proxy weights of its own gets, or
``study.score.combination: mean``). Chosen between the two by
leave-one-dataset-out (rank in all six folds): held out it lowers the mean
regret (0.080 -> 0.044, rho 0.79 -> 0.82) but lowers BBBC007's rho (0.95 ->
0.77; README, Benchmarks).
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
