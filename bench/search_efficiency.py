"""How many model evaluations does the staged search need, compared with the exhaustive grid?

On the shared ground-truth images (DSB 2018 256x256, MitoCheck, StarDist's
DSB 512x512), a space of 128 pipelines (16 preprocessings x 6 classical +
2 U-Net settings) is first searched exhaustively (one grid stage). Then the
staged search of the OpSeF paper runs with several seeds on the same study
space: ``coarse`` = its own grid over a quarter of the preprocessings (4:
background x histogram, no denoising filter) x every model setting (32
pipelines; post-processing settings are free once a network ran on an
input), ``fine`` = TPE around coarse's top 5 (ranges widened to the study's
neighbouring values, what coarse never tried kept as candidates, the top 5
evaluated first; their labels come from the segmentation cache, so they run
no model; then their post-processing neighbours, which reuse the cached
network outputs, ``opsef_opt.search.derive.free_neighbours``). Printed: the
network forward passes (each trial's ``forward_passes`` metric: one per
distinct preprocessed image x model x inference parameters, the U-Net's
settings differ only in post-processing so they share one) and the model
evaluations (trials that ran a model, classical included, on some image) the
staged search needed to reach 99 % of the grid's best GT F1, as shares of the
grid's (target <= 25 % of the grid's forward passes), the best score each
reaches, wall times, and the speed-up of ``n_workers=2`` over 1 on the grid
in wall time and in forward passes per second.

Both run through the real CLI (``python -m opsef_opt``) in a temporary
folder; the objective is GT F1 so the two are comparable.

Usage: python bench/search_efficiency.py [--seeds 0,1,2] [--fine-trials 16] [--skip-workers]
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import optuna
import tifffile
import yaml

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"



def _unet(min_distance: list[int]) -> dict:
    return {"family": "bioimageio_unet", "init": {"package": "unet2d_nuclei_broad"},
            "params": {"min_distance": min_distance}}


#: the study's space: 16 preprocessings x (6 classical + 2 U-Net settings) = 128 pipelines
SPACE = {
    "preprocess": {
        "filter": ["none", {"name": "median", "size": 3}, {"name": "gaussian", "sigma": 1.0},
                   {"name": "gaussian", "sigma": 2.0}],
        "background": ["none", {"name": "tophat", "radius": 15}],
        "histogram": ["none", {"name": "clahe", "clip_limit": 0.02}],
    },
    "models": {
        "classical": {"params": {"threshold": ["otsu", "li"], "min_distance": [3, 5, 8]}},
        "unet": _unet([3, 6]),
    },
}
#: the coarse stage's own subset: a quarter of the preprocessings (no denoising filter: background x histogram,
#: 4 of 16) x every model setting (32 pipelines). Post-processing is free once a network ran on an input, so
#: coarse subsets preprocessing only, never the models' settings; fine keeps the filters it never tried.
COARSE = {"preprocess": {"filter": ["none"]}}


#: images of the study (all three are training images)
N_IMAGES = 3


def write_data(root: Path) -> Path:
    """The GT images as <root>/images/*.tif + <root>/labels/*.tif."""
    from stardist.data import test_image_nuclei_2d

    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for name in ("dsb2018_256", "mitocheck"):
        tifffile.imwrite(root / "images" / f"{name}.tif", tifffile.imread(SHARED / "gt" / name / "image.tif"))
        tifffile.imwrite(root / "labels" / f"{name}.tif", tifffile.imread(SHARED / "gt" / name / "labels.tif"))
    img, mask = test_image_nuclei_2d(return_mask=True)
    tifffile.imwrite(root / "images" / "dsb512.tif", img)
    tifffile.imwrite(root / "labels" / "dsb512.tif", mask.astype(np.int32))
    return root


def study_yaml(name: str, data: Path, stages: dict) -> str:
    return yaml.safe_dump({
        "name": name, "n_trials": 200, "seed": 0,
        "images": {"folder": str(data / "images"), "labels": {"folder": str(data / "labels")}},
        "search": {"sampler": "grid", **SPACE},
        "score": {"objective": "gt_f1"},
        "stages": stages,
    }, sort_keys=False)


def run(work: Path, conf: Path, *overrides: str) -> float:
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "opsef_opt", f"hydra.searchpath=[file://{conf}]", *overrides],
                       cwd=work, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"study failed: {overrides}\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return time.perf_counter() - t0


def trials(work: Path, study: str, stage: str) -> list[optuna.trial.FrozenTrial]:
    s = optuna.load_study(study_name=f"{study}/{stage}", storage=f"sqlite:///{work}/studies/{study}/optuna.db")
    return sorted(s.get_trials(states=(optuna.trial.TrialState.COMPLETE,)), key=lambda t: t.datetime_start)


def forward_passes(work: Path, study: str, ts: list[optuna.trial.FrozenTrial]) -> np.ndarray:
    """Each trial's forward passes (its MLflow run's ``forward_passes`` metric; 0 when absent)."""
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{work / 'studies' / 'mlflow.db'}")
    exp = client.get_experiment_by_name(study)
    runs = client.search_runs([exp.experiment_id], max_results=10000)
    by_id = {r.info.run_id: r.data.metrics.get("forward_passes", 0.0) for r in runs}
    return np.array([by_id.get(t.user_attrs.get("mlflow_run_id"), 0.0) for t in ts], int)


def loop_seconds(ts: list[optuna.trial.FrozenTrial]) -> float:
    return (max(t.datetime_complete for t in ts) - min(t.datetime_start for t in ts)).total_seconds()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--fine-trials", type=int, default=16)
    ap.add_argument("--skip-workers", action="store_true")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="opsef-efficiency-"))
    data = write_data(root / "data")
    conf = root / "conf" / "study"
    conf.mkdir(parents=True)
    conf.joinpath("eff_grid.yaml").write_text(study_yaml("eff_grid", data, {"search": {}}))
    conf.joinpath("eff_staged.yaml").write_text(study_yaml("eff_staged", data, {
        "coarse": {"search": COARSE},
        "fine": {"from": "coarse", "space": "refine", "top_k": 5, "n_trials": args.fine_trials}}))

    work = root / "grid1"
    work.mkdir()
    wall1 = run(work, conf.parent, "study=eff_grid")
    grid = trials(work, "eff_grid", "search")
    best = max(t.value for t in grid)
    grid_passes = int(forward_passes(work, "eff_grid", grid).sum())
    print(f"grid: {len(grid)} pipelines, {grid_passes} forward passes, best GT F1 {best:.4f}, wall {wall1:.1f} s "
          f"(search loop {loop_seconds(grid):.1f} s, {grid_passes / loop_seconds(grid):.2f} forward passes/s), "
          f"1 worker")

    needed = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        work = root / f"staged{seed}"
        work.mkdir()
        wall = run(work, conf.parent, "study=eff_staged", f"seed={seed}")
        order = trials(work, "eff_staged", "coarse") + trials(work, "eff_staged", "fine")
        values = np.array([t.value for t in order])
        # a trial whose labels all came from an earlier identical one (fine's enqueued top-k) ran no model
        ran = np.cumsum([t.user_attrs.get("summary", {}).get("segment_reused", 0) < N_IMAGES for t in order])
        passes = np.cumsum(np.concatenate([forward_passes(work, "eff_staged", trials(work, "eff_staged", st))
                                           for st in ("coarse", "fine")]))
        hit = np.nonzero(values >= 0.99 * best)[0]
        n = int(ran[hit[0]]) if hit.size else None
        f = int(passes[hit[0]]) if hit.size else None
        needed.append(f)
        reached = (f"after {f} forward passes ({f / grid_passes:.0%} of the grid's) and {n} model evaluations "
                   f"({n / len(grid):.0%} of the grid's)" if hit.size else "never")
        print(f"staged seed {seed}: {len(order)} trials, {int(passes[-1])} forward passes, {int(ran[-1])} model "
              f"evaluations, best {values.max():.4f} ({values.max() / best:.1%} of grid best), "
              f"reached 99 % {reached}, wall {wall:.1f} s")
    ok = [n for n in needed if n is not None]
    if ok:
        print(f"staged search: median {np.median(ok):.0f} forward passes to 99 % of the grid's best = "
              f"{np.median(ok) / grid_passes:.0%} of the grid's {grid_passes}, worst {max(ok) / grid_passes:.0%} "
              f"(reached in {len(ok)}/{len(needed)} seeds)")

    if not args.skip_workers:
        work = root / "grid2"
        work.mkdir()
        wall2 = run(work, conf.parent, "study=eff_grid", "n_workers=2")
        grid2 = trials(work, "eff_grid", "search")
        passes2 = int(forward_passes(work, "eff_grid", grid2).sum())
        print(f"grid with n_workers=2: wall {wall2:.1f} s (search loop {loop_seconds(grid2):.1f} s, {passes2} forward "
              f"passes, {passes2 / loop_seconds(grid2):.2f} forward passes/s); speed-up over 1 "
              f"worker: wall {wall1 / wall2:.2f}x, search loop {loop_seconds(grid) / loop_seconds(grid2):.2f}x")
    print(f"(outputs in {root})")


if __name__ == "__main__":
    main()
