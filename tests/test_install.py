"""The configs travel with the package: a non-editable install runs the demo from any directory."""
from __future__ import annotations

import json
import os
import site
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from conftest import REPO

pytestmark = pytest.mark.slow


def _running_site_dirs() -> list[str]:
    """The site-packages folders of the interpreter running the tests, where the dependencies are.

    Works for the system interpreter and for a virtual environment (``site`` reports the
    venv's own site-packages there, plus the base interpreter's only when the venv was made
    with ``--system-site-packages``; user site-packages are off inside a venv).
    """
    dirs = list(site.getsitepackages())
    if site.ENABLE_USER_SITE:
        dirs.append(site.getusersitepackages())
    return [d for d in dict.fromkeys(dirs) if os.path.isdir(d)]


def _inner(py: Path, code: str, cwd: Path) -> dict:
    r = subprocess.run([str(py), "-c", code], cwd=cwd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    return json.loads(r.stdout)


def test_non_editable_install_runs_demo_from_another_directory(tmp_path):
    env_dir = tmp_path / "venv"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # A venv of its own (not system_site_packages=True: that sees the *base* interpreter's
    # packages, which lack the dependencies when the tests run in a virtual environment).
    # It reuses the running interpreter's dependencies through a .pth file; only opsef-opt
    # itself is built and installed into it.
    venv.EnvBuilder(system_site_packages=False, with_pip=True).create(env_dir)
    py = env_dir / "bin" / "python"
    inner_site = _inner(py, "import json, sysconfig; print(json.dumps(sysconfig.get_path('purelib')))",
                        cwd=elsewhere)
    outer_sites = _running_site_dirs()
    assert outer_sites, "the running interpreter has no site-packages folder"
    # plain paths (no site.addsitedir): the outer environment's own .pth files, e.g. the
    # editable install of this checkout, are not processed in the new venv
    Path(inner_site, "_running_interpreter_site.pth").write_text("\n".join(outer_sites) + "\n")

    build = subprocess.run(
        # --ignore-installed: the outer (editable) opsef-opt is visible through the .pth and
        # must be neither uninstalled nor taken as already satisfying the requirement
        [str(py), "-m", "pip", "install", "--no-deps", "--ignore-installed", "-q", str(REPO)],
        capture_output=True, text=True, timeout=300,
    )
    assert build.returncode == 0, build.stdout + build.stderr

    where = _inner(py, "import json, sys, opsef_opt, hydra, importlib.metadata as md; print(json.dumps("
                       "{'prefix': sys.prefix, 'opsef_opt': opsef_opt.__file__, 'hydra': hydra.__file__,"
                       " 'dist': str(md.distribution('opsef-opt').locate_file(''))}))", cwd=elsewhere)
    assert Path(where["prefix"]).resolve() == env_dir.resolve()
    installed = Path(where["opsef_opt"]).resolve()
    # the installed copy in the new venv's site-packages, not the checkout
    assert installed.is_relative_to(Path(inner_site).resolve()), where
    assert not installed.is_relative_to(REPO), where
    assert Path(where["dist"]).resolve() == Path(inner_site).resolve(), where
    # the dependencies come from the running interpreter's environment
    assert any(Path(where["hydra"]).resolve().is_relative_to(Path(d).resolve()) for d in outer_sites), \
        (where, outer_sites)

    r = subprocess.run([str(env_dir / "bin" / "opsef-opt"), "n_trials=2"], cwd=elsewhere,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "study demo/search" in r.stdout
    assert (elsewhere / "studies" / "demo" / "leaderboard.csv").is_file()
    assert not (elsewhere / "outputs").exists()  # Hydra writes no output folders
