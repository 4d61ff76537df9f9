"""The seven OpSeF IV paper studies (conf/study/<name>.yaml): missing data, validation, end-to-end runs.

Each study expects its dataset under ``data/<name>/images`` of the working
directory. Without it the CLI must stop with the study's ``data_source`` text;
pointed at small real stand-in images (``../shared/data``, scikit-image's
bundled images) every study must validate and run its three stages
(coarse grid -> TPE refine -> confirm on all images) through the real CLI.

The studies are looked up through ``hydra.searchpath`` pointing at this
working tree's ``conf/``, so the tests check these files even where the
installed package maps ``opsef_opt.conf`` to another checkout.
"""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
import tifffile
from hydra import compose, initialize_config_module
from optuna.trial import TrialState
from omegaconf import OmegaConf
from skimage import data as skdata
from skimage.color import rgb2gray

from opsef_opt.config import validate
from opsef_opt.io.dataset import load_items
from opsef_opt.resolvers import register_resolvers
from opsef_opt.search.space import grid_points

from conftest import REPO, run_cli, shared

STUDIES = ("cobblestones", "leaves", "nuclei_small", "colon3d", "epithelial", "muscle", "kidney")
SEARCHPATH = f"hydra.searchpath=[file://{REPO / 'conf'}]"
#: model entries that need downloadable weights: optional, so an offline study runs without them
NEEDS_WEIGHTS = ("cellpose", "stardist", "cp_unet")


def _compose(name: str, *overrides: str):
    register_resolvers()
    with initialize_config_module(config_module="opsef_opt.conf", version_base="1.3"):
        return compose(config_name="config", overrides=[f"study={name}", SEARCHPATH, *overrides])


def _documented_commands(name: str) -> list[list[str]]:
    """The `python -m opsef_opt ...` variants written in the study file's comments, as override lists."""
    lines = [ln.lstrip("#").strip() for ln in (REPO / "conf" / "study" / f"{name}.yaml").read_text().splitlines()
             if ln.lstrip().startswith("#")]
    commands, i = [], 0
    while i < len(lines):
        if "python -m opsef_opt " in lines[i]:
            text = lines[i][lines[i].index("python -m opsef_opt "):]
            while text.endswith("\\") and i + 1 < len(lines):
                i += 1
                text = text[:-1] + " " + lines[i]
            args = shlex.split(text)[3:]
            commands.append([a for a in args if not a.startswith("study=")])
        i += 1
    return commands


# ------------------------------------------------------------------ stand-in data


def _gray8(rgb: np.ndarray) -> np.ndarray:
    return (rgb2gray(rgb) * 255).astype(np.uint8)


def _standin(name: str, root: Path, small: bool) -> list[str]:
    """Write stand-in images for study ``name`` under ``root``; return the overrides that point the study there.

    ``small=False``: one full-size image named like OpSeF's training images
    (``Train_*``). ``small=True``: a small ``Train_*`` crop plus a smaller
    ``Test_*`` crop, so every stage runs in seconds and the confirm stage
    (``images: all``) sees one image more than the coarse and fine stages.
    """
    images = root / name / "images"
    images.mkdir(parents=True)
    extra: list[str] = []
    if name == "cobblestones":
        full = skdata.gravel()  # pebbles: the closest bundled image to cobblestones
        parts = {"Train_gravel": full[:192, :192], "Test_gravel": full[256:384, 256:384]}
    elif name == "leaves":
        full = skdata.coins()  # flat objects on a textured ground
        parts = {"Train_coins": full[:160, :192], "Test_coins": full[160:288, 192:320]}
    elif name == "nuclei_small":
        # BBBC038 (DSB 2018) and MitoCheck fluorescent nuclei, with their ground truth
        labels = root / name / "labels"
        labels.mkdir()
        for stem, sub in (("Train_dsb2018", "dsb2018_256"), ("Test_mitocheck", "mitocheck")):
            tifffile.imwrite(images / f"{stem}.tif", tifffile.imread(shared("gt", sub, "image.tif")),
                             photometric="minisblack")
            tifffile.imwrite(labels / f"{stem}.tif", tifffile.imread(shared("gt", sub, "labels.tif")),
                             photometric="minisblack")
        return [f"study.images.folder={images}", f"+study.images.labels.folder={labels}"]
    elif name == "colon3d":
        full = tifffile.imread(shared("raw", "nuclei_3d_stack.tif"))  # Z, Y, X
        parts = {"Train_stack": full[:6, :96, :96], "Test_stack": full[6:9, :64, :64]}
    elif name == "epithelial":
        full = tifffile.imread(shared("raw", "cellprofiler_example_human", "AS_09125_050116030001_D03f00d2.tif"))
        parts = {"Train_cells": full[:192, :192], "Test_cells": full[256:384, 256:384]}
    elif name == "muscle":
        full = _gray8(skdata.immunohistochemistry())  # brightfield tissue, dark nuclei on a bright ground
        parts = {"Train_ihc": full[:256, :256], "Test_ihc": full[256:384, 256:384]}
    elif name == "kidney":
        full = tifffile.imread(shared("raw", "he_example.tif"))  # H&E, Y X RGB
        parts = {"Train_he": full[400:528, 400:656], "Test_he": full[800:928, 800:928]}
        if small:
            extra = ["study.reshape.tile={size: [128, 128]}"]
    else:  # pragma: no cover
        raise KeyError(name)
    if not small:
        parts = {next(iter(parts)): full}
    for stem, img in parts.items():
        tifffile.imwrite(images / f"{stem}.tif", np.ascontiguousarray(img),
                         photometric="rgb" if img.ndim == 3 and img.shape[-1] == 3 else "minisblack")
    return [f"study.images.folder={images}", *extra]


# ------------------------------------------------------------------ 1. missing data


@pytest.mark.parametrize("name", STUDIES)
def test_missing_data_exits_with_the_data_source_and_writes_nothing(tmp_path, name):
    r = run_cli(f"study={name}", SEARCHPATH, cwd=tmp_path, timeout=120)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout, r.stderr
    assert f"study.images.folder='{tmp_path / 'data' / name / 'images'}': folder not found" in r.stderr
    source = OmegaConf.to_container(_compose(name).study, resolve=False)["data_source"]
    assert f"data/{name}/images/*.tif" in source
    for line in source.strip().splitlines():  # the whole data_source text, where it comes from and the layout
        assert line.strip() in r.stderr
    assert list(tmp_path.iterdir()) == []  # no studies/ folder, no Hydra outputs


# ------------------------------------------------------------------ 2. the configs themselves


@pytest.mark.parametrize("name", STUDIES)
def test_study_validates_on_standin_data_with_three_stages(tmp_path, name):
    raw = OmegaConf.to_container(_compose(name).study, resolve=False)
    assert raw["images"]["folder"] == f"data/{name}/images"
    s = validate(_compose(name, *_standin(name, tmp_path, small=False)), base=tmp_path)
    study = s.study
    assert study.name == name and study.description and study.score.objective == "auto"

    stages = {st.name: st for st in study.stages}
    assert list(stages) == ["coarse", "fine", "confirm"]
    coarse, fine, confirm = stages["coarse"], stages["fine"], stages["confirm"]
    assert (coarse.sampler, coarse.space, coarse.images) == ("grid", "same", "train")
    assert (fine.source, fine.space, fine.top_k, fine.sampler, fine.images) == ("coarse", "refine", 5, "tpe", "train")
    assert (confirm.source, confirm.space, confirm.top_k, confirm.images) == ("fine", "top", 3, "all")
    assert study.images.train == ("*Train*",)
    # the coarse budget covers the whole grid when every model is present
    assert s.n_trials == len(grid_points(study.search, 0)) == coarse.n_trials

    models = {m.label: m for m in study.search.models}
    assert models["classical"].family == "classical" and not models["classical"].optional
    assert models["unet"].family == "bioimageio_unet" and not models["unet"].optional
    assert {m.family for m in models.values()} >= {"cellpose", "stardist", "cp_unet"}
    for m in models.values():
        assert m.optional == (m.family in NEEDS_WEIGHTS), m.label
    assert models["cellpose_nuclei"].init["model"] == "nuclei" and models["cellpose_cyto"].init["model"] == "cyto"
    assert models["stardist_dsb2018"].init["model"] == "2D_paper_dsb2018"

    # the stand-in images are read and reshaped as the study says
    items, problems = load_items(study.images, study.reshape, train_only=True)
    assert items and not problems, problems
    assert all(i.name.startswith("Train_") for i in items)


def _labels(s, slot):
    return [o.label for o in s.study.search.preprocess.get(slot, ())]


def test_paper_settings_of_each_study(tmp_path):
    """The settings the paper and its notebooks used, study by study."""
    settings = {}
    for name in STUDIES:
        settings[name] = validate(_compose(name, *_standin(name, tmp_path, small=False)), base=tmp_path)
    scales = {name: {m.label: m.choices.get("scale") for m in s.study.search.models if m.family == "cellpose"}
              for name, s in settings.items()}
    clahe = "clahe(clip_limit=0.012,tile_grid=18)"  # OpenCV clipLimit 3, 18 x 18 tiles
    for name, s in settings.items():
        assert _labels(s, "histogram") == ["none", clahe], name
        if name != "colon3d":
            assert _labels(s, "edges") == ["none", "sobel"] and _labels(s, "invert") == ["none", "invert"], name

    assert scales["cobblestones"]["cellpose_cyto"] == (0.2, 0.4, 0.6)
    assert _labels(settings["cobblestones"], "filter") == ["median(size=3)"]
    assert scales["leaves"]["cellpose_cyto"] == (0.3, 0.5, 0.7)
    assert _labels(settings["leaves"], "filter") == ["median(size=3)", "mean(size=7)"]
    assert scales["nuclei_small"]["cellpose_nuclei"] == (0.2, 0.3, 0.4, 0.6)
    assert "background" not in settings["nuclei_small"].study.search.preprocess

    colon = settings["colon3d"]
    assert colon.study.reshape.substack == 3
    assert _labels(colon, "projection") == ["sum", "max", "median"]
    assert _labels(colon, "filter") == ["none", "median(size=3)", "mean(size=7)"]
    assert scales["colon3d"]["cellpose_nuclei"] == (0.15, 0.25, 0.4, 0.6)
    items, _ = load_items(colon.study.images, colon.study.reshape)
    assert len(items) == 13 and {i.data.shape[0] for i in items} == {3, 1}  # 37 planes -> 12 x 3 + 1

    # runs 1 and 2 of the notebook; membrane stain: Cellpose's cell model, dark on bright: invert
    assert scales["epithelial"]["cellpose_cyto"] == (0.6, 0.8, 1.0, 1.4, 1.8, 2.0, 2.5, 3.0)
    assert scales["epithelial"]["cellpose_nuclei"] == scales["epithelial"]["cellpose_cyto"]

    muscle = settings["muscle"]
    assert muscle.study.reshape.bin == 2 and scales["muscle"]["cellpose_nuclei"] == (0.8, 1.0, 1.2, 1.4)
    items, _ = load_items(muscle.study.images, muscle.study.reshape)
    assert items[0].data.shape == (256, 256)  # 512 x 512 binned 2 x 2

    kidney = settings["kidney"]
    assert kidney.study.reshape.tile_size == (512, 512)
    assert _labels(kidney, "color") == ["stain(stain=hematoxylin)", "stain(stain=eosin)"]
    assert scales["kidney"]["cellpose_nuclei"] == (0.6, 0.8, 1.0, 1.4, 1.8)
    assert {m.init.get("model") for m in kidney.study.search.models if m.family == "stardist"} == {
        "2D_paper_dsb2018", "2D_versatile_fluo"}
    items, _ = load_items(kidney.study.images, kidney.study.reshape)
    assert len(items) == 9 and all(i.axes == "YXC" and i.data.shape == (512, 512, 3) for i in items)


@pytest.mark.parametrize("name", ["muscle", "nuclei_small", "kidney"])
def test_documented_variants_validate(tmp_path, name):
    """The variant commands written in the study files' comments (binning, RGB StarDist) are valid."""
    commands = _documented_commands(name)
    assert commands, f"no documented variant in {name}.yaml"
    for i, args in enumerate(commands):
        s = validate(_compose(name, *args, *_standin(name, tmp_path / str(i), small=False)), base=tmp_path)
        assert s.study.name != name  # a variant is its own study
    if name == "muscle":
        assert s.study.reshape.bin == 1
        assert next(m for m in s.study.search.models if m.label == "cellpose_nuclei").choices["scale"] == (0.2, 0.4, 0.6)


# ------------------------------------------------------------------ 3. end to end


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """One working directory for the end-to-end runs: they share studies/ (and its MLflow store), as a user would."""
    return tmp_path_factory.mktemp("paper_studies")


@pytest.mark.slow
@pytest.mark.parametrize("name", STUDIES)
def test_study_runs_end_to_end_on_standin_data(workdir, name):
    overrides = _standin(name, workdir / "standin", small=True)
    r = run_cli(
        f"study={name}", SEARCHPATH, *overrides,
        "n_trials=3",                                                 # coarse: 3 points of the grid
        "study.stages.fine.top_k=1", "study.stages.fine.n_trials=2",  # the coarse best + 1 TPE proposal
        "study.stages.confirm.top_k=1",                               # the fine best on all images
        cwd=workdir, timeout=180,
    )
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert "Traceback" not in out
    results = workdir / "studies" / name
    for stage in ("coarse", "fine", "confirm"):
        assert stage in set(pd.read_csv(results / "leaderboard.csv")["stage"]), stage
        assert (results / f"best_{stage}.yaml").is_file(), stage
    assert (results / "best.yaml").is_file()
    storage = f"sqlite:///{results / 'optuna.db'}"
    finished = {}
    for stage in ("coarse", "fine", "confirm"):
        trials = optuna.load_study(study_name=f"{name}/{stage}", storage=storage).get_trials(
            states=(TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED))
        # no pipeline of the study fails on its kind of image (e.g. RGB without a colour step)
        assert all(t.state == TrialState.COMPLETE for t in trials), (stage, [t.state for t in trials])
        finished[stage] = len(trials)
    assert finished == {"coarse": 3, "fine": 2, "confirm": 1}
    # the coarse and fine stages search the Train_ image, confirm adds the Test_ one
    n_items = {st: int(re.search(rf"stage {name}/{st}: (\d+) images/items", out).group(1))
               for st in ("coarse", "fine", "confirm")}
    assert n_items["coarse"] == n_items["fine"] < n_items["confirm"], n_items
    if name == "nuclei_small":
        assert "objective gt_f1" in out  # every stand-in image has ground truth


@pytest.mark.parametrize("name", STUDIES)
def test_paper_study_composes_the_shared_stage_recipe_and_model_set(name):
    """The stages and model definitions come from conf/stages and conf/models; the study adds its sizes."""
    import yaml

    composed = OmegaConf.to_container(_compose(name).study, resolve=False)
    recipe = yaml.safe_load((REPO / "conf" / "stages" / "coarse_fine_confirm.yaml").read_text())
    assert composed["stages"] == recipe
    models = yaml.safe_load((REPO / "conf" / "models" / "opsef_paper.yaml").read_text())
    for key, entry in models.items():
        got = composed["search"]["models"][key]
        assert got.get("family") == entry.get("family") and got.get("init") == entry.get("init"), key
    own = yaml.safe_load((REPO / "conf" / "study" / f"{name}.yaml").read_text())
    assert "stages" not in own  # stated once, in the recipe
    assert composed["search"]["models"]["classical"]["params"]["min_distance"] == \
        own["search"]["models"]["classical"]["params"]["min_distance"]

