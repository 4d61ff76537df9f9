"""The ``Examples`` sections of the package's docstrings run, and show what they claim.

Every module under ``opsef_opt/`` whose source holds a ``>>>`` prompt is run with the
standard library's :mod:`doctest`; a module must run at least one example, so a module
whose examples are all skipped (or not found) fails instead of passing vacuously.
"""
from __future__ import annotations

import doctest
import importlib
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "opsef_opt"

#: modules whose examples train a (tiny) network: seconds to tens of seconds each
SLOW = {"opsef_opt.train.cellpose_train", "opsef_opt.train.stardist_train"}
#: optional packages a module's examples need (skipped without them)
NEEDS = {
    "opsef_opt.train.cellpose_train": ("cellpose", "stardist"),  # stardist: its bundled test image
    "opsef_opt.train.stardist_train": ("stardist",),
}


def _modules_with_examples() -> list[str]:
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if ">>>" not in path.read_text(encoding="utf-8"):
            continue
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        out.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return out


MODULES = _modules_with_examples()


def test_the_examples_are_found():
    assert len(MODULES) >= 10, MODULES
    assert SLOW <= set(MODULES), f"SLOW names modules without examples: {SLOW - set(MODULES)}"
    assert set(NEEDS) <= set(MODULES), f"NEEDS names modules without examples: {set(NEEDS) - set(MODULES)}"


@pytest.mark.parametrize(
    "name", [pytest.param(m, marks=pytest.mark.slow) if m in SLOW else m for m in MODULES]
)
def test_docstring_examples(name, tmp_path, monkeypatch):
    for package in NEEDS.get(name, ()):
        pytest.importorskip(package)
    monkeypatch.chdir(tmp_path)  # an example that writes a file by mistake writes it here, not into the repo
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE,
                             verbose=False, report=True)
    assert result.attempted >= 1, f"{name}: its source has '>>>' but doctest ran no example"
    assert result.failed == 0, f"{name}: {result.failed} of {result.attempted} examples failed (see the output)"
    assert list(tmp_path.iterdir()) == [], f"{name}: its examples left files in the working directory"
