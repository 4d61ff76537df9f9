"""Do the unsupervised scores pick the pipeline ground truth would pick, on data they were not tuned on?

Corpus and search spaces: ``bench/_validity_corpus.py`` (every 2D instance-GT
dataset in ``../shared/data/gt`` plus StarDist's DSB 512 image; per dataset
a 6 x 10 grid a user would write: preprocessings incl. wrong polarity and
over-smoothing x classical / shipped U-Net / tiny self-trained StarDist and
Cellpose settings). Every candidate's label images are cached on disk, so
``--rescore-only`` re-scores with the current scoring code without running
any model.

Scoring is the LIBRARY's, as a study does it:

* per image, every registered proxy by ``Objective(spec, "proxy").image_metrics``
  (the stability proxy re-runs the candidate's pipeline through a cache);
* the end-of-stage re-score by ``opsef_opt.search.rescore.final_scores`` on a
  ``LabelStore`` holding all candidates (what ``best.yaml`` ranks by:
  ``score.final``). Called once on all images (the default combined score)
  and once per image (per-image final consensus and any other
  ``proxy.<name>.final``, needed to re-combine with other weights);
* other weightings by ``opsef_opt.score.proxies.combine`` on those per-image
  values, averaged over images (as ``final_scores`` does). The consensus
  voters stay the ones chosen with the default weights;
* the rank combination (``opsef_opt.score.proxies.rank``; ``score.final``
  ``study.score.combination: rank``, off by default): per-image pool
  percentiles come from
  ``final_scores(details=True)``; its coefficients are refitted per fold by
  ``fit_rank_weights`` and scored by the library's ``rank_combine``;
* tags: ``opsef_opt.tags.queue.simulate_tagging`` when it exists, otherwise
  random simulated tags fed to ``fit_tag_model`` (see :func:`tag_curve`).

What it prints, per dataset = per held-out fold:

* each proxy's Spearman rho (with GT F1 at IoU 0.5; sparse F1 on the sparse
  set) and regret (grid-best GT F1 minus the GT F1 of the proxy's pick; a tie
  at the top counts as the mean GT F1 of the tied candidates), alone and as
  the combination uses it ("gated + vetoed": times the sanity gate, behind the
  plausible veto, so that e.g. contrast's liking for inverted pipelines, which
  the veto removes, does not hide what it adds among plausible ones);
* the combined score as shipped (``score.final``), the weighted mean of raw
  values with the default weights and with the weights chosen by
  leave-one-dataset-out (LODO) on the other datasets, the rank combination
  with ``RANK_WEIGHTS`` and chosen and fitted on the other datasets (held
  out);
* catches: how many candidates with GT F1 < 0.1 rank above the median of each
  score; how many are flagged by ``sanity`` == 0 and ``plausible`` == 0 (when
  that proxy exists) and how many flagged ones were in fact good (GT F1 >= 0.5);
* the tag curve: regret after 5 / 10 / 20 simulated tags.

Then a summary table (held-out fold numbers of the LODO-chosen combination,
and the default's), the mean, the weights chosen on all datasets (a proposed
default whose honest estimate is the LODO table), the held-out means under
both LODO objectives, and the H&E polarity section (``raw/he_example.tif``,
centre 512 x 512 crop, no GT, so no GT numbers: how many of the 12
wrong-polarity candidates, grey without invert or haematoxylin with invert,
rank above the median, and what ``sanity``/``plausible`` say about them).

Runtime on the shared 2-core machine (load ~10): first run ~20 min (plus
~5 min once to train the tiny models, kept in the cache), ``--rescore-only``
~6-10 min (three family levels; ``--families ''`` for the library's only). ``--refresh cellpose,stardist`` re-runs those families (e.g. after
their confidences change); the U-Net's post-processing always re-runs from
its cached probability maps. ``--dump-tags FILE`` also writes what the tag curves need (per dataset: trial
metrics, GT F1, ``score.final`` and the rank combination with ``RANK_WEIGHTS``); ``--tags-from FILE`` then
prints only the tag curves of both combinations from it (~3 min for 5 analysts, no scoring).

Leave-one-dataset-out: the design choices this bench makes are the weight
vector of the combined score, over the grid {0, 0.5, 1, 2} for each of
shape, consensus, separation, contrast, confidence and stability (other
registered proxies and the gate keep their default weights; weight vectors
that differ only by scale are one point; all-zero is excluded), jointly with
the consensus pool's near-duplicate level (``--families``, default the
a-priori range 0.8, 0.9, 0.95: the same segmentations re-scored with each).
For each held-out dataset the weights are chosen by :func:`choose_weights`,
which is given ONLY the other datasets' numbers: it maximises the mean over
those datasets of (rho - regret) (``--lodo-objective worst`` maximises the
worst dataset's rho - regret instead); ties go to the point closest to the
default weights; the level is the one whose choice does best on those same
datasets (:func:`choose_joint`, ties to the library's level). The held-out
dataset's numbers under that choice are the estimate.

The rank combination (an alternative to the weighted mean, off by default) is
validated the same way: for each held-out dataset, its design choices (the regularisation
``C`` of the pairwise logistic regression, ``rank.C_GRID``, and whether the
"model gives no confidence" indicator is a feature) are chosen by
leave-one-out over the other five (:func:`rank_choose`), its coefficients
fitted on those five (:func:`rank_fit`), and the held-out dataset scored with
them (:func:`rank_lodo`); the near-duplicate level is the library's. Chosen
and refitted on all datasets, the coefficients are the proposed
``rank.RANK_WEIGHTS`` (printed after the summaries).

Usage: python bench/proxy_validity.py [--rescore-only] [--datasets a,b] [--quick] [--no-he] [--no-tiny]
       [--tags 5,10,20] [--tag-seeds 5] [--lodo-objective mean|worst] [--save metrics.csv]
       [--families 0.8,0.9,0.95]
       [--refresh cellpose,stardist] [--rank-tags] [--dump-tags tags.pkl] [--tags-from tags.pkl]
"""
from __future__ import annotations

import argparse
import inspect
import itertools
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

if __name__ == "__main__":
    # one thread per library (before they are imported): on a shared 2-core machine more threads
    # were slower (tiny Cellpose on 512 x 512: 10 s with the default threads, 2 s with one)
    for _var in ("OPSEF_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                 "NUMBA_NUM_THREADS", "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS"):
        os.environ.setdefault(_var, os.environ.get("VALIDITY_THREADS", "1"))

import numpy as np  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402

_HERE = str(Path(__file__).resolve().parent)
sys.path.insert(0, _HERE)  # only for this import: bench/ also holds modules named like common packages (models.py)
try:
    from _validity_corpus import (CacheMiss, Candidate, Dataset, SegCache, array_hash,  # noqa: E402
                                  ensure_tiny_models, he_sanity_dataset, load_corpus, segment_code_hash)
finally:
    sys.path.remove(_HERE)

from opsef_opt.config import score_spec  # noqa: E402
from opsef_opt.preprocess import normalize01  # noqa: E402
from opsef_opt.score import PROXIES, ImageResult  # noqa: E402
from opsef_opt.score.objective import Objective  # noqa: E402
from opsef_opt.score.proxies import combine  # noqa: E402
from opsef_opt.score.proxies.consensus import FAMILY_AGREEMENT  # noqa: E402
from opsef_opt.score.proxies.rank import (C_GRID, NO_CONFIDENCE, RANK_FEATURES, RANK_WEIGHTS, _finite,  # noqa: E402
                                          fit_rank_weights, plausible_row, rank_combine, rank_features)
from opsef_opt.search.pool import LabelStore  # noqa: E402
from opsef_opt.search.rescore import final_scores, uses_rank  # noqa: E402

#: the weights the LODO grid varies (those registered), and the grid values
GRID_PROXIES = ("shape", "consensus", "separation", "contrast", "confidence", "stability")
GRID_VALUES = (0.0, 0.5, 1.0, 2.0)
TAG_COUNTS = (5, 10, 20)
#: "broken" pipelines for the catches
BROKEN_F1 = 0.1
GOOD_F1 = 0.5


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ====================================================================================== segmentation

@dataclass
class Scored:
    """One dataset's candidates after scoring (arrays are over candidates)."""

    name: str
    labels: list[str]
    candidates: list[Candidate]
    f1: np.ndarray
    proxies: dict[str, np.ndarray]  # proxy name -> per-candidate mean (pool-relative ones: final)
    default: np.ndarray  # score.final as final_scores gives it (what best.yaml ranks by)
    per_image: list[list[dict[str, float]]]  # candidate -> image -> {proxy name: value} for combine()
    trial: list[dict[str, float]]  # candidate -> trial-level metrics (tag model features)
    n_images: int = 1
    note: str = ""
    seconds: float = 0.0
    cache_stats: dict = field(default_factory=dict)
    misses: int = 0
    sparse: bool = False
    #: the same segmentations scored with other near-duplicate levels of the consensus pool (level -> Scored)
    variants: dict = field(default_factory=dict)


def _reference(img: np.ndarray, axes: str, shape, shown: np.ndarray) -> np.ndarray:
    """The raw reference intensities, exactly as a study computes them (search.trial.reference_intensities)."""
    try:
        from opsef_opt.io.dataset import Item
        from opsef_opt.search.trial import reference_intensities

        item = Item(name="x", image="x", data=img, axes=axes, truth=None, source="bench", fingerprint="x")
        return reference_intensities(item, shape, shown)
    except (ImportError, TypeError):
        data = img.mean(axis=-1) if "C" in axes else img
        return normalize01(np.asarray(data, np.float32))


def segment_dataset(ds: Dataset, spec, rescore_only: bool, refresh: set[str]) -> tuple[list, SegCache, int]:
    """Per candidate, per image: (labels, image metrics from Objective.image_metrics).

    Segmentations come from (and go to) the cache; ``rescore_only`` never runs a model.
    """
    objective = Objective(spec, "proxy", ds.sparse)
    cache = SegCache(ds.name, rescore_only=rescore_only, refresh=refresh)
    keys = [array_hash(img) for _, img, _ in ds.images]
    refs: dict[int, np.ndarray] = {}
    out = []
    misses = 0
    t0 = time.perf_counter()
    for k, cand in enumerate(ds.candidates):
        pipeline = cand.pipeline  # the library's one code path: preprocess, then the model call
        model = pipeline.segmenter()
        network_cached = hasattr(model, "probability")  # U-Net: re-run post-processing from cached probabilities
        if network_cached:
            cache.memo_probability(model)
        per = []
        for i, (name, img, truth) in enumerate(ds.images):
            image, axes = pipeline.preprocess(img, ds.axes)
            entry = None if network_cached else cache.load(cand, keys[i])
            dirty = not cache.path(cand, keys[i]).is_file() if network_cached else entry is None
            if network_cached:
                seg = pipeline.segment(image, axes)  # the network output comes from the probability cache
                stab = {}
            elif entry is not None:
                seg = _Seg(entry["labels"], entry["confidence"], entry["extra"])
                stab = entry["stab"]
                cache.stats["hit"] += 1
            elif rescore_only:
                raise CacheMiss(f"{ds.name}: {cand.label} on {name} is not cached (run without --rescore-only)")
            else:
                seg = pipeline.segment(image, axes)
                stab = {}
                cache.stats["run"] += 1
            n_stab = len(stab)
            segment = _cached_segment(pipeline, cand, ds.axes, stab, rescore_only and not network_cached)
            if i not in refs:
                refs[i] = _reference(img, ds.axes, seg.labels.shape, image)
            result = dict(labels=seg.labels, image=image, truth=truth, raw=refs[i], confidence=seg.confidence,
                          consensus=None, source=img, source_axes=ds.axes, segment=segment)
            result.update(_extra_fields(seg))
            try:
                m = objective.image_metrics(ImageResult(**result))
            except CacheMiss:
                misses += 1
                result["segment"] = None
                m = objective.image_metrics(ImageResult(**result))
            n = int(seg.labels.max())
            m.update(n_objects=n, mean_object_area=float(np.count_nonzero(seg.labels)) / max(n, 1))
            if dirty or len(stab) != n_stab:
                cache.save(cand, keys[i], {"labels": seg.labels, "confidence": seg.confidence,
                                           "extra": getattr(seg, "extra", {}) or {}, "stab": stab})
            per.append((name, seg.labels, m))
        out.append(per)
        if (k + 1) % 10 == 0 or k + 1 == len(ds.candidates):
            log(f"  {ds.name}: {k + 1}/{len(ds.candidates)} candidates ({time.perf_counter() - t0:.0f} s)")
    return out, cache, misses


@dataclass
class _Seg:
    labels: np.ndarray
    confidence: dict | None
    extra: dict


def _extra_fields(seg) -> dict:
    """Pass model outputs to ImageResult fields that exist (e.g. a probability map, once ImageResult has one)."""
    fields = set(getattr(ImageResult, "__dataclass_fields__", {}))
    out = {}
    extra = getattr(seg, "extra", {}) or {}
    if "extra" in fields:
        out["extra"] = extra
    for key, value in extra.items():
        if key in fields and key not in ("labels", "image", "truth", "raw", "confidence", "consensus", "source",
                                         "source_axes", "segment"):
            out[key] = value
    return out


def _cached_segment(pipeline, cand: Candidate, axes: str, stab: dict, rescore_only: bool
                    ) -> Callable[[np.ndarray], np.ndarray]:
    """The candidate's whole pipeline as a function of the input (what the stability proxy perturbs), cached."""

    def run(source: np.ndarray) -> np.ndarray:
        image, out_axes = pipeline.preprocess(source, axes)
        return np.asarray(pipeline.segment(image, out_axes).labels)

    def segment(source: np.ndarray) -> np.ndarray:
        if hasattr(pipeline.segmenter(), "probability"):  # probabilities cached by content: cheap
            return run(source)
        key = array_hash(source)
        if key not in stab:
            if rescore_only:
                raise CacheMiss(f"{cand.label}: stability input {key} not cached")
            stab[key] = run(source)
        return stab[key]

    return segment


# ======================================================================================= library rescore

def library_final_scores(labels: Sequence[Mapping[str, np.ndarray]], metrics: Sequence[Mapping[str, Mapping]],
                         spec, candidates: Sequence[Candidate], family_agreement: float | None = None
                         ) -> dict[int, dict[str, float]]:
    """``opsef_opt.search.rescore.final_scores`` on a LabelStore holding these candidates (trial k = candidate k).

    Arguments are matched to its signature by name, so a re-score that takes
    more (e.g. the candidates' pipelines, for families of near-duplicates) is
    given them when it asks for them under one of the names below.
    ``family_agreement``: the near-duplicate level of the pool's families
    (None: the library's default).
    """
    with tempfile.TemporaryDirectory(prefix="validity-store-") as tmp:
        store = LabelStore(Path(tmp))
        for k, (lab, met) in enumerate(zip(labels, metrics)):
            store.save(k, lab, met)
        trials = list(range(len(labels)))
        pipelines = {k: c.describe() for k, c in enumerate(candidates)}
        available = {"store": store, "stores": [store], "spec": spec, "objective": "proxy", "trials": trials,
                     "pipelines": pipelines, "params": pipelines, "descriptions": pipelines, "details": True}
        if family_agreement is not None:
            available["family_agreement"] = family_agreement
        sig = inspect.signature(final_scores)
        args, kwargs = [], {}
        for p in sig.parameters.values():
            if p.name not in available:
                if p.default is inspect.Parameter.empty:
                    raise TypeError(f"final_scores needs {p.name!r}, which the bench does not know how to give")
                continue
            if p.kind in (p.POSITIONAL_ONLY,):
                args.append(available[p.name])
            else:
                kwargs[p.name] = available[p.name]
        return {int(k): v for k, v in final_scores(*args, **kwargs).items()}


def rescore(ds: Dataset, segs: list, spec, family_agreement: float | None = None
            ) -> tuple[np.ndarray, list[list[dict]], list[dict]]:
    """Default combined score per candidate, per-image values for combine(), trial-level metrics."""
    n_img = len(ds.images)
    names = [n for n, _, _ in ds.images]
    proxies = list(PROXIES.names()) if hasattr(PROXIES, "names") else [p.name for p in spec.proxies]
    # per-image stores: per-image final values (consensus against the same pool, image by image)
    per_image_final: list[dict[int, dict]] = []
    for i in range(n_img):
        per_image_final.append(library_final_scores(
            [{names[i]: per[i][1]} for per in segs], [{names[i]: per[i][2]} for per in segs], spec, ds.candidates,
            family_agreement))
    if n_img == 1:
        joint = per_image_final[0]
    else:
        joint = library_final_scores([{n: lab for n, lab, _ in per} for per in segs],
                                     [{n: m for n, _, m in per} for per in segs], spec, ds.candidates,
                                     family_agreement)
    objective = Objective(spec, "proxy", ds.sparse)
    default = np.array([joint.get(k, {}).get("score.final", math.nan) for k in range(len(segs))], float)
    values, trial = [], []
    for k, per in enumerate(segs):
        rows, metrics = [], []
        for i, (name, lab, m) in enumerate(per):
            m = dict(m)
            for key, v in per_image_final[i].get(k, {}).items():
                if key.startswith("proxy.") and key.endswith(".final") and key != "proxy.final":
                    m[key[:-len(".final")]] = v  # e.g. proxy.consensus <- proxy.consensus.final
            metrics.append(m)
            row = {p: m.get(f"proxy.{p}", math.nan) for p in proxies}
            # the rank combination's per-image pool percentiles (final_scores(details=True)), as pct.<proxy>
            row.update({f"pct.{f}": m[f"proxy.{f}.pct"] for f in RANK_FEATURES if f"proxy.{f}.pct" in m})
            rows.append(row)
        values.append(rows)
        results = [ImageResult(lab, np.zeros(0, np.float32), truth=truth)
                   for (_, lab, _), (_, _, truth) in zip(per, ds.images)]
        if any(t is None for _, _, t in ds.images):
            results = []
        tm = objective.trial_metrics(metrics, results)
        tm["n_objects_mean"] = tm.pop("n_objects", math.nan)
        # what a study logs (the details for the bench are not: they would be tag-model features there)
        tm.update({key: v for key, v in joint.get(k, {}).items() if not _detail_key(key)})
        trial.append(tm)
    return default, values, trial


def _detail_key(key: str) -> bool:
    return key in ("proxy.weighted.final", "proxy.rank.final") or key.endswith(".pct.final")


def score_dataset(ds: Dataset, spec, rescore_only: bool, refresh: set[str],
                  families: Sequence[float] = ()) -> Scored:
    """Segment (or read the cache) and score one dataset with the library's defaults.

    ``families``: further near-duplicate levels of the consensus pool to
    score the same segmentations with (the LODO choice of that level);
    ``Scored.variants`` maps each level, the library's own included, to its
    :class:`Scored`.
    """
    t0 = time.perf_counter()
    segs, cache, misses = segment_dataset(ds, spec, rescore_only, refresh)
    stats = dict(cache.stats, codes=sorted(cache.codes_seen), code_now=cache.code)

    def make(family_agreement):
        default, values, trial = rescore(ds, segs, spec, family_agreement)
        key = "gt.f1" if spec.aggregate == "per_image" else "gt.pooled.f1"
        f1 = np.array([t.get(key, math.nan) for t in trial], float)
        names = sorted({p for rows in values for r in rows for p in r})
        proxies = {p: np.array([_nanmean([r.get(p, math.nan) for r in rows]) for rows in values]) for p in names}
        return Scored(ds.name, [c.label for c in ds.candidates], list(ds.candidates), f1, proxies, default, values,
                      trial, len(ds.images), ds.note, time.perf_counter() - t0, stats, misses, ds.sparse)

    sc = make(None)
    sc.variants = {FAMILY_AGREEMENT: sc}
    for fa in families:
        if float(fa) not in sc.variants:
            sc.variants[float(fa)] = make(float(fa))
    sc.seconds = time.perf_counter() - t0
    return sc


# ========================================================================================= rank quality

def _nanmean(values) -> float:
    arr = np.asarray(values, float)
    return float(np.nanmean(arr)) if np.isfinite(arr).any() else math.nan


def rank_quality(score: np.ndarray, f1: np.ndarray) -> tuple[float, float, float]:
    """(Spearman rho, regret, GT F1 of the pick) of ranking candidates by ``score`` (NaN scores: not ranked).

    A tie at the top counts as the mean GT F1 of the tied candidates (what a random tie-break gives).
    """
    score, f1 = np.asarray(score, float), np.asarray(f1, float)
    ok = np.isfinite(score) & np.isfinite(f1)
    if not ok.any():
        return math.nan, math.nan, math.nan
    s, f = score[ok], f1[ok]
    rho = float(spearmanr(s, f).statistic) if ok.sum() >= 3 and np.ptp(s) > 0 else math.nan
    top = s >= s.max() - 1e-12
    pick = float(f[top].mean())
    return rho, float(np.nanmax(f1) - pick), pick


def above_median(score: np.ndarray, mask: np.ndarray) -> int:
    """How many candidates in ``mask`` score strictly above the median of all candidates (NaN: not above)."""
    score = np.asarray(score, float)
    ok = np.isfinite(score)
    if not ok.any():
        return 0
    return int((mask & ok & (np.where(ok, score, -np.inf) > np.median(score[ok]))).sum())


# ============================================================================================= weights

Weights = tuple  # ((proxy, weight), ...) over GRID_PROXIES that are registered


def weight_grid(names: Sequence[str], values: Sequence[float] = GRID_VALUES) -> list[Weights]:
    """Every weight vector on the grid, one per direction (scale does not change a weighted mean), none all-zero."""
    seen, out = set(), []
    for w in itertools.product(values, repeat=len(names)):
        total = sum(w)
        if total == 0:
            continue
        direction = tuple(round(x / total, 6) for x in w)
        if direction not in seen:
            seen.add(direction)
            out.append(tuple(zip(names, w)))
    return out


def combined(sc: Scored, weights: Mapping[str, float], gate: str | None) -> np.ndarray:
    """Per candidate: mean over images of the library's combine() with these weights."""
    return np.array([np.mean([combine(v, weights, gate) for v in rows]) for rows in sc.per_image])


def grid_table(sc: Scored, grid: list[Weights], spec) -> dict[Weights, tuple[float, float]]:
    """(rho, regret) of every grid point on one dataset."""
    base = dict(spec.weights)
    out = {}
    for w in grid:
        rho, regret, _ = rank_quality(combined(sc, {**base, **dict(w)}, spec.gate), sc.f1)
        out[w] = (rho, regret)
    return out


def _fold_value(rho: float, regret: float) -> float:
    return (0.0 if not math.isfinite(rho) else rho) - (1.0 if not math.isfinite(regret) else regret)


def choose_weights(training: Mapping[str, Mapping[Weights, tuple[float, float]]], default: Mapping[str, float],
                   objective: str = "mean") -> Weights:
    """The grid point that does best on the TRAINING datasets only.

    ``training``: dataset -> grid point -> (rho, regret); the held-out dataset
    must not be in it (the caller leaves it out: see :func:`lodo`).
    ``objective``: ``mean`` maximises the mean over datasets of rho - regret,
    ``worst`` the smallest. NaN rho counts 0, NaN regret 1. Ties: the point
    closest (L1, normalised) to ``default``, then the first in grid order.
    """
    if not training:
        raise ValueError("choose_weights needs at least one training dataset")
    points = list(next(iter(training.values())))
    agg = np.mean if objective == "mean" else np.min
    dsum = sum(default.get(n, 0.0) for n, _ in points[0]) or 1.0

    def distance(w: Weights) -> float:
        total = sum(x for _, x in w) or 1.0
        return sum(abs(x / total - default.get(n, 0.0) / dsum) for n, x in w)

    best, best_key = None, None
    for w in points:
        value = float(agg([_fold_value(*table[w]) for table in training.values()]))
        key = (round(value, 9), -round(distance(w), 9))
        if best_key is None or key > best_key:
            best, best_key = w, key
    return best


def choose_combination(rows: Sequence[dict], held: str | None = None) -> str:
    """The combination (``"lodo"``: the weighted mean, ``"rank"``) for the ``held``-out dataset, from the OTHER
    datasets' held-out numbers only: the higher mean over them of rho - regret (ties: the weighted mean).
    ``held=None``: chosen on every row (what ships)."""
    train = [r for r in rows if r["dataset"] != held]
    value = {k: float(np.mean([_fold_value(r[k][0], r[k][1]) for r in train])) for k in ("lodo", "rank")}
    return "rank" if round(value["rank"], 9) > round(value["lodo"], 9) else "lodo"


def lodo(tables: Mapping[str, Mapping[Weights, tuple[float, float]]], default: Mapping[str, float],
         objective: str = "mean") -> dict[str, Weights]:
    """Held-out dataset -> weights chosen on all the others."""
    return {held: choose_weights({d: t for d, t in tables.items() if d != held}, default, objective)
            for held in tables}


def choose_joint(training: Mapping[float, Mapping[str, Mapping[Weights, tuple[float, float]]]],
                 default: Mapping[str, float], objective: str = "mean",
                 default_level: float = FAMILY_AGREEMENT) -> tuple[float, Weights]:
    """The (near-duplicate level, weights) that do best on the TRAINING datasets only.

    ``training``: level -> dataset -> grid point -> (rho, regret), the held-out
    dataset left out. Per level the weights are :func:`choose_weights`'s; the
    level whose choice has the best aggregate (same objective) wins; ties go to
    the level closest to ``default_level``.
    """
    if not training:
        raise ValueError("choose_joint needs at least one near-duplicate level")
    agg = np.mean if objective == "mean" else np.min
    best, best_key = None, None
    for level, tables in training.items():
        w = choose_weights(tables, default, objective)
        value = float(agg([_fold_value(*t[w]) for t in tables.values()]))
        key = (round(value, 9), -abs(float(level) - default_level))
        if best_key is None or key > best_key:
            best, best_key = (float(level), w), key
    return best


def lodo_joint(tables: Mapping[float, Mapping[str, Mapping[Weights, tuple[float, float]]]],
               default: Mapping[str, float], objective: str = "mean",
               default_level: float = FAMILY_AGREEMENT) -> dict[str, tuple[float, Weights]]:
    """Held-out dataset -> (level, weights) chosen on all the others (levels: the consensus families')."""
    datasets = list(next(iter(tables.values())))
    return {held: choose_joint({lv: {d: t for d, t in tb.items() if d != held} for lv, tb in tables.items()},
                               default, objective, default_level) for held in datasets}


def weights_text(w: Weights) -> str:
    return ", ".join(f"{n} {x:g}" for n, x in w if x) or "none"


# ================================================================================== rank combination

#: the rank combination's design choices LODO picks from: (regularisation C, with the no-confidence indicator)
RANK_CHOICES = tuple((c, ind) for ind in (True, False) for c in C_GRID)


def rank_weights_of(coef: Mapping[str, float], indicator: bool) -> dict[str, float]:
    """Coefficients as rank_combine takes them (the indicator key only when it is a feature)."""
    return {k: v for k, v in coef.items() if indicator or k != NO_CONFIDENCE}


def rank_data(sc: Scored, indicator: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(X: candidates x features, the mean over images of rank_features; GT F1; counted: plausible everywhere)."""
    X = np.array([np.mean([rank_features(_pct(v), indicator) for v in rows], axis=0) for rows in sc.per_image])
    ok = np.array([all(plausible_row(v) for v in rows) for rows in sc.per_image], bool)
    return X, sc.f1, ok


def _pct(v: Mapping[str, float]) -> dict[str, float]:
    return {f: v.get(f"pct.{f}", math.nan) for f in RANK_FEATURES}


def rank_scored(sc: Scored, weights: Mapping[str, float], gate: str | None) -> np.ndarray:
    """Per candidate: mean over images of the library's rank_combine with these coefficients."""
    return np.array([np.mean([rank_combine(v, _pct(v), weights, gate) for v in rows]) for rows in sc.per_image])


def rank_fit(train: Sequence[Scored], choice: tuple[float, bool]) -> dict[str, float]:
    C, indicator = choice
    names = RANK_FEATURES + ((NO_CONFIDENCE,) if indicator else ())
    return fit_rank_weights([rank_data(sc, indicator) for sc in train], C, names)


def rank_choose(train: Sequence[Scored], gate: str | None) -> tuple[tuple[float, bool], float]:
    """The (C, indicator) whose held-out (rho - regret), leave-one-out over ``train``, is best on mean.

    With fewer than two training datasets there is nothing to leave out: the first choice.
    """
    if len(train) < 2:
        return RANK_CHOICES[0], math.nan
    best, best_value = None, -math.inf
    for choice in RANK_CHOICES:
        vals = []
        for k, held in enumerate(train):
            w = rank_fit([sc for j, sc in enumerate(train) if j != k], choice)
            rho, regret, _ = rank_quality(rank_scored(held, w, gate), held.f1)
            vals.append(_fold_value(rho, regret))
        value = float(np.mean(vals))
        if value > best_value + 1e-9:
            best, best_value = choice, value
    return best, best_value


def rank_lodo(scored: Mapping[str, Scored], gate: str | None) -> dict[str, tuple[tuple[float, bool], dict, np.ndarray]]:
    """Held-out dataset -> (choice made on the other datasets by their own LODO, coefficients fitted on them,
    the held-out dataset's scores)."""
    out = {}
    for held, sc in scored.items():
        train = [s for d, s in scored.items() if d != held]
        choice, _ = rank_choose(train, gate)
        w = rank_fit(train, choice)
        out[held] = (choice, w, rank_scored(sc, w, gate))
    return out


#: regret a "good" pipeline may have in :func:`linear_bound` (the issue's target)
BOUND_REGRET = 0.03


def bound_features(sc: Scored, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """(X: candidates x features, plausible everywhere) of what a linear combination can see.

    ``raw``: the mean over images of each rank feature's raw value times the gate (NaN 0), plus the
    no-confidence indicator; ``pct``: the rank combination's own features (centred pool percentiles and
    the indicator)."""
    X, _, ok = rank_data(sc, True)
    if kind == "raw":
        def row(v: Mapping[str, float]) -> list[float]:
            g = v.get("sanity", math.nan)
            g = float(g) if _finite(g) else 1.0
            return [g * float(v[f]) if _finite(v.get(f)) else 0.0 for f in RANK_FEATURES]
        raw = np.array([np.mean([row(v) for v in rows], axis=0) for rows in sc.per_image])
        X = np.hstack([raw, X[:, -1:]])
    return X, ok


def linear_bound(scored: Mapping[str, Scored], kind: str, regret: float = BOUND_REGRET) -> tuple[float, dict]:
    """Can ANY linear combination of the proxies put a pipeline within ``regret`` of the best first on every set?

    Chosen in-sample on all sets at once (so an upper bound on what leave-one-dataset-out can reach), any
    signs: a mixed-integer program picks one good pipeline per set (GT F1 >= best - ``regret``, plausible
    everywhere) and coefficients w in [-1, 1] maximising the margin t by which each picked pipeline beats
    every other plausible one of its set, w . (x_pick - x_other) >= t. t > 0: yes (w returned); t <= 0:
    no such combination exists, whatever the weights, the learning method or the LODO choice.
    """
    from scipy.optimize import Bounds, LinearConstraint, milp

    blocks = []
    for sc in scored.values():
        X, ok = bound_features(sc, kind)
        cand = np.flatnonzero(ok & np.isfinite(sc.f1))
        if not len(cand):
            continue
        top = np.nanmax(sc.f1[cand])
        blocks.append((X, cand, [c for c in cand if sc.f1[c] >= top - regret]))
    k = blocks[0][0].shape[1]
    n_good = sum(len(g) for _, _, g in blocks)
    big = 2.0 * k * max(float(np.abs(X).max()) for X, _, _ in blocks) + 1.0
    rows, lo, hi = [], [], []
    z = k + 1  # columns: w (k), t, z (one per good pipeline)
    for X, cand, good in blocks:
        pick = np.zeros(k + 1 + n_good)
        for c in good:
            pick[z] = 1.0
            for j in cand:
                if j != c:
                    r = np.zeros(k + 1 + n_good)
                    r[:k], r[k], r[z] = X[c] - X[j], -1.0, -big
                    rows.append(r), lo.append(-big), hi.append(np.inf)
            z += 1
        rows.append(pick), lo.append(1.0), hi.append(1.0)
    c = np.zeros(k + 1 + n_good)
    c[k] = -1.0
    res = milp(c, constraints=LinearConstraint(np.array(rows), lo, hi),
               integrality=np.r_[np.zeros(k + 1), np.ones(n_good)],
               bounds=Bounds(np.r_[-np.ones(k), -big, np.zeros(n_good)], np.r_[np.ones(k), big, np.ones(n_good)]))
    if res.x is None:
        return math.nan, {}
    names = list(RANK_FEATURES) + [NO_CONFIDENCE]
    return float(res.x[k]), dict(zip(names, np.round(res.x[:k], 3)))


def _with_proxy(sc: Scored, score: np.ndarray) -> Scored:
    """``sc`` as if the study's score.final (and proxy.final) were ``score``: for the tag curve of a candidate."""
    import copy

    out = copy.copy(sc)
    out.default = np.asarray(score, float)
    out.trial = [{**t, "proxy.final": float(x), "score.final": float(x)} for t, x in zip(sc.trial, out.default)]
    return out


def choice_text(choice: tuple[float, bool]) -> str:
    return f"C {choice[0]:g}, {'with' if choice[1] else 'without'} the no-confidence indicator"


def coef_text(w: Mapping[str, float]) -> str:
    return ", ".join(f"{k} {v:+.3f}" for k, v in w.items())


# ================================================================================================ tags

def simulated_tag(f1: float, n_pred: float, n_true: float) -> str:
    """What an analyst would say, read off the ground truth."""
    if f1 < 0.3:
        return "failed"
    if f1 >= 0.75:
        return "correct"
    return "over" if n_pred > n_true else "under"


def tag_features_frame(sc: Scored):
    import pandas as pd

    from opsef_opt.score.tag_model import tag_features

    return pd.DataFrame([tag_features(t) for t in sc.trial])


def tag_curve(sc: Scored, counts: Sequence[int] = TAG_COUNTS, seeds: int = 5) -> tuple[str, dict[int, float]]:
    """(how, {n tags: mean regret over seeds}) of picking with ``n`` simulated tags.

    With ``opsef_opt.tags.queue.simulate_tagging`` (the tag queue + tag model of
    the library): its regret, strategy = its default. Otherwise: ``n`` random
    runs tagged from GT (:func:`simulated_tag`), ``fit_tag_model`` on them, the
    pick is ``top_pick`` (or argmax) of ``predict_value`` over all runs; too
    few distinct tags: the proxy's pick (``score.final``).
    """
    X = tag_features_frame(sc)
    try:
        from opsef_opt.tags.queue import simulate_tagging
    except ImportError:
        simulate_tagging = None
    out: dict[int, float] = {}
    if simulate_tagging is not None:
        sig = inspect.signature(simulate_tagging)
        strategy = sig.parameters["strategy"].default if "strategy" in sig.parameters else None
        if strategy is inspect.Parameter.empty:
            strategy = None
        how = f"opsef_opt.tags.queue.simulate_tagging (strategy {strategy or 'default'}, {seeds} seeds)"
        for n in counts:
            got = []
            for seed in range(seeds):
                kwargs = dict(features=X, proxy_score=sc.default, gt_f1=sc.f1, n_tags=n, seed=seed,
                              n_pred=[t.get("gt.n_pred", math.nan) for t in sc.trial],
                              n_true=[t.get("gt.n_true", math.nan) for t in sc.trial])
                if strategy is not None:
                    kwargs["strategy"] = strategy
                try:
                    r = simulate_tagging(**{k: v for k, v in kwargs.items() if k in sig.parameters})
                except Exception as e:  # noqa: BLE001 - report, do not stop the bench
                    how += f" [error: {type(e).__name__}: {e}]"
                    break
                got.append(_regret_of(r, sc.f1))
            out[n] = _nanmean(got)
        return how, out
    from opsef_opt.score.tag_model import NotEnoughTags, fit_tag_model

    try:
        from opsef_opt.score.tag_model import top_pick
    except ImportError:
        top_pick = None
    n_pred = [t.get("gt.n_pred", math.nan) for t in sc.trial]
    n_true = [t.get("gt.n_true", math.nan) for t in sc.trial]
    tags_all = [simulated_tag(f, p, q) for f, p, q in zip(sc.f1, n_pred, n_true)]
    how = f"random simulated tags -> fit_tag_model -> predict_value ({seeds} seeds; no tag queue yet)"
    for n in counts:
        got = []
        for seed in range(seeds):
            idx = np.random.default_rng(seed).permutation(len(sc.f1))[:n]
            tags = [tags_all[i] for i in idx]
            try:
                model = fit_tag_model(X.iloc[idx], tags, min_tagged=min(10, n))
                value = np.asarray(model.predict_value(X), float)
            except NotEnoughTags:
                value = sc.default
            except Exception as e:  # noqa: BLE001
                how += f" [error: {type(e).__name__}: {e}]"
                break
            value = np.where(np.isfinite(value), value, -np.inf)
            if top_pick is not None:
                pick = top_pick(value, {int(i): t for i, t in zip(idx, tags)})
            else:
                pick = int(np.argmax(value))
            got.append(float(np.nanmax(sc.f1) - sc.f1[pick]))
        out[n] = _nanmean(got)
    return how, out


def _regret_of(r, f1: np.ndarray) -> float:
    """Regret from what simulate_tagging returns: a regret, a picked row, or a mapping holding either."""
    if isinstance(r, Mapping):
        if "regret" in r:
            return float(r["regret"])
        for k in ("pick", "picked", "index", "row"):
            if k in r:
                return float(np.nanmax(f1) - f1[int(r[k])])
        raise ValueError(f"simulate_tagging returned keys {sorted(r)}: no regret or pick")
    if isinstance(r, (int, np.integer)):
        return float(np.nanmax(f1) - f1[int(r)])
    if isinstance(r, tuple) and r:
        return _regret_of(r[0], f1)
    if hasattr(r, "regret"):
        return float(r.regret)
    return float(r)


def tags_only(path: str, counts: Sequence[int], seeds: int, datasets: str | None = None) -> dict:
    """The tag curves of both combinations from a ``--dump-tags`` pickle (no scoring): per dataset the regret
    after each count, mean of ``seeds`` simulated analysts; printed as a table, returned as
    ``{combination: {dataset: {n: regret}}}``."""
    import pickle

    with open(path, "rb") as fh:
        dump = pickle.load(fh)
    wanted = set(datasets.split(",")) if datasets else None
    out: dict[str, dict[str, dict[int, float]]] = {"mean": {}, "rank": {}}
    for d, v in dump.items():
        if wanted and d not in wanted:
            continue
        # dumps before 2026-11-28 have no "mean": their "default" (score.final) was the weighted mean then
        for combo, proxy in (("mean", v.get("mean", v["default"])), ("rank", v["rank"])):
            sc = Scored(name=d, labels=v["labels"], candidates=[], f1=v["f1"], proxies={},
                        default=np.asarray(proxy, float), per_image=[], trial=v["trial"])
            out[combo][d] = tag_curve(sc, counts, seeds)[1]
    for combo, rows in out.items():
        print(f"\n| tags, {combo} combination | " + " | ".join(f"after {n}" for n in counts) + " |")
        print("|---|" + "---|" * len(counts))
        for d, curve in rows.items():
            print(f"| {d} | " + " | ".join(f"{curve[n]:.3f}" for n in counts) + " |")
        print("| mean | " + " | ".join(f"{_nanmean([c[n] for c in rows.values()]):.3f}" for n in counts) + " |")
    return out


# ============================================================================================== report

def print_dataset(sc: Scored, spec, lodo_w: Weights, lodo_obj: str, tags: tuple[str, dict] | None,
                  level: float | None = None, library: Scored | None = None,
                  rank: tuple[tuple[float, bool], dict, np.ndarray] | None = None,
                  rank_tags: tuple[str, dict] | None = None) -> dict:
    """One held-out fold's section; returns its summary row.

    ``sc``: the dataset scored with the near-duplicate ``level`` the fold chose
    (None: the library's); ``library``: scored with the library's defaults (the
    "default" row), ``sc`` when not given; ``rank``: the rank combination's
    held-out fold (:func:`rank_lodo`).
    """
    library = sc if library is None else library
    f1 = sc.f1
    best = int(np.nanargmax(f1))
    print(f"\n## held-out: {sc.name} — {sc.n_images} image(s){', ' + sc.note if sc.note else ''}, "
          f"{len(f1)} candidates, GT F1 {np.nanmin(f1):.3f}..{np.nanmax(f1):.3f} (best: {sc.labels[best]}); "
          f"{sc.seconds:.0f} s")
    stats = sc.cache_stats
    print(f"   cache: {stats.get('hit', 0)} hits, {stats.get('run', 0)} runs, U-Net probability maps "
          f"{stats.get('prob_hit', 0)} hits / {stats.get('prob_run', 0)} runs"
          + (f"; {sc.misses} stability inputs not cached (stability NaN there)" if sc.misses else ""))
    print(f"{'score':40s} {'spearman':>8s} {'regret':>7s} {'pick F1':>7s}  pick")
    rows = {}
    for p in sorted(sc.proxies):
        if p == spec.gate:
            continue
        rows[f"proxy {p}"] = sc.proxies[p]
    # each weighted proxy as the combination uses it: times the sanity gate, behind the plausible veto
    for p in GRID_PROXIES:
        if p in sc.proxies:
            rows[f"proxy {p}, gated + vetoed"] = combined(sc, {p: 1.0}, spec.gate)
    rows["combined, default weights (score.final)"] = library.default
    base = dict(spec.weights)
    rows["combined, weighted mean, default weights"] = combined(library, base, spec.gate)
    lodo_score = combined(sc, {**base, **dict(lodo_w)}, spec.gate)
    rows["combined, LODO weights"] = lodo_score
    rows["rank combination, RANK_WEIGHTS"] = rank_scored(library, RANK_WEIGHTS, spec.gate)
    if rank is not None:
        rows["rank combination, LODO (held out)"] = rank[2]
    out = {}
    for k, v in rows.items():
        rho, regret, pick = rank_quality(v, f1)
        ok = np.isfinite(v)
        who = sc.labels[int(np.nanargmax(np.where(ok, v, -np.inf)))] if ok.any() else ""
        print(f"{k:40s} {rho:8.3f} {regret:7.3f} {pick:7.3f}  {who}")
        out[k] = (rho, regret, pick)
    print(f"   LODO weights (chosen on the other datasets, objective {lodo_obj}): {weights_text(lodo_w)}"
          + (f"; consensus families at object agreement >= {level:g}" if level is not None else ""))
    if rank is not None:
        print(f"   rank combination, LODO: {choice_text(rank[0])} (chosen on the other datasets by their own "
              f"leave-one-out), fitted on them: {coef_text(rank[1])}")
    # self-check: the library's combination (weighted mean, or the rank combination when switched on)
    # reproduces score.final
    again = rank_scored(library, RANK_WEIGHTS, spec.gate) if uses_rank(spec) else combined(library, base, spec.gate)
    diff = np.nanmax(np.abs(again - library.default)) if np.isfinite(library.default).any() else math.nan
    if math.isfinite(diff) and diff > 1e-6:
        print(f"   note: mean of the per-image combination differs from score.final by up to {diff:.3f} "
              f"(the library's final re-score is not this per-image mean any more)")
    broken = f1 < BROKEN_F1
    good = f1 >= GOOD_F1
    catch = [f"{int(broken.sum())} candidates with GT F1 < {BROKEN_F1}; above the median: "
             f"default {above_median(library.default, broken)}, LODO {above_median(lodo_score, broken)}"]
    for p in ("shape", "consensus"):
        if p in sc.proxies:
            catch.append(f"{p} {above_median(sc.proxies[p], broken)}")
    print("   catches: " + ", ".join(catch))
    for flag in ("sanity", "plausible"):
        if flag in sc.proxies:
            v = sc.proxies[flag]
            zero = np.isfinite(v) & (v <= 0)
            print(f"   {flag} == 0 on every image: {int(zero.sum())} candidates ({int((zero & broken).sum())} with GT "
                  f"F1 < {BROKEN_F1}, {int((zero & good).sum())} with GT F1 >= {GOOD_F1}); broken ones it misses: "
                  f"{int((broken & ~zero).sum())}")
    summary = {"dataset": sc.name, "n": len(f1), "best": float(np.nanmax(f1)),
               "lodo": out["combined, LODO weights"], "default": out["combined, default weights (score.final)"],
               "broken": int(broken.sum()), "broken_above_default": above_median(library.default, broken),
               "broken_above_lodo": above_median(lodo_score, broken)}
    if rank is not None:
        summary["rank"] = out["rank combination, LODO (held out)"]
        summary["broken_above_rank"] = above_median(rank[2], broken)
        if rank_tags is not None:
            summary["rank_tags"] = rank_tags[1]
    if tags is not None:
        how, curve = tags
        print(f"   tags ({how}): regret " + ", ".join(f"{v:.3f} after {n}" for n, v in curve.items()))
        summary["tags"] = curve
    if rank_tags is not None:
        other = "weighted mean (default weights)" if uses_rank(spec) else "rank combination (RANK_WEIGHTS)"
        print(f"   tags with the {other} as the proxy: regret "
              + ", ".join(f"{v:.3f} after {n}" for n, v in rank_tags[1].items()))
    return summary


def print_summary(rows: list[dict], key: str, title: str, with_tags: bool | None = None,
                  tags_key: str = "tags") -> None:
    """The summary table of one score (``key`` of each row); the tags column by default for ``lodo`` only."""
    if not all(key in r for r in rows):
        return
    with_tags = key == "lodo" if with_tags is None else with_tags
    print(f"\n## summary: {title}")
    print("| dataset | candidates | grid best GT F1 | pick's GT F1 | regret | rho | GT F1 < 0.1 above median |"
          + (" tags 5/10/20 regret |" if with_tags else ""))
    print("|---|---|---|---|---|---|---|" + ("---|" if with_tags else ""))
    acc = []
    for r in rows:
        rho, regret, pick = r[key]
        tags = r.get(tags_key, {})
        tag_txt = " / ".join(f"{tags.get(n, math.nan):.3f}" for n in TAG_COUNTS)
        print(f"| {r['dataset']} | {r['n']} | {r['best']:.3f} | {pick:.3f} | {regret:.3f} | {rho:.2f} | "
              f"{r['broken_above_' + key]} of {r['broken']} |" + (f" {tag_txt} |" if with_tags else ""))
        acc.append([r["n"], r["best"], pick, regret, rho] + [tags.get(n, math.nan) for n in TAG_COUNTS])
    a = np.array(acc, float)
    m = [_nanmean(a[:, j]) for j in range(a.shape[1])]
    tag_txt = " / ".join(f"{x:.3f}" for x in m[5:])
    print(f"| **mean** | {m[0]:.0f} | {m[1]:.3f} | {m[2]:.3f} | **{m[3]:.3f}** | **{m[4]:.2f}** | |"
          + (f" {tag_txt} |" if with_tags else ""))


def he_section(spec, rescore_only: bool, weights: Mapping[str, float], quick: bool) -> None:
    """Polarity sanity on the H&E image (no GT): where do the wrong-polarity candidates rank?"""
    ds = he_sanity_dataset(quick)
    t0 = time.perf_counter()
    try:
        segs, cache, _ = segment_dataset(ds, spec, rescore_only, set())
    except CacheMiss as e:
        print(f"\n## H&E polarity sanity: skipped ({e})")
        return
    default, values, trial = rescore(ds, segs, spec)
    sc = Scored(ds.name, [c.label for c in ds.candidates], ds.candidates, np.full(len(segs), math.nan), {}, default,
                values, trial)
    chosen = combined(sc, {**dict(spec.weights), **weights}, spec.gate)
    wrong = np.array([c.prep.startswith("WRONG") for c in ds.candidates])
    print(f"\n## H&E polarity sanity (raw/he_example.tif centre crop, no GT; {len(wrong)} candidates, "
          f"{int(wrong.sum())} with wrong polarity by construction; {time.perf_counter() - t0:.0f} s)")
    for name, s in (("default (score.final)", default), ("weights chosen on all GT sets", chosen)):
        order = np.argsort(-np.where(np.isfinite(s), s, -np.inf), kind="stable")
        rank_first_wrong = int(np.where(wrong[order])[0][0]) + 1 if wrong.any() else 0
        print(f"   {name}: wrong-polarity above the median {above_median(s, wrong)} of {int(wrong.sum())}; "
              f"best wrong-polarity candidate at rank {rank_first_wrong}; top pick: {sc.labels[int(order[0])]}")
    for flag in ("sanity", "plausible"):
        vals = np.array([_nanmean([r.get(flag, math.nan) for r in rows]) for rows in values])
        if np.isfinite(vals).any():
            zero = vals <= 0
            print(f"   {flag} == 0: {int((zero & wrong).sum())} of {int(wrong.sum())} wrong-polarity, "
                  f"{int((zero & ~wrong).sum())} of {int((~wrong).sum())} right-polarity candidates")
            details = sorted({k for t in trial for k in t if k.startswith(f"proxy.{flag}.")})
            for k in details:
                v = np.array([t.get(k, math.nan) for t in trial], float)
                if np.isfinite(v).any():
                    print(f"      {k}: wrong-polarity mean {_nanmean(v[wrong]):.3f}, right-polarity mean "
                          f"{_nanmean(v[~wrong]):.3f}")


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rescore-only", action="store_true", help="only cached segmentations: never run a model")
    ap.add_argument("--datasets", default=None, help="comma-separated subset")
    ap.add_argument("--quick", action="store_true", help="3 preprocessings x 4 models (tests)")
    ap.add_argument("--no-tiny", action="store_true", help="without the tiny self-trained StarDist/Cellpose")
    ap.add_argument("--no-he", action="store_true", help="skip the H&E polarity section")
    ap.add_argument("--refresh", default="", help="families whose cached segmentations are run again")
    ap.add_argument("--tags", default=",".join(map(str, TAG_COUNTS)), help="tag counts of the tag curve ('' skips)")
    ap.add_argument("--tag-seeds", type=int, default=5, help="simulated analysts per tag count")
    ap.add_argument("--lodo-objective", choices=("mean", "worst"), default="mean")
    ap.add_argument("--families", default="0.8,0.9,0.95",
                    help="near-duplicate levels of the consensus families LODO chooses from, with the weights "
                         "('' = the library's only)")
    ap.add_argument("--rank-tags", action="store_true",
                    help="also the tag curve with the combination score.final does not use (the weighted mean with "
                         "the default weights, or the rank combination with RANK_WEIGHTS) as the proxy")
    ap.add_argument("--save", default=None, help="write every candidate's trial-level metrics to this CSV")
    ap.add_argument("--dump-tags", default=None,
                    help="write what the tag curves need (per dataset: trial metrics, GT F1, score.final and the "
                         "rank combination with RANK_WEIGHTS) to this pickle, for --tags-from")
    ap.add_argument("--tags-from", default=None,
                    help="only the tag curves (both combinations), from a --dump-tags pickle: seconds, not minutes")
    args = ap.parse_args(argv)
    if args.tags_from:
        tags_only(args.tags_from, [int(x) for x in args.tags.split(",") if x], args.tag_seeds, args.datasets)
        return
    t_start = time.perf_counter()
    spec = score_spec(None)
    print(f"# proxy validity — {time.strftime('%Y-%m-%d %H:%M')}; segment/preprocess code {segment_code_hash()}"
          f"{'; --rescore-only (cached segmentations)' if args.rescore_only else ''}")
    print(f"registered proxies: {list(PROXIES.names()) if hasattr(PROXIES, 'names') else '?'}; gate {spec.gate}; "
          f"default weights {dict(spec.weights)}")
    tiny = {} if args.no_tiny else ensure_tiny_models(train=not args.rescore_only, log=log)
    wanted = set(args.datasets.split(",")) if args.datasets else None
    corpus = load_corpus(wanted, tiny, args.quick)
    scored: dict[str, Scored] = {}
    for ds in corpus:
        log(f"{ds.name}: {len(ds.images)} image(s), {len(ds.candidates)} candidates")
        scored[ds.name] = score_dataset(ds, spec, args.rescore_only, set(filter(None, args.refresh.split(","))),
                                        [float(x) for x in args.families.split(",") if x])
    names = [n for n in GRID_PROXIES if n in spec.weights]
    grid = weight_grid(names)
    t0 = time.perf_counter()
    levels = sorted(next(iter(scored.values())).variants) if scored else [FAMILY_AGREEMENT]
    by_level = {lv: {d: grid_table(sc.variants[lv], grid, spec) for d, sc in scored.items()} for lv in levels}
    tables = by_level[FAMILY_AGREEMENT]
    log(f"weight grid: {len(grid)} points x {len(tables)} datasets x {len(levels)} family levels in "
        f"{time.perf_counter() - t0:.0f} s")
    if len(tables) > 1:
        chosen_joint = lodo_joint(by_level, spec.weights, args.lodo_objective)
    else:
        chosen_joint = {d: (FAMILY_AGREEMENT, tuple((n, spec.weights.get(n, 0.0)) for n in names)) for d in tables}
    chosen = {d: w for d, (_, w) in chosen_joint.items()}
    counts = [int(x) for x in args.tags.split(",") if x]
    t0 = time.perf_counter()
    ranked = rank_lodo(scored, spec.gate) if len(scored) > 1 else {}
    log(f"rank combination LODO in {time.perf_counter() - t0:.0f} s")
    summaries = []
    for d, sc in scored.items():
        t0 = time.perf_counter()
        tags = tag_curve(sc, counts, args.tag_seeds) if counts else None
        log(f"{d}: tag curve in {time.perf_counter() - t0:.0f} s")
        level = chosen_joint[d][0]
        rank_tags = None  # the other combination's tag curve
        if counts and args.rank_tags:
            other = (combined(sc, dict(spec.weights), spec.gate) if uses_rank(spec)
                     else rank_scored(sc, RANK_WEIGHTS, spec.gate))
            rank_tags = tag_curve(_with_proxy(sc, other), counts, args.tag_seeds)
        summaries.append(print_dataset(sc.variants[level], spec, chosen[d], args.lodo_objective, tags, level, sc,
                                       ranked.get(d), rank_tags))
    shipped = "rank" if uses_rank(spec) else "lodo"
    print_summary(summaries, "lodo", "weighted mean of raw proxies (study.score.combination: mean), LODO-chosen "
                                     "weights and family level (held-out fold numbers); tags: the tag queue on it"
                                     + (" with the default weights (--rank-tags)" if uses_rank(spec) else
                                        " as shipped (score.final)"),
                  with_tags=shipped == "lodo" or args.rank_tags, tags_key="tags" if shipped == "lodo" else "rank_tags")
    print_summary(summaries, "rank", "rank combination (study.score.combination: rank), everything chosen and fitted on "
                                     "the other datasets (held-out fold numbers); tags: the tag queue on it with "
                                     + ("RANK_WEIGHTS (score.final)" if uses_rank(spec) else "RANK_WEIGHTS (--rank-tags)"),
                  with_tags=shipped == "rank" or args.rank_tags, tags_key="tags" if shipped == "rank" else "rank_tags")
    if all("rank" in r for r in summaries) and len(summaries) > 1:
        combos = {r["dataset"]: choose_combination(summaries, r["dataset"]) for r in summaries}
        for r in summaries:
            r["chosen"], r["broken_above_chosen"] = r[combos[r["dataset"]]], r["broken_above_" + combos[r["dataset"]]]
        print_summary(summaries, "chosen", "the combination chosen by leave-one-dataset-out (per held-out set: "
                                           "weighted mean or rank, whichever has the higher mean held-out rho - "
                                           "regret on the other sets; the estimate of the shipped default "
                                           f"'{spec.combination}'); tags: the tag queue on score.final",
                      with_tags=True)
        folds = {}
        for c in combos.values():
            folds[c] = folds.get(c, 0) + 1
        print("combination chosen across folds: " + "; ".join(f"{'mean' if k == 'lodo' else k} ({v}x)"
                                                              for k, v in folds.items())
              + f"; on all {len(summaries)}: {'mean' if choose_combination(summaries) == 'lodo' else 'rank'}")
    print_summary(summaries, "default", "score.final as shipped (chosen on all of these datasets, so not held-out)",
                  with_tags=False)
    if len(scored) > 1:
        choice, value = rank_choose(list(scored.values()), spec.gate)
        w = rank_fit(list(scored.values()), choice)
        print(f"\nrank combination chosen on all {len(scored)} datasets by LODO ({choice_text(choice)}; mean "
              f"held-out rho - regret {value:.3f}), refitted on all (proposed RANK_WEIGHTS): {coef_text(w)}")
        print(f"shipped RANK_WEIGHTS: {coef_text(RANK_WEIGHTS)}")
        folds = {}
        for ch, _, _ in ranked.values():
            folds[choice_text(ch)] = folds.get(choice_text(ch), 0) + 1
        print("rank LODO choices across folds: " + "; ".join(f"{k} ({v}x)" for k, v in folds.items()))
    if len(scored) > 1:
        for kind in ("raw", "pct"):
            t0 = time.perf_counter()
            margin, w = linear_bound(scored, kind)
            verdict = (f"yes, e.g. {coef_text(w)}" if margin > 1e-9 else
                       "no: no weights, any signs, fitted on all of them, reach it")
            print(f"linear bound ({kind} features: {'raw values x gate' if kind == 'raw' else 'pool percentiles'}, "
                  f"+ no-confidence): a pipeline within {BOUND_REGRET} of the best first on all {len(scored)} sets? "
                  f"{verdict} (best margin {margin:.4f}; {time.perf_counter() - t0:.0f} s)")
    overall_level, overall = (choose_joint(by_level, spec.weights, args.lodo_objective) if tables
                              else (FAMILY_AGREEMENT, ()))
    print(f"\nchosen on all {len(tables)} datasets (a proposed default; its estimate is the LODO table): "
          f"{weights_text(overall)}; families at object agreement >= {overall_level:g}")
    folds = {}
    for lv, w in chosen_joint.values():
        key = f"{weights_text(w)}; families {lv:g}"
        folds[key] = folds.get(key, 0) + 1
    print("LODO choices across folds: " + "; ".join(f"{k} ({v}x)" for k, v in folds.items()))
    if len(tables) > 1:  # how much the estimate depends on the LODO objective (both are held-out numbers)
        for obj in ("mean", "worst"):
            held = [by_level[lv][d][w] for d, (lv, w) in lodo_joint(by_level, spec.weights, obj).items()]
            print(f"LODO objective {obj}: held-out mean regret {_nanmean([r for _, r in held]):.3f}, "
                  f"mean rho {_nanmean([x for x, _ in held]):.2f}, worst regret {np.nanmax([r for _, r in held]):.3f}")
    if not args.no_he:
        he_section(spec, args.rescore_only, dict(overall), args.quick)
    if args.dump_tags:
        import pickle

        with open(args.dump_tags, "wb") as fh:
            pickle.dump({d: {"labels": list(sc.labels), "f1": np.asarray(sc.f1, float), "trial": list(sc.trial),
                             "default": np.asarray(sc.default, float),
                             "mean": np.asarray(combined(sc, dict(spec.weights), spec.gate), float),
                             "rank": np.asarray(rank_scored(sc, RANK_WEIGHTS, spec.gate), float)}
                         for d, sc in scored.items()}, fh)
        log(f"tag inputs written to {args.dump_tags}")
    if args.save:
        import pandas as pd

        pd.DataFrame([{"dataset": d, "candidate": lab, "gt_f1": f, "score_final": s, **t}
                      for d, sc in scored.items()
                      for lab, f, s, t in zip(sc.labels, sc.f1, sc.default, sc.trial)]).to_csv(args.save, index=False)
    print(f"\ntotal {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    main()
