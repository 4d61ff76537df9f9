"""Forward passes per study: one per distinct (preprocessed image, model, inference params).

For each deep model family -- the shipped bioimage.io U-Net, a tiny Cellpose
net and a tiny StarDist model trained here from scratch (no pretrained
weights needed) -- runs a real study (the CLI, in a fresh folder) whose grid
is 3 x 3 *post-processing* settings (U-Net threshold x min_distance; Cellpose
flow_threshold x cellprob_threshold; StarDist prob_thresh x nms_thresh) over
several preprocessings of the demo images, twice: ``before`` with the
inference cache off (``OPSEF_INFERENCE_CACHE=0``: every trial runs the network
again, as before the split) and ``after`` with it on. Prints per family:
trials, forward passes (summed from the trials' ``forward_passes`` metric),
distinct inference keys (files under ``<study>/cache/infer``; the expected
number is preprocessings x images x inference settings x (1 + perturbations)),
and the wall time of the command and of the search loop.

``--stability`` turns the stability proxy on (weight 0.1: its perturbed
forward pass is then needed and cached per inference key and perturbation;
by default it is skipped because no enabled score uses it).

Usage: python bench/inference_reuse.py [--families unet,cellpose,stardist] [--preprocessings 3]
       [--repeats 1] [--stability] [--keep DIR]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: 3 x 3 post-processing settings per family, and the init (filled in for the tiny models)
GRIDS = {
    "unet": ("bioimageio_unet", {"threshold": [0.3, 0.5, 0.7], "min_distance": [3, 5, 8]}),
    "cellpose": ("cellpose", {"flow_threshold": [0.2, 0.4, 0.8], "cellprob_threshold": [-1.0, 0.0, 1.0]}),
    "stardist": ("stardist", {"prob_thresh": [0.3, 0.5, 0.7], "nms_thresh": [0.2, 0.4, 0.6]}),
}
#: preprocessings (the first n are used)
PREPROCESSINGS = ["none", "{name: median, size: 3}", "{name: gaussian, sigma: 1.0}", "{name: median, size: 5}"]
DEMO_IMAGES = 2

# the tiny models: tiles of StarDist's 512 x 512 DSB 2018 image, as in tests/test_cellpose_model.py
# and tests/test_stardist_model.py
CELLPOSE_TILES = [(slice(0, 256), slice(0, 256)), (slice(0, 256), slice(256, 512)), (slice(256, 512), slice(0, 256))]


def tiny_cellpose(folder: Path) -> Path:
    """A tiny Cellpose net trained from scratch (30-60 s on 2 CPU cores); its model file."""
    from stardist.data import test_image_nuclei_2d

    from opsef_opt.train.cellpose_train import train_cellpose

    img, lbl = test_image_nuclei_2d(return_mask=True)
    return train_cellpose([img[t] for t in CELLPOSE_TILES], [lbl[t].copy() for t in CELLPOSE_TILES],
                          Path(folder), n_epochs=100)


def tiny_stardist(folder: Path) -> Path:
    """A tiny StarDist model trained from scratch (about a minute on 2 CPU cores); its model folder."""
    from stardist.data import test_image_nuclei_2d

    from opsef_opt.train.stardist_train import train_stardist

    img, lbl = test_image_nuclei_2d(return_mask=True)
    img = (img / img.max()).astype(np.float32)
    return train_stardist([img[:256]], [lbl[:256]], Path(folder), name="tiny",
                          val_images=[img[256:352]], val_labels=[lbl[256:352]], seed=0)


def _yaml_list(values) -> str:
    return "[" + ", ".join(str(v) for v in values) + "]"


def study_yaml(name: str, family: str, init: dict, grid: dict, n_pre: int, stability: bool) -> str:
    n_trials = n_pre * int(np.prod([len(v) for v in grid.values()]))
    params = "\n".join(f"        {k}: {_yaml_list(v)}" for k, v in grid.items())
    init_s = "{" + ", ".join(f"{k}: '{v}'" for k, v in init.items()) + "}"
    score = "score:\n  proxies:\n    stability: {weight: 0.1}\n" if stability else ""
    return f"""name: {name}
n_trials: {n_trials}
seed: 0
images:
  folder: ${{opsef_data:demo/images}}
  pattern: "*.tif"
  labels:
    folder: ${{opsef_data:demo/labels}}
search:
  sampler: grid
  preprocess:
    filter: {_yaml_list(PREPROCESSINGS[:n_pre])}
  models:
    m:
      family: {family}
      init: {init_s}
      params:
{params}
{score}"""


@dataclass
class Run:
    trials: int
    forward_passes: int
    keys: int
    wall_s: float
    loop_s: float


def run_study(work: Path, name: str, yaml_text: str, cache: bool) -> Run:
    """Run the study through the CLI in ``work`` and count what it did."""
    import optuna
    from mlflow import MlflowClient

    conf = work / "conf" / "study"
    conf.mkdir(parents=True, exist_ok=True)
    (conf / f"{name}.yaml").write_text(yaml_text)
    env = {**os.environ, "OPSEF_INFERENCE_CACHE": "1" if cache else "0"}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "opsef_opt", f"study={name}",
                           f"hydra.searchpath=[file://{work / 'conf'}]"],
                          cwd=work, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"study {name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    study_dir = work / "studies" / name
    study = optuna.load_study(study_name=f"{name}/search", storage=f"sqlite:///{study_dir / 'optuna.db'}")
    trials = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    loop = (max(t.datetime_complete for t in trials) - min(t.datetime_start for t in trials)).total_seconds()
    client = MlflowClient(f"sqlite:///{work / 'studies' / 'mlflow.db'}")
    exp = client.get_experiment_by_name(name)
    runs = client.search_runs([exp.experiment_id], "tags.`opsef.status` = 'complete'", max_results=5000)
    passes = int(sum(r.data.metrics.get("forward_passes", 0) for r in runs))
    keys = len(list((study_dir / "cache" / "infer").rglob("*.npz")))
    return Run(len(trials), passes, keys, wall, loop)


def expected_keys(n_pre: int, stability: bool, perturbations: int = 1) -> int:
    """Distinct inference keys: preprocessings x images x 1 inference setting x (1 + perturbations)."""
    return n_pre * DEMO_IMAGES * (1 + (perturbations if stability else 0))


def init_for(family: str, models: Path) -> dict:
    if family == "unet":
        return {"package": "unet2d_nuclei_broad"}
    if family == "cellpose":
        return {"model": str(tiny_cellpose(models / "cellpose"))}
    return {"model": str(tiny_stardist(models / "stardist"))}


def measure(family: str, work: Path, models: Path, n_pre: int, stability: bool, repeats: int = 1,
            init: dict | None = None) -> dict[str, list[Run]]:
    """``{"before": [Run...], "after": [Run...]}`` for one family (fresh study folders each time)."""
    fam, grid = GRIDS[family]
    init = init if init is not None else init_for(family, models)
    out: dict[str, list[Run]] = {"before": [], "after": []}
    for r in range(repeats):
        for label, cache in (("before", False), ("after", True)):
            name = f"reuse_{family}_{label}_{r}"
            out[label].append(run_study(work / name, name, study_yaml(name, fam, init, grid, n_pre, stability),
                                        cache))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--families", default="unet,cellpose,stardist")
    ap.add_argument("--preprocessings", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--stability", action="store_true")
    ap.add_argument("--keep", type=Path)
    args = ap.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="opsef-reuse-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"{'family':9s} {'run':6s} {'trials':>6s} {'fwd passes':>10s} {'inf. keys':>9s} {'expected':>8s} "
          f"{'wall s':>13s} {'loop s':>13s}")
    for family in args.families.split(","):
        res = measure(family, work, work / "models", args.preprocessings, args.stability, args.repeats)
        exp = expected_keys(args.preprocessings, args.stability)
        for label, runs in res.items():
            walls = [r.wall_s for r in runs]
            loops = [r.loop_s for r in runs]
            first = runs[0]
            print(f"{family:9s} {label:6s} {first.trials:6d} {first.forward_passes:10d} "
                  f"{first.keys if label == 'after' else '-':>9} {exp:8d} "
                  f"{min(walls):6.1f}-{max(walls):6.1f} {min(loops):6.1f}-{max(loops):6.1f}")
    print(f"\n{args.preprocessings} preprocessings x {DEMO_IMAGES} demo images x 3 x 3 post-processing settings; "
          f"stability {'on (1 perturbation)' if args.stability else 'off (skipped: no enabled score uses it)'}; "
          f"wall/loop: min-max over {args.repeats} run(s); outputs in {work}")


if __name__ == "__main__":
    main()
