"""The validation corpus of ``bench/proxy_validity.py``: datasets, search spaces, tiny models, segmentation cache.

Datasets (every 2D instance ground truth in ``../shared/data/gt`` plus
StarDist's DSB 2018 512x512 sample; see ``../shared/data/README.md``):

=====================================  ======  ======================================================
name                                   images  notes
=====================================  ======  ======================================================
dsb2018_256                            1       256x256 fluorescent nuclei (~9 px)
mitocheck                              1       364x260 HeLa nuclei (~30 px), 7 objects
bbbc007_sparse                         6       340x340 Drosophila DNA stain; SPARSE GT: only labelled
                                               nuclei are scored (``Objective(sparse=True)``)
kromp2020_fluo_nuclei_dense            3       tissue sections, dense touching nuclei (18-60 px);
                                               CENTRE CROP 512x512 of each (cost), 54-168 nuclei each
kromp2020_fluo_nuclei_lowsnr_confocal  4       low S/N widefield + confocal (28-71 px);
                                               CENTRE CROP 512x512 of each, 11-35 nuclei each
stardist_dsb512                        1       512x512 DSB 2018 (~24 px), 125 nuclei
=====================================  ======  ======================================================

Not used for numbers: ``bbbc007_semantic`` (3-class semantic crops, not
instances), ``plantseg_gonuclear_3d_nuclei`` (3D; its README says "not for
validity numbers"), ``raw/he_example.tif`` (no GT: only the optional
polarity sanity section, see :func:`he_sanity_dataset`).

Search spaces: what a user would write for the dataset, i.e. a grid over a
``preprocess`` slot list and a ``models`` list, with the nucleus diameter
``d`` the user knows roughly (measured once on one nucleus in Fiji; rounded
here, per dataset) setting sizes:

* preprocessing (6): none, gaussian sigma 1, gaussian sigma 4 (over-smoothing),
  CLAHE (clip 0.02), top-hat (radius ~ d), invert (wrong polarity: all
  these datasets have bright nuclei);
* models: classical threshold + watershed (otsu at two min_distance, li,
  triangle, local), the shipped U-Net ``unet2d_nuclei_broad`` (threshold
  0.5 at two min_distance, threshold 0.3), and two tiny self-trained models
  (StarDist and Cellpose, trained here with the project's own trainers on
  tiles of StarDist's DSB 512 image exactly as the tests do; so they are NOT
  candidates on ``stardist_dsb512``, which they were trained on).

6 x 10 = 60 candidates per dataset (48 on ``stardist_dsb512``).

Cache: every candidate's segmentation of every image is stored under
``CACHE/<dataset>/<candidate slug>__<sha1 of (pipeline, image content)>.npz``
(labels, per-object confidence, and the labels of every input the stability
proxy re-segmented, keyed by the input's content hash). The U-Net's
probability maps are cached too (``CACHE/<dataset>/prob/<input hash>.npz``),
so ``--rescore-only`` re-runs the library's own U-Net post-processing
(threshold, watershed, confidence) from them without running the network;
other families' segmentations come from the cache as they were.
``--rescore-only`` never runs a model: a missing entry raises
:class:`CacheMiss`.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import tifffile

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
CACHE = Path(os.environ.get("OPSEF_VALIDITY_CACHE", "/tmp/opsef_validity_cache"))
#: kromp2020 images are ~1024 x 1024: a centre crop of this size is used (cost)
CROP = 512

__all__ = ["Candidate", "Dataset", "CacheMiss", "SegCache", "load_corpus", "space", "ensure_tiny_models",
           "he_sanity_dataset", "CACHE", "CROP", "DIAMETERS", "segment_code_hash"]


class CacheMiss(RuntimeError):
    """A segmentation ``--rescore-only`` needs is not in the cache."""


# --------------------------------------------------------------------------------------------- candidates

@dataclass(frozen=True)
class Candidate:
    """One pipeline of a search space: preprocessing steps + a model setting."""

    prep: str  # short name of the preprocessing
    steps: tuple  # ((slot, name, params), ...) as run_chain takes them
    model: str  # short name of the model setting
    family: str
    init: tuple  # sorted (key, value) pairs
    params: tuple  # sorted (key, value) pairs

    @property
    def label(self) -> str:
        return f"{self.prep} | {self.model}"

    @property
    def pipeline(self):
        """The candidate as the library's :class:`opsef_opt.pipeline.Pipeline` (how the bench runs it)."""
        from opsef_opt.pipeline import Pipeline
        from opsef_opt.settings import ModelSpec

        model = ModelSpec(label=self.model, family=self.family, init=dict(self.init), fixed={}, choices={},
                          ranges={})
        return Pipeline(steps=tuple(self.steps), step_labels=tuple((slot, name) for slot, name, _ in self.steps),
                        model=model, model_params=dict(self.params))

    @property
    def slug(self) -> str:
        return "".join(c if c.isalnum() or c in "-_.=" else "_" for c in f"{self.prep}__{self.model}")

    def describe(self) -> dict:
        return {"steps": [list(s) for s in self.steps], "family": self.family, "init": dict(self.init),
                "params": dict(self.params)}

    def family_key(self) -> tuple:
        """(model family + setting): candidates differing only by preprocessing share it."""
        return (self.family, self.init, self.params)


def _cand(prep: str, steps, model: str, family: str, init: dict, params: dict) -> Candidate:
    return Candidate(prep, tuple(steps), model, family, tuple(sorted(init.items())), tuple(sorted(params.items())))


#: nucleus diameter (px) a user would give for each dataset (rounded, as measured on one nucleus)
DIAMETERS = {
    "dsb2018_256": 9,
    "mitocheck": 30,
    "bbbc007_sparse": 16,
    "kromp2020_fluo_nuclei_dense": 25,
    "kromp2020_fluo_nuclei_lowsnr_confocal": 40,
    "stardist_dsb512": 24,
    "he_example": 14,
}


def preprocessings(d: int) -> dict[str, tuple]:
    """The preprocessing options of the space (d = nucleus diameter in px)."""
    return {
        "none": (),
        "gauss1": (("filter", "gaussian", {"sigma": 1.0}),),
        "gauss4": (("filter", "gaussian", {"sigma": 4.0}),),  # over-smoothing
        "clahe": (("histogram", "clahe", {"clip_limit": 0.02}),),
        f"tophat{max(10, d)}": (("background", "tophat", {"radius": max(10, d)}),),
        "invert": (("invert", "invert", {}),),  # wrong polarity: nuclei are bright in every GT set
    }


def model_settings(d: int, tiny: dict[str, str | None]) -> list[tuple[str, str, dict, dict]]:
    """(short name, family, init, params) of the space's model settings."""
    md_s, md_l = max(2, round(d / 4)), max(3, round(d / 2))
    block = 2 * (2 * d) + 1  # local threshold window: ~4 nucleus diameters, odd
    unet = {"package": "unet2d_nuclei_broad"}
    out = [
        (f"otsu md{md_s}", "classical", {}, {"threshold": "otsu", "min_distance": md_s}),
        (f"otsu md{md_l}", "classical", {}, {"threshold": "otsu", "min_distance": md_l}),
        (f"li md{md_s}", "classical", {}, {"threshold": "li", "min_distance": md_s}),
        (f"triangle md{md_s}", "classical", {}, {"threshold": "triangle", "min_distance": md_s}),
        (f"local md{md_s}", "classical", {}, {"threshold": "local", "local_block": block, "min_distance": md_s}),
        (f"unet t0.5 md{md_s}", "bioimageio_unet", unet, {"threshold": 0.5, "min_distance": md_s}),
        (f"unet t0.5 md{md_l}", "bioimageio_unet", unet, {"threshold": 0.5, "min_distance": md_l}),
        (f"unet t0.3 md{md_s}", "bioimageio_unet", unet, {"threshold": 0.3, "min_distance": md_s}),
    ]
    if tiny.get("stardist"):
        out.append(("stardist-tiny", "stardist", {"model": tiny["stardist"]}, {}))
    if tiny.get("cellpose"):
        out.append((f"cellpose-tiny d{d}", "cellpose", {"model": tiny["cellpose"], "device": "cpu"},
                    {"diameter": float(d)}))
    return out


def space(dataset: str, tiny: dict[str, str | None], quick: bool = False) -> list[Candidate]:
    """The grid preprocessings x model settings for ``dataset`` (quick: 3 x 4, for tests)."""
    d = DIAMETERS[dataset]
    preps = preprocessings(d)
    if dataset == "stardist_dsb512":  # the tiny models were trained on this image
        tiny = {}
    models = model_settings(d, tiny)
    if quick:
        preps = {k: preps[k] for k in list(preps)[:2] + ["invert"]}
        models = [models[0], models[2], models[5], models[6]]
    return [_cand(p, steps, m, fam, init, params) for p, steps in preps.items() for m, fam, init, params in models]


# ----------------------------------------------------------------------------------------------- datasets

@dataclass
class Dataset:
    name: str
    images: list[tuple[str, np.ndarray, np.ndarray | None]]  # (image name, image, truth)
    sparse: bool = False
    note: str = ""
    axes: str = "YX"
    candidates: list[Candidate] = field(default_factory=list)


def _centre(a: np.ndarray, size: int = CROP) -> np.ndarray:
    h, w = a.shape[:2]
    y0, x0 = max(0, (h - size) // 2), max(0, (w - size) // 2)
    return a[y0:y0 + size, x0:x0 + size]


def _folder(name: str, crop: bool) -> list[tuple[str, np.ndarray, np.ndarray]]:
    g = SHARED / "gt" / name
    out = []
    for p in sorted((g / "images").glob("*.tif")):
        img, lab = tifffile.imread(p), tifffile.imread(g / "labels" / p.name)
        if crop:
            img, lab = _centre(img), _centre(lab)
        out.append((p.stem, img, lab))
    return out


ALL = ("dsb2018_256", "mitocheck", "bbbc007_sparse", "kromp2020_fluo_nuclei_dense",
       "kromp2020_fluo_nuclei_lowsnr_confocal", "stardist_dsb512")


def load_corpus(names=None, tiny: dict[str, str | None] | None = None, quick: bool = False) -> list[Dataset]:
    """The datasets (all of :data:`ALL` when ``names`` is empty), each with its search space."""
    tiny = tiny or {}
    g = SHARED / "gt"
    out = []
    for name in ALL:
        if names and name not in names:
            continue
        if name in ("dsb2018_256", "mitocheck"):
            ds = Dataset(name, [(name, tifffile.imread(g / name / "image.tif"), tifffile.imread(g / name / "labels.tif"))])
        elif name == "bbbc007_sparse":
            ds = Dataset(name, _folder(name, crop=False), sparse=True, note="sparse GT")
        elif name.startswith("kromp2020"):
            ds = Dataset(name, _folder(name, crop=True), note=f"centre {CROP}x{CROP} crops")
        else:
            from stardist.data import test_image_nuclei_2d

            img, mask = test_image_nuclei_2d(return_mask=True)
            ds = Dataset(name, [("dsb512", img, mask)])
        ds.candidates = space(name, tiny, quick)
        out.append(ds)
    return out


def he_sanity_dataset(quick: bool = False) -> Dataset:
    """H&E crop without GT: polarity is known by construction (nuclei are dark in grey, dense in haematoxylin).

    Candidates: colour (grey | haematoxylin) x invert (no | yes) x filter
    (none | gaussian 1) x models (classical otsu, li; U-Net 0.5). Wrong
    polarity: grey without invert, haematoxylin with invert (``prep``
    starts with ``WRONG``).
    """
    img = _centre(tifffile.imread(SHARED / "raw" / "he_example.tif"))
    d = DIAMETERS["he_example"]
    md = max(2, round(d / 4))
    cands = []
    for colour, cstep in (("grey", ("color", "grayscale", {})), ("haem", ("color", "stain", {"stain": "hematoxylin"}))):
        for inv in (False, True):
            wrong = (colour == "grey") != inv
            for filt, fsteps in (("", ()), ("+gauss1", (("filter", "gaussian", {"sigma": 1.0}),))):
                steps = (cstep,) + fsteps + ((("invert", "invert", {}),) if inv else ())
                prep = f"{'WRONG ' if wrong else ''}{colour}{'+invert' if inv else ''}{filt}"
                models = [(f"otsu md{md}", "classical", {}, {"threshold": "otsu", "min_distance": md}),
                          (f"li md{md}", "classical", {}, {"threshold": "li", "min_distance": md}),
                          (f"unet t0.5 md{md}", "bioimageio_unet", {"package": "unet2d_nuclei_broad"},
                           {"threshold": 0.5, "min_distance": md})]
                if quick:
                    models = models[:1]
                cands += [_cand(prep, steps, m, f, i, p) for m, f, i, p in models]
    return Dataset("he_example", [("he_example", img, None)], axes="YXC", note="no GT: polarity by construction",
                   candidates=cands)


# ------------------------------------------------------------------------------------------- tiny models

def ensure_tiny_models(folder: Path | None = None, train: bool = True, log: Callable[[str], None] = print
                       ) -> dict[str, str | None]:
    """Paths of the tiny StarDist and Cellpose models, trained once (as in the tests) and kept in ``folder``.

    Both are trained on StarDist's DSB 512 image (StarDist: rows 0-255, validation
    256-351; Cellpose: three of its four 256 x 256 tiles), with the project's
    trainers and the tests' settings. ``train=False`` only returns what exists.
    A model that cannot be trained (library missing) is ``None``.
    """
    folder = Path(folder or CACHE / "models")
    folder.mkdir(parents=True, exist_ok=True)
    out: dict[str, str | None] = {"stardist": None, "cellpose": None}
    sd = folder / "stardist" / "tiny"
    cp = folder / "cellpose"
    if (sd / "weights_best.h5").is_file():
        out["stardist"] = str(sd)
    cps = sorted(p for p in cp.glob("**/*") if p.is_file() and p.name.startswith("cellpose_tiny")) if cp.is_dir() else []
    if cps:
        out["cellpose"] = str(cps[0])
    if not train or all(out.values()):
        return out
    from stardist.data import test_image_nuclei_2d

    img, lbl = test_image_nuclei_2d(return_mask=True)
    if out["stardist"] is None:
        try:
            from opsef_opt.train.stardist_train import train_stardist

            t0 = time.perf_counter()
            unit = (img / img.max()).astype(np.float32)
            path = train_stardist([unit[:256]], [lbl[:256].astype(np.int32)], folder / "stardist", name="tiny",
                                  val_images=[unit[256:352]], val_labels=[lbl[256:352].astype(np.int32)], seed=0)
            out["stardist"] = str(path)
            log(f"trained tiny StarDist in {time.perf_counter() - t0:.0f} s -> {path}")
        except Exception as e:  # noqa: BLE001 - the bench goes on without it
            log(f"tiny StarDist not available: {type(e).__name__}: {e}")
    if out["cellpose"] is None:
        try:
            from opsef_opt.train.cellpose_train import train_cellpose

            t0 = time.perf_counter()
            tiles = [(slice(0, 256), slice(0, 256)), (slice(0, 256), slice(256, 512)), (slice(256, 512), slice(0, 256))]
            path = train_cellpose([img[t] for t in tiles], [lbl[t].copy() for t in tiles], cp, n_epochs=100)
            out["cellpose"] = str(path)
            log(f"trained tiny Cellpose in {time.perf_counter() - t0:.0f} s -> {path}")
        except Exception as e:  # noqa: BLE001
            log(f"tiny Cellpose not available: {type(e).__name__}: {e}")
    return out


# -------------------------------------------------------------------------------------- segmentation cache

def array_hash(a: np.ndarray) -> str:
    a = np.ascontiguousarray(a)
    h = hashlib.sha1(f"{a.shape}{a.dtype}".encode())
    h.update(a.tobytes())
    return h.hexdigest()[:16]


def segment_code_hash() -> str:
    """Hash of opsef_opt/segment/*.py and the preprocessing code: the cache says which code made it."""
    import opsef_opt

    root = Path(opsef_opt.__file__).parent
    h = hashlib.sha1()
    for p in sorted(list((root / "segment").glob("*.py")) + list((root / "preprocess").glob("*.py"))):
        h.update(p.read_bytes())
    return h.hexdigest()[:10]


class SegCache:
    """Per (candidate, image) segmentations on disk, and the U-Net probability maps.

    ``rescore_only``: never run a model; :class:`CacheMiss` when something is missing.
    ``refresh``: families whose cached segmentations are ignored (run again).
    """

    def __init__(self, dataset: str, rescore_only: bool = False, refresh: set[str] | None = None,
                 root: Path | None = None) -> None:
        self.folder = Path(root or CACHE) / dataset
        self.rescore_only = rescore_only
        self.refresh = refresh or set()
        self.stats = {"hit": 0, "run": 0, "prob_hit": 0, "prob_run": 0}
        self.code = segment_code_hash()
        self.codes_seen: set[str] = set()

    def path(self, cand: Candidate, image_key: str) -> Path:
        key = hashlib.sha1(json.dumps([cand.describe(), image_key], sort_keys=True, default=str).encode()).hexdigest()[:16]
        return self.folder / f"{cand.slug}__{key}.npz"

    # -- whole entries ---------------------------------------------------------------------------

    def load(self, cand: Candidate, image_key: str) -> dict | None:
        p = self.path(cand, image_key)
        if not p.is_file() or (cand.family in self.refresh and not self.rescore_only):
            return None
        with np.load(p, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            entry = {"labels": z["labels"].astype(np.int32), "confidence": _conf_in(meta.get("confidence")),
                     "extra": meta.get("extra", {}),
                     "stab": {k[5:]: z[k].astype(np.int32) for k in z.files if k.startswith("stab_")}}
        self.codes_seen.add(meta.get("code", "?"))
        return entry

    def save(self, cand: Candidate, image_key: str, entry: dict) -> None:
        if self.rescore_only:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        p = self.path(cand, image_key)
        meta = {"candidate": cand.label, "pipeline": cand.describe(), "image": image_key, "code": self.code,
                "confidence": _conf_out(entry.get("confidence")), "extra": _jsonable(entry.get("extra") or {}),
                "time": time.strftime("%Y-%m-%d %H:%M:%S")}
        arrays = {"labels": _small(entry["labels"])}
        arrays.update({f"stab_{k}": _small(v) for k, v in entry.get("stab", {}).items()})
        tmp = p.with_suffix(f".tmp{os.getpid()}.npz")
        np.savez_compressed(tmp, meta=np.array(json.dumps(meta)), **arrays)
        os.replace(tmp, p)

    # -- U-Net probability maps --------------------------------------------------------------------

    def prob_path(self, key: str) -> Path:
        return self.folder / "prob" / f"{key}.npz"

    def memo_probability(self, model) -> None:
        """Make ``model.probability`` read/write this cache (in memory and on disk), by input content."""
        if getattr(model, "_validity_cache", None) is self:
            return
        original = getattr(model, "_validity_original", None) or model.probability
        memo: dict[str, np.ndarray] = {}
        cache = self

        def probability(image, stats=None):
            key = array_hash(np.asarray(image, np.float32)) + ("" if stats is None else
                                                                 hashlib.sha1(json.dumps(stats, sort_keys=True).encode()).hexdigest()[:6])
            if key in memo:
                cache.stats["prob_hit"] += 1
                return memo[key]
            p = cache.prob_path(key)
            if p.is_file():
                with np.load(p) as z:
                    prob = z["prob"]
                cache.stats["prob_hit"] += 1
            elif cache.rescore_only:
                raise CacheMiss(f"U-Net probability map {p} not cached")
            else:
                prob = original(image, stats)
                p.parent.mkdir(parents=True, exist_ok=True)
                tmp = p.with_suffix(f".tmp{os.getpid()}.npz")
                np.savez_compressed(tmp, prob=np.asarray(prob, np.float32))
                os.replace(tmp, p)
                cache.stats["prob_run"] += 1
            if len(memo) > 24:
                memo.pop(next(iter(memo)))
            memo[key] = prob
            return prob

        model._validity_original = original
        model._validity_cache = self
        model.probability = probability


def _small(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    return a.astype(np.uint16) if a.max(initial=0) < 65535 else a.astype(np.int32)


def _conf_out(conf) -> dict | None:
    return None if conf is None else {str(int(k)): float(v) for k, v in conf.items()}


def _conf_in(conf) -> dict | None:
    return None if conf is None else {int(k): float(v) for k, v in conf.items()}


def _jsonable(extra: dict) -> dict:
    out = {}
    for k, v in extra.items():
        if isinstance(v, (int, float, str, bool)) or v is None:
            out[k] = v
        elif isinstance(v, (list, tuple)) and all(isinstance(x, (int, float)) for x in v):
            out[k] = list(v)
    return out
