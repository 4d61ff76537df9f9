"""Do the unsupervised proxies rank candidate pipelines the way ground truth does?

For every instance ground-truth dataset in ../shared/data/gt (and StarDist's 512x512
DSB 2018 sample), a set of varied candidate pipelines (preprocessing x
classical threshold/watershed settings x U-Net thresholds) is run on every
image. For each proxy, and for weighted combinations, it prints:

- Spearman rho between the proxy and the GT F1 at IoU 0.5 across candidates
  (mean over the dataset's images; sparse F1 for the sparse dataset);
- regret = best GT F1 among candidates - GT F1 of the candidate the proxy
  ranks first (0 = the proxy picks the best pipeline).

Proxies are computed exactly as in a study (``Objective.image_metrics``):
the consensus of a candidate is the majority of all *other* candidates.

Usage: python bench/proxy_validity.py [--quick] [--perturbations shift,zoom_out]
       [--weights consensus=0.5,stability=0.2,...] [--datasets dsb2018_256,mitocheck]
"""
from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile
from scipy.stats import spearmanr

from opsef_opt.config import score_spec
from opsef_opt.preprocess import normalize01, run_chain
from opsef_opt.score import ImageResult
from opsef_opt.score.objective import Objective
from opsef_opt.score.proxies import ConsensusAccumulator, combine
from opsef_opt.search.pool import ConsensusPool, LabelStore
from opsef_opt.segment import load_segmenter

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"

PREPROCESS = {
    "none": (),
    "gaussian1": (("filter", "gaussian", {"sigma": 1.0}),),
    "median3": (("filter", "median", {"size": 3}),),
    "tophat15": (("background", "tophat", {"radius": 15}),),
    "clahe": (("histogram", "clahe", {"clip_limit": 0.02}),),
    "gauss2+clahe": (("filter", "gaussian", {"sigma": 2.0}), ("histogram", "clahe", {"clip_limit": 0.02})),
}
MODELS = (
    [("classical", {}, {"threshold": th, "min_distance": md}) for th in ("otsu", "li", "triangle", "yen")
     for md in (2, 5, 10)]
    + [("bioimageio_unet", {"package": "unet2d_nuclei_broad"}, {"threshold": th, "min_distance": md})
       for th in (0.3, 0.5, 0.7) for md in (3, 8)]
)


def datasets(names: set[str] | None) -> dict[str, tuple[list[tuple[str, np.ndarray, np.ndarray]], bool]]:
    """name -> ([(image name, image, truth)], sparse)."""
    out = {}
    g = SHARED / "gt"
    out["dsb2018_256"] = ([("dsb2018_256", tifffile.imread(g / "dsb2018_256/image.tif"),
                            tifffile.imread(g / "dsb2018_256/labels.tif"))], False)
    out["mitocheck"] = ([("mitocheck", tifffile.imread(g / "mitocheck/image.tif"),
                          tifffile.imread(g / "mitocheck/labels.tif"))], False)
    out["bbbc007_sparse"] = ([(p.stem, tifffile.imread(p), tifffile.imread(g / "bbbc007_sparse/labels" / p.name))
                              for p in sorted((g / "bbbc007_sparse/images").glob("*.tif"))], True)
    # gt/bbbc007_semantic is not used: its masks are sparse training scribbles
    # (~2% of pixels, class 1 on background, class 2 on nuclei), not instances.
    from stardist.data import test_image_nuclei_2d

    img, mask = test_image_nuclei_2d(return_mask=True)
    out["stardist_dsb512"] = ([("dsb512", img, mask)], False)
    return {k: v for k, v in out.items() if not names or k in names}


def run_candidates(images, sparse: bool, spec, quick: bool):
    """Per candidate: labels and image metrics (without consensus) per image."""
    objective = Objective(spec, "proxy", sparse)
    prep = dict(list(PREPROCESS.items())[:3]) if quick else PREPROCESS
    models = MODELS[::2] if quick else MODELS
    cands = []
    for pname, steps in prep.items():
        for family, init, params in models:
            model = load_segmenter(family, **init)
            label = f"{pname} | {family}({', '.join(f'{k}={v}' for k, v in params.items())})"
            per = []
            for name, img, truth in images:
                image, axes = run_chain(img, "YX", steps)
                seg = model(image, axes, **params)
                labels = seg.labels

                def segment(src, steps=steps, model=model, params=params):
                    im, ax = run_chain(src, "YX", steps)
                    return model(im, ax, **params).labels

                res = ImageResult(labels, image, truth, raw=normalize01(img.astype(np.float32)),
                                  confidence=seg.confidence, consensus=None, source=img, source_axes="YX", segment=segment)
                m = objective.image_metrics(res)
                per.append((name, labels, m))
            cands.append((label, per))
    return cands


def add_consensus(cands, images, spec) -> None:
    """Consensus of each candidate against the others, as a finished stage computes it.

    Uses the study's own :class:`ConsensusPool` (majority of the plausible
    half); ``consensus_all`` is the plain majority of all other candidates,
    for comparison.
    """
    from opsef_opt.score import PROXIES

    consensus = PROXIES.get("consensus").func
    opts = spec.options("consensus")
    with tempfile.TemporaryDirectory() as tmp:
        store = LabelStore(Path(tmp))
        for k, (_, per) in enumerate(cands):
            store.save(k, {n: lab for n, lab, _ in per}, {n: m for n, _, m in per})
        pool = ConsensusPool(store, spec)
        pool.refresh()
        for k, (_, per) in enumerate(cands):
            for name, lab, m in per:
                got = consensus(ImageResult(lab, np.zeros(0), consensus=pool.consensus(name, k)), **opts)
                m.update({f"proxy.{key}": v for key, v in got.items()})
    for i, (name, img, truth) in enumerate(images):
        acc = ConsensusAccumulator(truth.shape)
        for _, per in cands:
            acc.add(per[i][1])
        for _, per in cands:
            lab = per[i][1]
            got = consensus(ImageResult(lab, np.zeros(0), consensus=acc.labels(exclude=lab)), **opts)
            per[i][2]["proxy.consensus_all"] = got["consensus"]


def _nanmean(values) -> float:
    arr = np.asarray(values, float)
    return float(np.nanmean(arr)) if np.isfinite(arr).any() else math.nan


def table(cands, weightings: dict[str, dict[str, float]], gate: str | None, names: list[str]):
    f1 = np.array([np.mean([m["gt.f1"] for _, _, m in per]) for _, per in cands])
    rows = {}
    for n in names:
        vals = np.array([_nanmean([m.get(f"proxy.{n}", math.nan) for _, _, m in per]) for _, per in cands])
        rows[n] = vals
    for wname, w in weightings.items():
        rows[wname] = np.array([np.mean([combine({n: m.get(f"proxy.{n}", math.nan) for n in names}, w, gate)
                                         for _, _, m in per]) for _, per in cands])
    out = {}
    for k, v in rows.items():
        ok = np.isfinite(v)
        if ok.sum() < 3 or np.ptp(v[ok]) == 0:
            out[k] = (math.nan, math.nan)
            continue
        rho = spearmanr(v[ok], f1[ok]).statistic
        regret = float(f1.max() - f1[ok][np.argmax(v[ok])])
        out[k] = (float(rho), regret)
    return out, f1


def _load(path: str, wanted: set[str] | None) -> dict:
    """Candidates' per-image metrics from a CSV written by --save."""
    import pandas as pd

    df = pd.read_csv(path)
    out = {}
    for dname, d in df.groupby("dataset", sort=False):
        if wanted and dname not in wanted:
            continue
        cands = []
        for cand, c in d.groupby("candidate", sort=False):
            per = [(r["image"], None, {k: v for k, v in r.items() if k not in ("dataset", "candidate", "image")})
                   for _, r in c.iterrows()]
            cands.append((cand, per))
        out[dname] = (cands, d["image"].nunique(), dname.endswith("sparse"), 0.0)
    return out


def simulated_tag(f1: float, n_pred: float, n_true: float) -> str:
    """What an analyst would say, read off the ground truth (for the tag-model check only)."""
    if f1 < 0.3:
        return "failed"
    if f1 >= 0.75:
        return "correct"
    return "over" if n_pred > n_true else "under"


def tag_model_check(cands, n_tagged: int, draws: int = 20) -> tuple[float, float, float, float]:
    """Tag ``n_tagged`` random candidates from GT, fit the tag model, rank the rest.

    Returns mean (CV accuracy, majority baseline, Spearman of predicted value
    vs GT F1 on the untagged candidates, regret of its top pick among them).
    """
    import pandas as pd

    from opsef_opt.score.tag_model import NotEnoughTags, fit_tag_model, tag_features

    feats, tags, f1s = [], [], []
    for _, per in cands:
        ms = [m for _, _, m in per]
        mean = {k: _nanmean([m.get(k, math.nan) for m in ms]) for k in ms[0] if k.startswith("proxy")}
        mean["n_objects_mean"] = _nanmean([m["gt.n_pred"] for m in ms])
        feats.append(tag_features(mean))
        f1 = _nanmean([m["gt.f1"] for m in ms])
        f1s.append(f1)
        tags.append(simulated_tag(f1, sum(m["gt.n_pred"] for m in ms), sum(m["gt.n_true"] for m in ms)))
    X, f1s = pd.DataFrame(feats), np.array(f1s)
    rng = np.random.default_rng(0)
    out = []
    for _ in range(draws):
        idx = rng.permutation(len(cands))
        tagged, rest = idx[:n_tagged], idx[n_tagged:]
        try:
            model = fit_tag_model(X.iloc[tagged], [tags[i] for i in tagged], min_tagged=min(10, n_tagged))
        except NotEnoughTags:
            continue
        pred = model.predict_value(X.iloc[rest])
        out.append((model.cv_accuracy, model.baseline_accuracy, spearmanr(pred, f1s[rest]).statistic,
                    f1s[rest].max() - f1s[rest][int(np.argmax(pred))]))
    return tuple(np.nanmean(np.array(out, float), axis=0)) if out else (math.nan,) * 4


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="3 preprocessings x 9 settings")
    ap.add_argument("--perturbations", default=None, help="stability perturbations, comma-separated")
    ap.add_argument("--datasets", default=None)
    ap.add_argument("--weights", default=None, help="extra combination, e.g. consensus=0.5,contrast=0.5")
    ap.add_argument("--save", default=None, help="write every candidate's per-image metrics to this CSV")
    ap.add_argument("--load", default=None, help="re-rank from a CSV written by --save (no segmentation)")
    ap.add_argument("--tags", type=int, default=15, help="tagged runs for the tag-model check (0: skip)")
    args = ap.parse_args()
    node = {}
    if args.perturbations is not None:
        node = {"proxies": {"stability": {"perturbations": [p for p in args.perturbations.split(",") if p]}}}
    spec = score_spec(node)
    names = [p.name for p in spec.proxies if p.name != spec.gate] + ["consensus_all"]
    weightings = {"combined (default)": spec.weights,
                  "equal": {n: 1.0 for n in names if n != "consensus_all"},
                  "default, all-vote consensus": {("consensus_all" if k == "consensus" else k): v
                                                  for k, v in spec.weights.items()}}
    if args.weights:
        weightings["custom"] = {k: float(v) for k, v in (kv.split("=") for kv in args.weights.split(","))}
    print(f"proxies: {names}; gate: {spec.gate}; default weights: {spec.weights}")
    print(f"stability options: {spec.options('stability')}")
    summary: dict[str, list] = {}
    wanted = set(args.datasets.split(",")) if args.datasets else None
    rows = []
    if args.load:
        sets = _load(args.load, wanted)
    else:
        sets = {}
        for dname, (images, sparse) in datasets(wanted).items():
            t0 = time.perf_counter()
            cands = run_candidates(images, sparse, spec, args.quick)
            add_consensus(cands, images, spec)
            sets[dname] = (cands, len(images), sparse, time.perf_counter() - t0)
            rows += [{"dataset": dname, "candidate": c, "image": n, **m} for c, per in cands for n, _, m in per]
        if args.save:
            import pandas as pd

            pd.DataFrame(rows).to_csv(args.save, index=False)
    for dname, (cands, n_images, sparse, dt) in sets.items():
        res, f1 = table(cands, weightings, spec.gate, names + [spec.gate] if spec.gate else names)
        print(f"\n## {dname}: {n_images} image(s), {len(cands)} candidates, GT F1 "
              f"{f1.min():.3f}..{f1.max():.3f} (best: {cands[int(np.argmax(f1))][0]}){' [sparse GT]' if sparse else ''}"
              f"  ({dt:.0f} s)")
        print(f"{'proxy':24s} {'spearman':>9s} {'regret':>8s}")
        for k, (rho, regret) in res.items():
            print(f"{k:24s} {rho:9.3f} {regret:8.3f}")
            summary.setdefault(k, []).append((rho, regret))
        if args.tags:
            cv, base, rho, regret = tag_model_check(cands, args.tags)
            print(f"tag model from {args.tags} simulated tags (20 draws): CV accuracy {cv:.2f} "
                  f"(majority {base:.2f}); on the untagged: spearman {rho:.3f}, regret {regret:.3f}")
            summary.setdefault(f"tag model ({args.tags} tags)", []).append((rho, regret))
    print("\n## mean over datasets")
    print(f"{'proxy':24s} {'spearman':>9s} {'regret':>8s}")
    for k, vals in summary.items():
        arr = np.array(vals, float)
        print(f"{k:24s} {_nanmean(arr[:, 0]):9.3f} {_nanmean(arr[:, 1]):8.3f}")


if __name__ == "__main__":
    main()
