"""Shared fixtures: paths to real data and a helper that runs the real CLI."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
DEMO = REPO / "opsef_opt" / "data" / "demo"
TEST_CONF = Path(__file__).resolve().parent / "conf"


def shared(*parts: str) -> Path:
    """Path under ../shared/data, skipping the test (with the reason) when it is absent."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        if os.environ.get("CI"):
            raise FileNotFoundError(f"{path} is missing in CI: ../shared/data must be present")
        pytest.skip(f"../shared/data not found ({path}); it holds the real test images")
    return path


def copy_database(src: Path, dst: Path) -> None:
    """Copy a live SQLite database (WAL mode: its newest pages are in ``<name>-wal`` until a checkpoint)."""
    import sqlite3

    with sqlite3.connect(src) as a, sqlite3.connect(dst) as b:
        a.backup(b)


def run_cli(*args: str, cwd: Path, timeout: float = 300, env: dict | None = None,
            input: str | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m opsef_opt ARGS`` in a subprocess, as a user would (``input`` is typed on stdin)."""
    return subprocess.run(
        [sys.executable, "-m", "opsef_opt", *args],
        cwd=cwd, capture_output=True, text=True, timeout=timeout, input=input,
        env={**os.environ, **(env or {})},
    )


def popen_cli(*args: str, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "opsef_opt", *args],
        cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


@pytest.fixture(scope="session")
def ihc():
    """Real brightfield RGB (haematoxylin + DAB) from scikit-image, uint8 512 x 512 x 3."""
    from skimage import data

    return data.immunohistochemistry()


def randomize_cp_unet(model, seed: int = 0) -> None:
    """Deterministic random weights for the cp_unet network (sane BatchNorm statistics, a varied head)."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        ws = layer.get_weights()
        if not ws:
            continue
        if type(layer).__name__ == "BatchNormalization":
            g, b, mu, var = (w.shape for w in ws)
            new = [rng.uniform(0.8, 1.2, g), rng.normal(0, 0.1, b), rng.normal(0, 0.1, mu), rng.uniform(0.5, 1.5, var)]
        else:
            kernel, bias = ws
            fan_in = int(np.prod(kernel.shape[:-1]))
            std = 3.0 if layer.name == "classes" else np.sqrt(2.0 / fan_in)
            new = [rng.normal(0, std, kernel.shape), rng.normal(0, 0.05, bias.shape)]
        layer.set_weights([w.astype(np.float32) for w in new])
