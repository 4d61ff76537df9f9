"""A stage's contact sheets from its stored labels: every image in a section, best trials first."""
from __future__ import annotations

import numpy as np
import optuna
import tifffile
from PIL import Image

from opsef_opt.figures.decision import SheetLayout
from opsef_opt.io.dataset import Item
from opsef_opt.search.pool import LabelStore
from opsef_opt.search.sheets import IMAGES_PER_SHEET, TOP, grid_path, stage_contact_sheet, written_sheets
from opsef_opt.track.contact_sheet import grid_shape

from conftest import DEMO


def test_every_image_gets_a_section_and_the_best_trials_come_first(tmp_path):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    image = tifffile.imread(DEMO / "images" / "dsb2018_256.tif")
    truth = tifffile.imread(DEMO / "labels" / "dsb2018_256.tif").astype(np.int32)
    n_images = IMAGES_PER_SHEET + 1  # one more than a sheet holds: a second sheet
    items = [Item(f"img{i}", f"img{i}", np.roll(image, 9 * i, axis=1), "YX", np.roll(truth, 9 * i, axis=1),
                  "demo", f"fp{i}") for i in range(n_images)]
    study = optuna.create_study(study_name="demo/coarse", direction="maximize")
    store = LabelStore(tmp_path / "labels")
    for n in range(TOP + 2):  # 8 trials: the 6 best are drawn
        labels = {it.name: np.where(np.arange(256)[None, :] < 256 - 20 * n, it.truth, 0) for it in items}
        store.save(n, labels, {k: {"n_objects": int(v.max()), "gt.f1": 1.0 - n / 10} for k, v in labels.items()})
        study.add_trial(optuna.trial.create_trial(
            value=1.0 - n / 10, params={}, distributions={},
            user_attrs={"summary": {"pipeline": f"p{n}", "preprocess": f"pre{n % 2}", "setting": f"s{n // 2}",
                                    "gt.f1": 1.0 - n / 10}, "mlflow_run_id": f"r{n}"}))
    path = tmp_path / "sheets" / "coarse.png"
    assert stage_contact_sheet(study, store, items, {}, {"r0": "correct"}, path) == path
    first = np.asarray(Image.open(path))
    second = np.asarray(Image.open(path.with_name("coarse_2.png")))
    # ground-truth row + the 6 best trials; 6 image sections, then the 7th image on the second sheet
    assert first.shape == (*SheetLayout(1 + TOP, IMAGES_PER_SHEET, legend=True).shape, 3)
    assert second.shape[0] == first.shape[0] and second.shape[1] < first.shape[1]
    # the grid of all 8 candidates: 2 preprocessings x 4 settings
    assert np.asarray(Image.open(grid_path(path))).shape == (*grid_shape(2, 4), 3)
    assert written_sheets(path) == [path, path.with_name("coarse_2.png"), grid_path(path)]
    # fewer images later: the stale second sheet goes
    assert stage_contact_sheet(study, store, items[:2], {}, {}, path) == path
    assert written_sheets(path) == [path, grid_path(path)]
