"""A short run of ``bench/soak.py``: kill -9 at first start and mid-trial, then the same command resumes."""
from __future__ import annotations

import re
import subprocess
import sys

import pytest

from conftest import REPO, TEST_CONF

pytestmark = pytest.mark.slow


def test_short_soak_resumes_to_the_uninterrupted_answer(tmp_path):
    r = subprocess.run(
        [sys.executable, str(REPO / "bench" / "soak.py"), "--study", "tiny", "--start-cycles", "2",
         "--start-window", "5", "--start-trials", "3", "--mid-cycles", "3", "--mid-window", "0.5", "--trials", "6",
         "--keep", str(tmp_path / "soak"), f"hydra.searchpath=[file://{TEST_CONF}]"],
        capture_output=True, text=True, timeout=900, cwd=tmp_path,
    )
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert "first-start kills: 2" in out and "restarts that failed: 0" in out
    assert "resumed studies equal to the uninterrupted one: 2/2" in out
    kills = re.search(r"mid-trial kills \(final resume exit 0\): (\d+) kills", out)
    assert kills and int(kills.group(1)) >= 2, out  # fewer only when the study ended first (a fast machine)
    assert "left RUNNING 0" in out and "duplicate pipelines 0" in out and "mapping errors 0" in out
    assert "SAME" in out and "soak PASSED" in out
