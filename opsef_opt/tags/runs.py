"""Trial runs of a study as MLflow records them, and their quality tags.

A tag is the MLflow run tag ``quality`` (``correct``, ``over``, ``under`` or
``failed``) with an optional free-text ``quality.note``. Because they are
plain run tags they can be set, edited and filtered in the MLflow UI
(``tags.quality = 'correct'``), and every way of tagging writes the same two
tags.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

from mlflow import MlflowClient

from opsef_opt.config import TAGS

__all__ = ["QUALITY_TAG", "NOTE_TAG", "TrialRun", "normalize_tag", "set_quality", "trial_runs"]

QUALITY_TAG = "quality"
NOTE_TAG = "quality.note"

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

    @property
    def stage(self) -> str:
        return self.study.rsplit("/", 1)[-1]


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
