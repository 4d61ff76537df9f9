"""The stage's candidate segmentations on disk, and their consensus per image.

Every completed trial's label images are kept under
``<study>/labels/<stage>/trial-NNNNN.npz``: the consensus proxy compares a
candidate with the majority of the others, the end-of-stage rescoring and the
contact sheet read them back, and several worker processes share them
through the file system.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Mapping

import numpy as np

from opsef_opt.score.proxies import ConsensusAccumulator

__all__ = ["LabelStore", "ConsensusPool"]

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


class ConsensusPool:
    """Per-image vote accumulators over the stored candidates, refreshed incrementally."""

    def __init__(self, store: LabelStore) -> None:
        self.store = store
        self.acc: dict[str, ConsensusAccumulator] = {}
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.seen: set[int] = set()

    def refresh(self) -> None:
        """Add the candidates stored since the last call (by this or another worker)."""
        for t in self.store.trials():
            if t in self.seen:
                continue
            try:
                labels = self.store.load(t)
            except (OSError, ValueError, KeyError):
                continue  # being written or damaged: skip it
            self.seen.add(t)
            for name, lab in labels.items():
                shape = self.shapes.setdefault(name, lab.shape)
                if lab.shape == shape:
                    self.acc.setdefault(name, ConsensusAccumulator(shape)).add(lab)

    def consensus(self, name: str, exclude: np.ndarray | None = None) -> np.ndarray | None:
        """Consensus of the stored candidates on image ``name`` (minus ``exclude``), or None when too few."""
        acc = self.acc.get(name)
        if acc is None or acc.n - (exclude is not None) < MIN_CANDIDATES:
            return None
        if exclude is not None and exclude.shape != self.shapes[name]:
            return None
        return acc.labels(exclude=exclude)
