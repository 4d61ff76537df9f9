"""Several workers against a real PostgreSQL server, as several machines would share a study.

CI starts the server (.ci/postgres.sh) and sets OPSEF_TEST_POSTGRES; locally:
``OPSEF_TEST_POSTGRES=$(bash .ci/postgres.sh start) python -m pytest tests/test_postgres.py``.
"""
from __future__ import annotations

import collections
import os
import uuid

import optuna
import pytest

from conftest import TEST_CONF, run_cli

pytestmark = pytest.mark.slow

URL = os.environ.get("OPSEF_TEST_POSTGRES")


@pytest.fixture
def postgres() -> str:
    if not URL:
        if os.environ.get("CI"):
            raise RuntimeError("OPSEF_TEST_POSTGRES is not set in CI: .ci/run must start the PostgreSQL server")
        pytest.skip("no PostgreSQL server (set OPSEF_TEST_POSTGRES, see the module docstring)")
    return URL


def test_two_workers_share_a_study_on_postgresql_and_resume_adds_nothing(tmp_path, postgres):
    name = f"pg_{uuid.uuid4().hex[:8]}"  # the server outlives the test: a fresh study each time
    args = ["study=tiny", f"hydra.searchpath=[file://{TEST_CONF}]", f"study.name={name}", f"storage={postgres}",
            "+study.reshape.tile={size: [96, 96]}", "n_workers=2"]
    r = run_cli(*args, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    study = optuna.load_study(study_name=f"{name}/search", storage=postgres)
    complete = [t for t in study.get_trials() if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 6
    points = collections.Counter(tuple(sorted(t.params.items())) for t in complete)
    assert len(points) == 6 and max(points.values()) == 1
    assert len({t.user_attrs["worker"] for t in complete}) == 2
    assert not (tmp_path / "studies" / name / "optuna.db").exists()  # the storage really is the server

    r = run_cli(*args, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert len(optuna.load_study(study_name=f"{name}/search", storage=postgres).get_trials()) == len(study.get_trials())
