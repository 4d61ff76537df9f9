"""Trial runs of a study as MLflow records them, and their quality tags.

A tag is the MLflow run tag ``quality`` (``correct``, ``over``, ``under`` or
``failed``) with an optional free-text ``quality.note``. Because they are
plain run tags they can be set, edited and filtered in the MLflow UI
(``tags.quality = 'correct'``), and every way of tagging writes the same two
tags.

A comparison ("A is better than B") is stored on the better run: the tag
``quality.better_than`` holds the MLflow run ids of the runs it was judged
better than, comma-separated; "A and B are equally good" is stored on both
runs as ``quality.same_as`` (same format). A new judgement of the same two
runs replaces the old one. In the UI, filter with
``tags.`quality.better_than` LIKE '%<run id>%'``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

from mlflow import MlflowClient

from opsef_opt.settings import TAGS
from opsef_opt.track.names import stage_of, trial_name

__all__ = ["QUALITY_TAG", "NOTE_TAG", "BETTER_TAG", "SAME_TAG", "TrialRun", "normalize_tag", "set_quality",
           "trial_runs", "set_comparison", "comparisons_of", "parse_ids"]

QUALITY_TAG = "quality"
NOTE_TAG = "quality.note"
BETTER_TAG = "quality.better_than"
SAME_TAG = "quality.same_as"

_SYNONYMS = {
    "correct": "correct", "c": "correct", "ok": "correct", "good": "correct",
    "over": "over", "o": "over", "over-segmented": "over", "oversegmented": "over", "over_segmented": "over",
    "under": "under", "u": "under", "under-segmented": "under", "undersegmented": "under",
    "under_segmented": "under",
    "failed": "failed", "f": "failed", "fail": "failed", "bad": "failed",
}


def normalize_tag(value: str | None) -> str | None:
    """The canonical tag for what a person typed (``C``, ``Over-segmented``, ...), or None if unknown."""
    if value is None:
        return None
    return _SYNONYMS.get(str(value).strip().lower())


@dataclass
class TrialRun:
    """One finished trial run: where it comes from, its tag and its metrics."""

    run_id: str
    study: str  # Optuna study name, <study>/<stage>
    trial: int
    tag: str | None
    note: str
    raw_tag: str | None  # as stored, when it is not a known tag
    metrics: dict[str, float] = field(default_factory=dict)
    pipeline: str = ""
    better_than: list[str] = field(default_factory=list)  # run ids judged worse than this one
    same_as: list[str] = field(default_factory=list)  # run ids judged equally good

    @property
    def stage(self) -> str:
        return stage_of(self.study)

    @property
    def name(self) -> str:
        """The trial's one name, ``<stage>#<number>`` (as in MLflow, the leaderboard and the contact sheets)."""
        return trial_name(self.stage, self.trial)


def _search(client: MlflowClient, experiment_id: str, filter_string: str) -> Iterator:
    token = None
    while True:
        page = client.search_runs([experiment_id], filter_string=filter_string, max_results=5000,
                                  page_token=token)
        yield from page
        token = page.token
        if not token:
            return


def trial_runs(client: MlflowClient, experiment_id: str, study_prefix: str) -> list[TrialRun]:
    """Every completed trial run of the study's stages (``<study_prefix>/<stage>``), by stage and trial."""
    out = []
    for r in _search(client, experiment_id, "attributes.status = 'FINISHED' and tags.`opsef.status` = 'complete'"):
        tags = r.data.tags
        study = tags.get("optuna.study", "")
        if not study.startswith(study_prefix + "/") or "optuna.trial" not in tags:
            continue
        raw = tags.get(QUALITY_TAG)
        out.append(TrialRun(
            run_id=r.info.run_id, study=study, trial=int(tags["optuna.trial"]), tag=normalize_tag(raw),
            note=tags.get(NOTE_TAG, ""), raw_tag=raw if raw and not normalize_tag(raw) else None,
            metrics=dict(r.data.metrics), pipeline=tags.get("pipeline", ""),
            better_than=parse_ids(tags.get(BETTER_TAG)), same_as=parse_ids(tags.get(SAME_TAG)),
        ))
    return sorted(out, key=lambda t: (t.study, t.trial))


def set_quality(client: MlflowClient, run_id: str, tag: str, note: str | None = None) -> None:
    """Write the quality tag (and note) of one run."""
    canonical = normalize_tag(tag)
    if canonical is None:
        raise ValueError(f"unknown quality tag {tag!r}; use one of {', '.join(TAGS)}")
    client.set_tag(run_id, QUALITY_TAG, canonical)
    if note:
        client.set_tag(run_id, NOTE_TAG, note)


def parse_ids(value: str | None) -> list[str]:
    """Run ids from a ``quality.better_than`` / ``quality.same_as`` value: comma-, space- or
    semicolon-separated, or a JSON list; order kept, duplicates dropped."""
    if not value:
        return []
    text = str(value).strip()
    if text.startswith("["):
        import json

        try:
            items = [str(x) for x in json.loads(text)]
        except ValueError:
            items = text.strip("[]").replace('"', " ").replace("'", " ").split(",")
    else:
        items = text.replace(";", ",").replace(" ", ",").split(",")
    out: list[str] = []
    for item in (i.strip() for i in items):
        if item and item not in out:
            out.append(item)
    return out


def _write_ids(client: MlflowClient, run_id: str, key: str, ids: list[str], had: bool) -> None:
    if ids:
        client.set_tag(run_id, key, ",".join(ids))
    elif had:
        client.delete_tag(run_id, key)


def set_comparison(client: MlflowClient, a: str, b: str, outcome: float,
                   runs: dict[str, TrialRun] | None = None) -> None:
    """Record a comparison of runs ``a`` and ``b``: outcome 1 = a is better, 0 = b is better,
    0.5 = equally good. Replaces any earlier judgement of the same two runs; updates ``runs``
    (by run id) in place when given."""
    if a == b:
        raise ValueError("a run cannot be compared with itself")
    if outcome not in (0, 0.5, 1):
        raise ValueError(f"outcome {outcome!r}: use 1 (a better), 0 (b better) or 0.5 (equal)")
    current = {}
    for rid in (a, b):
        tags = client.get_run(rid).data.tags
        current[rid] = {key: parse_ids(tags.get(key)) for key in (BETTER_TAG, SAME_TAG)}
        current[rid]["had"] = {key for key in (BETTER_TAG, SAME_TAG) if key in tags}
    new = {rid: {key: [i for i in current[rid][key] if i != other] for key in (BETTER_TAG, SAME_TAG)}
           for rid, other in ((a, b), (b, a))}
    if outcome == 0.5:
        new[a][SAME_TAG].append(b)
        new[b][SAME_TAG].append(a)
    else:
        better, worse = (a, b) if outcome == 1 else (b, a)
        new[better][BETTER_TAG].append(worse)
    for rid in (a, b):
        for key in (BETTER_TAG, SAME_TAG):
            if new[rid][key] != current[rid][key]:
                _write_ids(client, rid, key, new[rid][key], key in current[rid]["had"])
        if runs is not None and rid in runs:
            runs[rid].better_than, runs[rid].same_as = new[rid][BETTER_TAG], new[rid][SAME_TAG]


def comparisons_of(runs: list[TrialRun]) -> list[tuple[str, str, float]]:
    """Every comparison among ``runs`` as ``(run id a, run id b, outcome)`` (1.0: a better, 0.5: equal);
    judgements naming a run not in ``runs`` are left out, each pair once (a ``better_than`` wins over
    a ``same_as`` of the same two runs)."""
    ids = {r.run_id for r in runs}
    out: dict[frozenset, tuple[str, str, float]] = {}
    for r in runs:
        for other in r.same_as:
            if other in ids and other != r.run_id:
                out.setdefault(frozenset((r.run_id, other)), tuple(sorted((r.run_id, other))) + (0.5,))
    for r in runs:
        for other in r.better_than:
            if other in ids and other != r.run_id:
                out[frozenset((r.run_id, other))] = (r.run_id, other, 1.0)
    return sorted(out.values())
