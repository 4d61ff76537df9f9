"""The configs travel with the package: a non-editable install runs the demo from any directory."""
from __future__ import annotations

import subprocess
import sys
import venv

import pytest

from conftest import REPO

pytestmark = pytest.mark.slow


def test_non_editable_install_runs_demo_from_another_directory(tmp_path):
    env_dir = tmp_path / "venv"
    # reuse the dependencies already installed; only opsef-opt itself is built and installed
    venv.EnvBuilder(system_site_packages=True, with_pip=True).create(env_dir)
    py = env_dir / "bin" / "python"
    build = subprocess.run(
        [str(py), "-m", "pip", "install", "--no-deps", "-q", str(REPO)],
        capture_output=True, text=True, timeout=300,
    )
    assert build.returncode == 0, build.stderr
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = subprocess.run([str(py), "-c", "import opsef_opt, sys; print(opsef_opt.__file__)"],
                           cwd=elsewhere, capture_output=True, text=True)
    assert str(env_dir) in where.stdout, where.stdout  # the installed copy, not the checkout
    r = subprocess.run([str(env_dir / "bin" / "opsef-opt"), "n_trials=2"], cwd=elsewhere,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "study demo/search" in r.stdout
    assert (elsewhere / "studies" / "demo" / "leaderboard.csv").is_file()
    assert not (elsewhere / "outputs").exists()  # Hydra writes no output folders
    assert sys.executable  # the test itself ran with the dev environment
