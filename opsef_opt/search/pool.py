"""The stage's candidate segmentations on disk, and their consensus per image.

Every completed trial's label images are kept under
``<study>/labels/<stage>/trial-NNNNN.npz``: the consensus proxy compares a
candidate with the majority of the others, the end-of-stage rescoring and the
contact sheet read them back, and several worker processes share them
through the file system.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Mapping

import numpy as np

from opsef_opt.config import ScoreSpec
from opsef_opt.score.proxies import ConsensusAccumulator, combine

__all__ = ["LabelStore", "ConsensusPool", "plausibility"]

#: a consensus needs at least this many other candidates to mean anything
MIN_CANDIDATES = 3


class LabelStore:
    """One compressed ``.npz`` per trial with its label image per item."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def path(self, trial: int) -> Path:
        return self.folder / f"trial-{trial:05d}.npz"

    def save(self, trial: int, labels: Mapping[str, np.ndarray],
             metrics: Mapping[str, Mapping[str, float]] | None = None) -> Path:
        """Write the labels (and the per-image metrics) atomically: a reader never sees half a file."""
        self.folder.mkdir(parents=True, exist_ok=True)
        names = list(labels)
        arrays = {}
        for i, name in enumerate(names):
            lab = np.asarray(labels[name])
            arrays[f"l{i}"] = lab.astype(np.uint16) if lab.max(initial=0) < 65535 else lab.astype(np.int32)
        target = self.path(trial)
        tmp = target.with_suffix(f".tmp{os.getpid()}.npz")
        np.savez_compressed(tmp, names=np.array(names), metrics=np.array(json.dumps(metrics or {})), **arrays)
        os.replace(tmp, target)
        return target

    def trials(self) -> list[int]:
        if not self.folder.is_dir():
            return []
        return sorted(int(p.stem.split("-")[1]) for p in self.folder.glob("trial-*.npz") if ".tmp" not in p.name)

    def load(self, trial: int) -> dict[str, np.ndarray]:
        with np.load(self.path(trial)) as z:
            return {str(n): z[f"l{i}"].astype(np.int32) for i, n in enumerate(z["names"])}

    def load_metrics(self, trial: int) -> dict[str, dict[str, float]]:
        """The per-image metrics stored with the labels."""
        with np.load(self.path(trial)) as z:
            return json.loads(str(z["metrics"])) if "metrics" in z else {}


def plausibility(metrics: Mapping[str, float], spec: ScoreSpec) -> float:
    """A candidate's combined proxy score *without* consensus (what makes it a credible voter)."""
    weights = {k: w for k, w in spec.weights.items() if k != "consensus"}
    values = {k: float(metrics.get(f"proxy.{k}", math.nan)) for k in weights}
    if spec.gate:
        values[spec.gate] = float(metrics.get(f"proxy.{spec.gate}", math.nan))
    return combine(values, weights, spec.gate)


class ConsensusPool:
    """The per-image majority of the *plausible half* of the stage's stored candidates.

    A study's candidates are deliberately diverse, and many of them are poor
    (a threshold that merges everything, a watershed that splits every
    nucleus); a plain majority of all of them is pulled towards their
    errors. Only candidates whose other proxies combined (see
    :func:`plausibility`) are at or above the median of the pool vote.
    As candidates arrive the median moves; votes are added and withdrawn
    incrementally, reading the stored labels of only the candidates that
    enter or leave. ``bench/proxy_validity.py`` compares this with the
    majority of all candidates.
    """

    def __init__(self, store: LabelStore, spec: ScoreSpec) -> None:
        self.store = store
        self.spec = spec
        self.acc: dict[str, ConsensusAccumulator] = {}
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.scores: dict[str, dict[int, float]] = {}  # image -> trial -> plausibility
        self.members: dict[str, set[int]] = {}  # image -> trials voting now
        self.seen: set[int] = set()

    def refresh(self) -> None:
        """Take in the candidates stored since the last call (by this or another worker)."""
        changed = False
        for t in self.store.trials():
            if t in self.seen:
                continue
            try:
                metrics = self.store.load_metrics(t)
                labels = self.store.load(t)
            except (OSError, ValueError, KeyError):
                continue  # being written or damaged: skip it
            self.seen.add(t)
            for name, lab in labels.items():
                if self.shapes.setdefault(name, lab.shape) == lab.shape:
                    self.scores.setdefault(name, {})[t] = plausibility(metrics.get(name, {}), self.spec)
                    changed = True
        if changed:
            self._rebalance()

    def _rebalance(self) -> None:
        loaded: dict[int, dict[str, np.ndarray]] = {}

        def labels_of(t: int, name: str) -> np.ndarray:
            if t not in loaded:
                loaded[t] = self.store.load(t)
            return loaded[t][name]

        for name, scores in self.scores.items():
            cut = float(np.median(list(scores.values())))
            target = {t for t, v in scores.items() if v >= cut}
            members = self.members.setdefault(name, set())
            acc = self.acc.setdefault(name, ConsensusAccumulator(self.shapes[name]))
            for t in sorted(members - target):
                acc.remove(labels_of(t, name))
                members.discard(t)
            for t in sorted(target - members):
                acc.add(labels_of(t, name))
                members.add(t)

    def consensus(self, name: str, trial: int | None = None) -> np.ndarray | None:
        """Consensus on image ``name`` of the voting candidates other than ``trial``; None when too few."""
        acc = self.acc.get(name)
        if acc is None:
            return None
        voting = trial is not None and trial in self.members[name]
        if acc.n - voting < MIN_CANDIDATES:
            return None
        return acc.labels(exclude=self.store.load(trial)[name] if voting else None)
