"""The stored candidate segmentations, and their consensus per image.

Every completed trial's label images are kept under
``<study>/labels/<stage>/trial-NNNNN.npz``: the consensus proxy compares a
candidate with the majority of the others, the end-of-stage rescoring and the
contact sheet read them back, and several worker processes share them
through the file system.

The pool (:class:`ConsensusPool`) reads one stage's store (during the search)
or every stage's store of the study (the final rescoring, so that a pipeline
scores the same in every stage). Per image it

1. treats identical label images as one candidate (the same pipeline
   evaluated in two stages, or again after an interruption);
2. groups near-duplicates into *families* (see
   :mod:`opsef_opt.score.proxies.consensus`): each family has one vote,
   shared among its voting members; a candidate does not vote for itself;
3. lets only the plausible half vote (candidates whose other proxies,
   combined, are at or above the median), minus size outliers (median object
   area more than :data:`SIZE_FACTOR` times above or below the typical
   candidate's: see :meth:`ConsensusPool.size_ok`).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from opsef_opt.config import ScoreSpec
from opsef_opt.score.proxies import ConsensusAccumulator, combine
from opsef_opt.score.proxies.consensus import (FAMILY_AGREEMENT, WEIGHT_UNIT, ObjectSignature, object_agreement,
                                               object_signature)

__all__ = ["LabelStore", "ConsensusPool", "plausibility", "labels_digest", "MIN_FAMILIES", "SETTLED_FAMILIES",
           "SIZE_FACTOR"]

#: a consensus needs at least this many other voting families to mean anything (a majority of three is
#: the smallest where no single family's error decides)
MIN_FAMILIES = 3
#: kept for callers of the earlier name (families are what counts now)
MIN_CANDIDATES = MIN_FAMILIES
#: below this many voting families a trial's consensus during the search is too noisy to print as its
#: score: the progress line shows the score without consensus (a majority of five is the smallest where
#: two families sharing an error cannot decide)
SETTLED_FAMILIES = 5
#: a candidate whose median object area is more than this factor above or below the median of the
#: plausible candidates' median areas (same image) is implausible. A prior, not fitted: two segmentations
#: of the same nuclei differ in median area by boundary placement (a pixel on the radius of a 5-pixel
#: nucleus is 1.4x in area) and by systematic splits or merges (2-4x); nuclei of one sample vary about
#: 2-4x in area. A factor of 10 (3.2x in diameter) is beyond all of these together: such objects are
#: something else (texture specks, background fragments, clumps or tissue regions of ten nuclei).
SIZE_FACTOR = 10.0


def labels_digest(labels: np.ndarray) -> str:
    """Identity of a label image (shape and ids): identical segmentations are one candidate."""
    lab = np.ascontiguousarray(labels, dtype=np.int32)
    h = hashlib.blake2b(digest_size=16)
    h.update(str(lab.shape).encode())
    h.update(lab.data)
    return h.hexdigest()


class LabelStore:
    """One compressed ``.npz`` per trial with its label image per item.

    The last few trials saved by this process are also kept in memory: the
    consensus pool reads each new trial right after it was saved, and
    decompressing it again cost ~10 ms per trial on the demo.
    """

    #: trials saved by this process that are read back from memory
    RECENT = 4

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self._recent: OrderedDict[int, tuple[dict[str, np.ndarray], str]] = OrderedDict()

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
        text = json.dumps(metrics or {})
        np.savez_compressed(tmp, names=np.array(names), metrics=np.array(text), **arrays)
        os.replace(tmp, target)
        self._recent[trial] = ({n: arrays[f"l{i}"].astype(np.int32) for i, n in enumerate(names)}, text)
        self._recent.move_to_end(trial)
        while len(self._recent) > self.RECENT:
            self._recent.popitem(last=False)
        return target

    def trials(self) -> list[int]:
        if not self.folder.is_dir():
            return []
        return sorted(int(p.stem.split("-")[1]) for p in self.folder.glob("trial-*.npz") if ".tmp" not in p.name)

    def load(self, trial: int) -> dict[str, np.ndarray]:
        if trial in self._recent:  # as stored (the same dtype conversion), without reading the file
            return {n: lab.copy() for n, lab in self._recent[trial][0].items()}
        with np.load(self.path(trial)) as z:
            return {str(n): z[f"l{i}"].astype(np.int32) for i, n in enumerate(z["names"])}

    def load_one(self, trial: int, name: str) -> np.ndarray:
        """One image's labels of a trial (decompresses only that image)."""
        with np.load(self.path(trial)) as z:
            names = [str(n) for n in z["names"]]
            return z[f"l{names.index(name)}"].astype(np.int32)

    def load_metrics(self, trial: int) -> dict[str, dict[str, float]]:
        """The per-image metrics stored with the labels."""
        if trial in self._recent:
            return json.loads(self._recent[trial][1])
        with np.load(self.path(trial)) as z:
            return json.loads(str(z["metrics"])) if "metrics" in z else {}

    def fingerprint(self) -> list[tuple[int, int, int]]:
        """``(trial, size, mtime_ns)`` of every stored file: changes whenever a candidate is added or rewritten."""
        out = []
        for t in self.trials():
            try:
                st = self.path(t).stat()
            except OSError:
                continue
            out.append((t, st.st_size, st.st_mtime_ns))
        return out


def plausibility(metrics: Mapping[str, float], spec: ScoreSpec) -> float:
    """A candidate's combined proxy score *without* consensus (what makes it a credible voter)."""
    weights = {k: w for k, w in spec.weights.items() if k != "consensus"}
    values = {k: float(metrics.get(f"proxy.{k}", math.nan)) for k in weights}
    if spec.gate:
        values[spec.gate] = float(metrics.get(f"proxy.{spec.gate}", math.nan))
    if "proxy.plausible" in metrics and "plausible" not in values:  # the per-image checks, where logged
        values["plausible"] = float(metrics["proxy.plausible"])
    return combine(values, weights, spec.gate)


@dataclass
class _Candidate:
    key: str  # labels_digest
    where: tuple[int, int]  # (store index, trial) its labels are read from
    plausibility: float
    sig: ObjectSignature
    family: int = -1


@dataclass
class _Family:
    leader: str  # key of the member new candidates are compared with (the first, most plausible one)
    members: list[str] = field(default_factory=list)


@dataclass
class _Image:
    shape: tuple[int, ...]
    acc: ConsensusAccumulator
    cands: dict[str, _Candidate] = field(default_factory=dict)
    sources: dict[tuple[int, int], str] = field(default_factory=dict)  # (store, trial) -> key
    families: list[_Family] = field(default_factory=list)
    weights: dict[str, int] = field(default_factory=dict)  # key -> weight its votes are in acc with
    reference_area: float = math.nan


class ConsensusPool:
    """Per image: the majority, one vote per family, of the plausible stored candidates.

    Parameters
    ----------
    stores : the label store of a stage, or several (every stage of a
        study); a ``trial`` number given to :meth:`consensus` refers to the
        first.
    spec : the study's scoring (weights of the other proxies: plausibility).
    family_agreement : object agreement at which two candidates are near-duplicates (one family);
        default :data:`~opsef_opt.score.proxies.consensus.FAMILY_AGREEMENT`. ``bench/proxy_validity.py``
        varies it to choose the default by leave-one-dataset-out.

    A study's candidates are deliberately diverse, and many of them are poor
    (a threshold that merges everything, a watershed that splits every
    nucleus); a plain majority of all of them is pulled towards their
    errors, and a majority counted per candidate is won by whichever idea
    the search space repeats most. Only the plausible half votes (see
    :func:`plausibility`), near-duplicates share one vote per family, and
    size outliers do not vote. As candidates arrive the median moves and
    families grow; votes are added, re-weighted and withdrawn incrementally,
    reading the stored labels of only the candidates whose weight changes.
    ``bench/proxy_validity.py`` compares this with the majority of all
    candidates.
    """

    def __init__(self, stores: LabelStore | Sequence[LabelStore], spec: ScoreSpec,
                 family_agreement: float | None = None) -> None:
        self.stores: list[LabelStore] = [stores] if isinstance(stores, LabelStore) else list(stores)
        if not self.stores:
            raise ValueError("ConsensusPool needs at least one label store")
        self.family_agreement = FAMILY_AGREEMENT if family_agreement is None else float(family_agreement)
        if not 0.0 < self.family_agreement <= 1.0:
            raise ValueError(f"family_agreement must be in (0, 1], got {family_agreement}")
        self.store = self.stores[0]
        self.spec = spec
        self.images: dict[str, _Image] = {}
        self.seen: set[tuple[int, int]] = set()

    # ------------------------------------------------------------------ building
    def refresh(self) -> None:
        """Take in the candidates stored since the last call (by this or another worker, or stage)."""
        new: dict[str, list[_Candidate]] = {}
        for si, store in enumerate(self.stores):
            for t in store.trials():
                if (si, t) in self.seen:
                    continue
                try:
                    metrics = store.load_metrics(t)
                    labels = store.load(t)
                except (OSError, ValueError, KeyError):
                    continue  # being written or damaged: skip it
                self.seen.add((si, t))
                for name, lab in labels.items():
                    img = self.images.get(name)
                    if img is None:
                        img = self.images[name] = _Image(lab.shape, ConsensusAccumulator(lab.shape, weighted=True))
                    if img.shape != lab.shape:
                        continue  # another geometry: not comparable
                    key = labels_digest(lab)
                    img.sources[(si, t)] = key
                    if key in img.cands:
                        continue  # identical to a stored candidate: the same candidate
                    p = plausibility(metrics.get(name, {}), self.spec)
                    cand = _Candidate(key, (si, t), p if math.isfinite(p) else 0.0, object_signature(lab))
                    img.cands[key] = cand
                    new.setdefault(name, []).append(cand)
        for name, cands in new.items():
            img = self.images[name]
            # most plausible first: the families of a pool read in one go do not depend on the order the
            # trials ran in, and each family is led by its most plausible member
            for cand in sorted(cands, key=lambda c: (-c.plausibility, c.key)):
                self._join(img, cand)
            self._rebalance(img, name)

    def _nearest_family(self, img: _Image, sig: ObjectSignature) -> int:
        """The family whose leader agrees most with ``sig``; -1 when none reaches ``family_agreement``."""
        best, best_agree = -1, self.family_agreement
        for fid, fam in enumerate(img.families):
            lead = img.cands[fam.leader].sig
            n, m = sig.n, lead.n
            if n + m and 2.0 * min(n, m) / (n + m) < best_agree:  # F1 cannot reach the bar: skip the matching
                continue
            agree = object_agreement(sig, lead)
            if agree > best_agree or (agree == best_agree and best < 0):
                best, best_agree = fid, agree
        return best

    def _join(self, img: _Image, cand: _Candidate) -> None:
        fid = self._nearest_family(img, cand.sig)
        if fid < 0:
            img.families.append(_Family(cand.key))
            fid = len(img.families) - 1
        img.families[fid].members.append(cand.key)
        cand.family = fid

    def _labels_of(self, key: str, img: _Image, name: str) -> np.ndarray:
        si, t = img.cands[key].where
        return self.stores[si].load_one(t, name)

    def _rebalance(self, img: _Image, name: str) -> None:
        cut = float(np.median([c.plausibility for c in img.cands.values()]))
        plausible = {k for k, c in img.cands.items() if c.plausibility >= cut}
        areas = [a for a in (img.cands[k].sig.median_area for k in plausible) if math.isfinite(a)]
        img.reference_area = float(np.median(areas)) if areas else math.nan
        target: dict[str, int] = {}
        for fam in img.families:
            voters = sorted(k for k in fam.members if k in plausible and self._size_ok(img, k))
            if voters:  # the family's one vote, shared (exactly: the shares add up to WEIGHT_UNIT)
                share, extra = divmod(WEIGHT_UNIT, len(voters))
                target.update({k: share + (i < extra) for i, k in enumerate(voters)})
        for key in sorted(set(img.weights) | set(target)):
            delta = target.get(key, 0) - img.weights.get(key, 0)
            if delta:
                img.acc.add(self._labels_of(key, img, name), delta)
        img.weights = target

    # ------------------------------------------------------------------ queries
    @staticmethod
    def _size_ok(img: _Image, key: str) -> bool:
        area, ref = img.cands[key].sig.median_area, img.reference_area
        if not (math.isfinite(area) and math.isfinite(ref)) or ref <= 0:
            return True  # no objects (the sanity gate's case) or no reference: nothing to compare
        return ref / SIZE_FACTOR <= area <= ref * SIZE_FACTOR

    def size_ok(self, name: str, key: str) -> bool:
        """False when the candidate's median object area is more than SIZE_FACTOR from the pool's typical one."""
        img = self.images.get(name)
        return True if img is None or key not in img.cands else self._size_ok(img, key)

    def key_of(self, name: str, trial: int, store: int = 0) -> str | None:
        """The candidate a stored trial is on image ``name`` (None when it is not in the pool)."""
        img = self.images.get(name)
        return None if img is None else img.sources.get((store, trial))

    def family_of(self, name: str, key: str) -> int:
        return self.images[name].cands[key].family

    def families(self, name: str) -> int:
        """How many families vote on image ``name`` now."""
        img = self.images.get(name)
        return 0 if img is None else len({img.cands[k].family for k in img.weights})

    def n_families(self, name: str) -> int:
        """How many families (voting or not) the pool holds on image ``name``."""
        img = self.images.get(name)
        return 0 if img is None else len(img.families)

    def candidates(self, name: str) -> list[str]:
        img = self.images.get(name)
        return [] if img is None else list(img.cands)

    def labels(self, name: str, key: str) -> np.ndarray:
        """A stored candidate's label image (read from its store)."""
        return self._labels_of(key, self.images[name], name)

    def _consensus_without(self, name: str, key: str | None, labels: np.ndarray | None) -> np.ndarray | None:
        """Majority of the voting candidates other than ``key``; None when fewer than MIN_FAMILIES families vote."""
        img = self.images.get(name)
        if img is None:
            return None
        weight = img.weights.get(key, 0) if key is not None else 0
        others = {img.cands[k].family for k in img.weights if k != key}
        if len(others) < MIN_FAMILIES:
            return None
        if not weight:
            return img.acc.labels()
        if labels is None:
            labels = self._labels_of(key, img, name)
        return img.acc.labels(exclude=labels, exclude_weight=weight)

    def consensus(self, name: str, trial: int | None = None, labels: np.ndarray | None = None) -> np.ndarray | None:
        """Consensus on image ``name`` of the voting candidates other than the scored one; None when too few.

        The scored candidate is a stored ``trial`` (of the first store) or a
        label image (``labels``: when it is identical to a stored candidate,
        that one does not vote). With neither, every candidate votes. The
        candidate's near-duplicates (its family) keep their share of the
        vote.
        """
        img = self.images.get(name)
        if img is None:
            return None
        key = None
        if trial is not None:
            key = img.sources.get((0, trial))
        elif labels is not None and tuple(np.shape(labels)) == img.shape:
            key = labels_digest(labels)
        return self._consensus_without(name, key if key in img.cands else None, None)

    def candidate_consensus(self, name: str, key: str, labels: np.ndarray | None = None) -> np.ndarray | None:
        """Consensus for a stored candidate (``labels``: its label image, if already read)."""
        return self._consensus_without(name, key, labels)

    def progress(self, number: int, value: float, objective: str) -> tuple[float, str]:
        """What a progress line prints for a trial of the first store: ``(score, note)``.

        During the search a trial's consensus is measured against the pool
        so far; while fewer than :data:`SETTLED_FAMILIES` families vote it is
        noise (and the majority of a few early, similar candidates inflates
        it), so the line shows the combined proxy *without* consensus then,
        and marks every pool-dependent score as provisional.
        """
        uses_pool = objective == "proxy.consensus" or (objective == "proxy"
                                                        and self.spec.weights.get("consensus", 0) > 0)
        if not uses_pool:
            return value, ""
        try:
            per_image = self.store.load_metrics(number)
        except (OSError, ValueError, KeyError):
            per_image = {}
        counts = [self.families(n) for n in per_image] or [0]
        k = min(counts)
        if k >= SETTLED_FAMILIES or objective != "proxy" or not per_image:
            return value, f" (provisional: consensus of {k} families so far)"
        values = [plausibility(m, self.spec) for m in per_image.values()]
        return float(np.mean(values)), f" (without consensus: {k} of {SETTLED_FAMILIES} families so far)"

    def fingerprint(self) -> str:
        """Digest of what the pool would read (every store's files): equal digests give equal scores."""
        h = hashlib.blake2b(digest_size=16)
        for store in self.stores:
            h.update(str(store.folder.name).encode())
            h.update(json.dumps(store.fingerprint()).encode())
        return h.hexdigest()

    # for callers and tests that read the voting sets
    @property
    def members(self) -> dict[str, set[tuple[int, int]]]:
        """Image -> the stored ``(store, trial)`` whose labels vote now."""
        return {name: {img.cands[k].where for k in img.weights} for name, img in self.images.items()}

    @property
    def acc(self) -> dict[str, ConsensusAccumulator]:
        return {name: img.acc for name, img in self.images.items()}
