"""`python -m opsef_opt.train` trains a model on a folder of images + labels and prints where it is."""
from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import DEMO

pytestmark = pytest.mark.slow


def test_train_cellpose_cli_writes_a_model_the_adapter_loads(tmp_path):
    out = tmp_path / "model"
    r = subprocess.run(
        [sys.executable, "-m", "opsef_opt.train", "cellpose", "--images", str(DEMO / "images"),
         "--labels", str(DEMO / "labels"), "--out", str(out), "--epochs", "2"],
        capture_output=True, text=True, timeout=600,
    )
    assert r.returncode == 0, r.stderr
    path = r.stdout.split("trained cellpose model: ")[1].splitlines()[0].strip()
    from opsef_opt.segment import SEGMENTERS

    ok, reason = SEGMENTERS.get("cellpose").availability(model=path)
    assert ok, reason


def test_train_cli_without_pairs_says_so(tmp_path):
    (tmp_path / "labels").mkdir()
    r = subprocess.run(
        [sys.executable, "-m", "opsef_opt.train", "stardist", "--images", str(DEMO / "images"),
         "--labels", str(tmp_path / "labels"), "--out", str(tmp_path / "m")],
        capture_output=True, text=True, timeout=300,
    )
    assert r.returncode != 0 and "no image/label pairs found" in r.stderr
