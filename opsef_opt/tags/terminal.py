"""``mode=tag``: review untagged runs on a contact sheet and type their quality tags.

Reads answers line by line from standard input, so it works interactively
and scripted (``printf 'c\no split\n' | python -m opsef_opt study=x mode=tag``).
"""
from __future__ import annotations

import sys
from collections import Counter
from typing import TextIO

from opsef_opt.config import TAGS, Settings
from opsef_opt.tags.csv_import import import_tags
from opsef_opt.tags.learn import NeedTags, features_of, fit_from_runs, how_to_tag
from opsef_opt.tags.runs import TrialRun, normalize_tag, set_quality, trial_runs

__all__ = ["tag_mode"]

PROMPT = "[c]orrect [o]ver [u]nder [f]ailed (+ optional note), Enter = skip, q = quit"


def _score(run: TrialRun) -> float:
    v = run.metrics.get("score.final", run.metrics.get("score", float("nan")))
    return v if v == v else float("-inf")


def tag_mode(settings: Settings, stdin: TextIO = sys.stdin, out: TextIO = sys.stdout) -> int:
    """Run the tagging flow; return the exit code."""
    from opsef_opt.track import tracking_client

    client = tracking_client(settings.tracking_uri)
    exp = client.get_experiment_by_name(settings.study.name)
    if exp is None:
        print(f"opsef-opt: study {settings.study.name} has no runs yet; run it first "
              f"(python -m opsef_opt study={settings.study.name})", file=sys.stderr)
        return 2
    runs = trial_runs(client, exp.experiment_id, settings.study.name)
    if settings.stage:
        runs = [r for r in runs if r.stage == settings.stage]
    for r in runs:
        if r.raw_tag:
            print(f"warning: run {r.run_id} (trial {r.stage}#{r.trial}) has quality={r.raw_tag!r}, not one of "
                  f"{', '.join(TAGS)}; it is ignored until corrected", file=out)
    if settings.tags_csv:
        default_stage = settings.stage or settings.study.stages[0].name
        applied, problems = import_tags(settings.tags_csv, runs, client, default_stage)
        print(f"imported {applied} tag(s) from {settings.tags_csv}", file=out)
        for p in problems:
            print(f"opsef-opt: {p}", file=sys.stderr)
        _summary(runs, settings, out)
        return 1 if problems else 0
    untagged = sorted((r for r in runs if not r.tag), key=lambda r: (-_score(r), r.study, r.trial))
    batch = untagged[: settings.tag_batch]
    if not batch:
        print(f"all {len(runs)} completed run(s) are tagged", file=out)
        _summary(runs, settings, out)
        return 0
    sheet = _sheet(settings, batch)
    if sheet:
        print(f"contact sheet of the {len(batch)} untagged run(s) with the best scores: {sheet}", file=out)
    print(PROMPT, file=out)
    tagged_now = 0
    for k, run in enumerate(batch, start=1):
        while True:
            print(f"[{k}/{len(batch)}] trial {run.stage}#{run.trial}  score {_score(run):.4f}  {run.pipeline}\n> ",
                  end="", file=out, flush=True)
            line = stdin.readline()
            if not line or line.strip().lower() in ("q", "quit"):
                print("", file=out)
                _summary(runs, settings, out, tagged_now)
                return 0
            words = line.strip().split(maxsplit=1)
            if not words:
                break  # skip
            tag = normalize_tag(words[0])
            if tag is None:
                print(f"unknown tag {words[0]!r}; {PROMPT}", file=out)
                continue
            set_quality(client, run.run_id, tag, words[1] if len(words) > 1 else None)
            run.tag = tag
            tagged_now += 1
            break
    _summary(runs, settings, out, tagged_now)
    return 0


def _summary(runs: list[TrialRun], settings: Settings, out: TextIO, tagged_now: int | None = None) -> None:
    tagged = [r for r in runs if r.tag]
    counts = ", ".join(f"{t} {n}" for t, n in sorted(Counter(r.tag for r in tagged).items())) or "none"
    if tagged_now is not None:
        print(f"tagged {tagged_now} run(s) now", file=out)
    print(f"{len(tagged)} of {len(runs)} run(s) tagged ({counts})", file=out)
    try:
        model = fit_from_runs(runs, settings.study.score, settings, "tag_model")
    except NeedTags:
        need = settings.study.score.min_tagged
        print(f"the tag model needs at least {need} tagged runs with 2 different tags. {how_to_tag(settings)}",
              file=out)
        return
    print(model.describe(), file=out)
    untagged = [r for r in runs if not r.tag]
    if untagged:
        predicted = model.predict_value(features_of(untagged))
        tags = model.predict_tag(features_of(untagged))
        order = sorted(range(len(untagged)), key=lambda i: -predicted[i])[:5]
        print("untagged runs the tag model likes best:", file=out)
        for i in order:
            r = untagged[i]
            print(f"  trial {r.stage}#{r.trial}  predicted {tags[i]} ({predicted[i]:.2f})  {r.pipeline}", file=out)


def _split(pipeline: str) -> tuple[str, str]:
    """(preprocessing, model setting) from a pipeline label ``pre | model``."""
    pre, _, model = pipeline.rpartition(" | ")
    return (pre or "none"), model


def _sheet(settings: Settings, batch: list[TrialRun]):
    """Contact sheet of the runs to tag, on the first image's crop; None if labels are not stored."""
    from opsef_opt.io.dataset import load_items
    from opsef_opt.search.pool import LabelStore
    from opsef_opt.search.trial import reference_intensities
    from opsef_opt.track.contact_sheet import Cell, choose_crop, render_list, save_png

    items, _ = load_items(settings.study.images, settings.study.reshape)
    if not items:
        return None
    item = items[0]
    cells_labels = []
    for run in batch:
        store = LabelStore(settings.study_dir / "labels" / run.stage)
        try:
            lab = store.load(run.trial).get(item.name)
        except OSError:
            lab = None
        if lab is not None and lab.ndim == 2:
            cells_labels.append((run, lab))
    if not cells_labels:
        return None
    ref = reference_intensities(item, cells_labels[0][1].shape, item.data)
    if ref.ndim != 2:
        return None
    window = choose_crop(ref, [lab for _, lab in cells_labels])
    cells = [Cell(*_split(run.pipeline), ref[window], lab[window],
                  f"{run.stage}#{run.trial}  {_score(run):.3f}") for run, lab in cells_labels]
    path = settings.study_dir / "contact_sheets" / "to_tag.png"
    return save_png(render_list(cells, title=f"{settings.study.name}: untagged runs, image {item.name}"), path)
