"""``mode=tag``: review runs on a contact sheet, type their quality tags, then compare pairs.

The runs shown are chosen by expected information (:mod:`opsef_opt.tags.queue`),
then a few pairs of top runs are asked: "which is better, A or B?". Reads
answers line by line from standard input, so it works interactively and
scripted (``printf 'c\no split\na\n' | python -m opsef_opt study=x mode=tag``).
"""
from __future__ import annotations

import sys
from collections import Counter
from typing import TextIO

import numpy as np

from opsef_opt.config import TAGS, Settings
from opsef_opt.tags.csv_import import import_judgements
from opsef_opt.tags.learn import NeedTags, features_of, fit_from_runs, how_to_tag, judgements_of
from opsef_opt.tags.runs import TrialRun, normalize_tag, set_comparison, set_quality, trial_runs

__all__ = ["tag_mode"]

PROMPT = "[c]orrect [o]ver [u]nder [f]ailed (+ optional note), Enter = skip, q = quit"
PAIR_PROMPT = "which is better? [a] A, [b] B, [=] equally good, Enter = skip, q = quit"


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
            print(f"warning: run {r.run_id} (trial {r.name}) has quality={r.raw_tag!r}, not one of "
                  f"{', '.join(TAGS)}; it is ignored until corrected", file=out)
    if settings.tags_csv:
        default_stage = settings.stage or settings.study.stages[0].name
        got = import_judgements(settings.tags_csv, runs, client, default_stage)
        extra = f" and {got.comparisons} comparison(s)" if got.comparisons else ""
        print(f"imported {got.tags} tag(s){extra} from {settings.tags_csv}", file=out)
        for p in got.problems:
            print(f"opsef-opt: {p}", file=sys.stderr)
        _summary(runs, settings, out)
        return 1 if got.problems else 0
    batch = _queue(runs, settings)
    tagged_now = 0
    if not batch:
        print(f"all {len(runs)} completed run(s) are tagged", file=out)
    else:
        sheet = _sheet(settings, batch)
        if sheet:
            print(f"contact sheet of the {len(batch)} untagged run(s) to tag next (chosen by expected information: "
                  f"top of the ranking, where the tag model and the proxy disagree, unlike runs already tagged): "
                  f"{sheet}", file=out)
        print(PROMPT, file=out)
        for k, run in enumerate(batch, start=1):
            while True:
                print(f"[{k}/{len(batch)}] trial {run.name}  score {_score(run):.4f}  {run.pipeline}\n> ",
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
    compared = _compare(runs, settings, client, stdin, out)
    _summary(runs, settings, out, tagged_now, compared)
    return 0


def _inputs(runs: list[TrialRun]):
    """(features with a ``pipeline`` column, proxy of each run, tags by row, comparisons by rows)."""
    from opsef_opt.score.tag_model import proxy_of

    X = features_of(runs)
    proxy = proxy_of(X)
    proxy = np.where(np.isfinite(proxy), proxy, [_score(r) for r in runs])
    tags, pairs = judgements_of(runs)
    return X.assign(pipeline=[r.pipeline for r in runs]), proxy, {i: t for i, t in enumerate(tags) if t}, pairs


def _queue(runs: list[TrialRun], settings: Settings) -> list[TrialRun]:
    """The next ``tag_batch`` untagged runs to tag, most informative first."""
    from opsef_opt.tags.queue import choose_runs

    if not any(not r.tag for r in runs):
        return []
    X, proxy, tagged, pairs = _inputs(runs)
    return [runs[i] for i in choose_runs(X, proxy, tagged, pairs, settings.tag_batch, seed=settings.seed)]


def _compare(runs: list[TrialRun], settings: Settings, client, stdin: TextIO, out: TextIO) -> int:
    """Ask up to ``tag_pairs`` comparisons of top runs, one at a time (the leader against its strongest
    challenger, re-chosen after each answer); return how many were answered."""
    from opsef_opt.tags.queue import choose_pairs

    want = settings.tag_pairs
    if want <= 0 or len(runs) < 2:
        return 0
    by_id = {r.run_id: r for r in runs}
    skipped: set[frozenset] = set()
    answered = 0
    for k in range(1, want + 1):
        X, proxy, tagged, pairs = _inputs(runs)
        options = [(a, b) for a, b in choose_pairs(X, proxy, tagged, pairs, 1 + len(skipped), seed=settings.seed)
                   if frozenset((a, b)) not in skipped]
        if not options:
            break
        a, b = runs[options[0][0]], runs[options[0][1]]
        if k == 1:
            print(f"compare pairs of top runs (up to {want}): {PAIR_PROMPT}", file=out)
        try:
            sheet = _sheet(settings, [a, b], name="to_compare.png", prefixes=("A: ", "B: "),
                           title="which is better, A or B?")
        except Exception:  # a figure must never cost the analyst the question
            sheet = None
        where = f"  (contact sheet: {sheet})" if sheet else ""
        while True:
            print(f"[{k}/{want}] which is better?{where}\n  A: trial {a.name}  {a.tag or 'untagged'}  "
                  f"score {_score(a):.4f}  {a.pipeline}\n  B: trial {b.name}  {b.tag or 'untagged'}  "
                  f"score {_score(b):.4f}  {b.pipeline}\n> ", end="", file=out, flush=True)
            line = stdin.readline()
            answer = line.strip().lower()
            if not line or answer in ("q", "quit"):
                print("", file=out)
                return answered
            if not answer:
                skipped.add(frozenset((options[0][0], options[0][1])))
                break
            outcome = {"a": 1.0, "b": 0.0, "=": 0.5, "same": 0.5, "equal": 0.5}.get(answer)
            if outcome is None:
                print(f"unknown answer {answer!r}; {PAIR_PROMPT}", file=out)
                continue
            set_comparison(client, a.run_id, b.run_id, outcome, by_id)
            answered += 1
            break
    return answered


def _summary(runs: list[TrialRun], settings: Settings, out: TextIO, tagged_now: int | None = None,
             compared_now: int | None = None) -> None:
    from opsef_opt.score.tag_model import MIN_PAIRS, judged_scores, ruled_out

    tagged = [r for r in runs if r.tag]
    counts = ", ".join(f"{t} {n}" for t, n in sorted(Counter(r.tag for r in tagged).items())) or "none"
    if tagged_now is not None:
        extra = f" and compared {compared_now} pair(s)" if compared_now else ""
        print(f"tagged {tagged_now} run(s) now{extra}", file=out)
    X, proxy, tags, pairs = _inputs(runs)
    print(f"{len(tagged)} of {len(runs)} run(s) tagged ({counts}); {len(pairs)} comparison(s)", file=out)
    try:
        model = fit_from_runs(runs, settings.study.score, settings, "tag_model")
    except NeedTags:
        need = settings.study.score.min_tagged
        print(f"the tag model needs at least {need} tagged runs with 2 different tags, or at least {MIN_PAIRS} "
              f"comparisons. {how_to_tag(settings)}", file=out)
        return
    print(model.describe(), file=out)
    value = np.asarray(model.predict_value(X), float)
    value = np.where(np.isfinite(value), value, -np.inf)
    predicted = model.predict_tag(X)
    worse = ruled_out(len(runs), tags, pairs, settings.study.score.tag_values)
    # as the tag queue chooses (judged_pick): the winner of a comparison in the loser's place, judged worse last
    lifted = judged_scores(value, tags, pairs, settings.study.score.tag_values)
    order = sorted(range(len(runs)), key=lambda i: (i in worse, -lifted[i], -value[i]))[:5]
    which = "the proxy (the tag model does not beat it yet)" if model.use_proxy else "the tag model"
    print(f"best runs by {which}:", file=out)
    for i in order:
        r = runs[i]
        said = f"tagged {r.tag}" if r.tag else (f"predicted {predicted[i]}" if predicted[i] else "untagged")
        print(f"  trial {r.name}  {said} ({value[i]:.2f})  {r.pipeline}", file=out)


def _split(pipeline: str) -> tuple[str, str]:
    """(preprocessing, model setting) from a pipeline label ``pre | model``."""
    pre, _, model = pipeline.rpartition(" | ")
    return (pre or "none"), model


def _sheet(settings: Settings, batch: list[TrialRun], name: str = "to_tag.png", prefixes: tuple[str, ...] = (),
           title: str = "untagged runs"):
    """Contact sheet of the runs to judge, on the first image's crop; None if labels are not stored."""
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
    if prefixes and len(cells_labels) != len(batch):
        return None  # a pair needs both
    path = settings.study_dir / "contact_sheets" / name
    if prefixes:
        return _pair_sheet(settings, items, batch, prefixes, title, path)
    window = choose_crop(ref, [lab for _, lab in cells_labels])
    cells = [Cell(*_split(run.pipeline), ref[window], lab[window],
                  f"{prefixes[k] if k < len(prefixes) else ''}{run.name}  {_score(run):.3f}")
             for k, (run, lab) in enumerate(cells_labels)]
    return save_png(render_list(cells, title=f"{settings.study.name}: {title}, image {item.name}"), path)


def _pair_sheet(settings: Settings, items, runs: list[TrialRun], prefixes: tuple[str, ...], title: str, path):
    """The runs as rows of a decision sheet (:mod:`opsef_opt.figures.decision`) on up to 6 images."""
    from opsef_opt.figures.decision import Candidate, SheetImage, decision_sheet
    from opsef_opt.search.pool import LabelStore
    from opsef_opt.search.trial import reference_intensities
    from opsef_opt.track.contact_sheet import save_png

    candidates = []
    for prefix, run in zip(prefixes, runs):
        store = LabelStore(settings.study_dir / "labels" / run.stage)
        candidates.append(Candidate(f"{prefix.strip(': ')}: {run.name}", _score(run), run.pipeline,
                                    store.load(run.trial), run.tag, {}, store.load_metrics(run.trial)))
    images = []
    for item in items[:6]:
        lab = candidates[0].labels.get(item.name)
        if lab is None or lab.ndim != 2:
            continue
        ref = reference_intensities(item, lab.shape, item.data)
        if ref.ndim == 2:
            truth = item.truth if item.truth is not None and item.truth.shape == lab.shape else None
            images.append(SheetImage(item.name, ref, truth))
    if not images:
        return None
    sheet = decision_sheet(candidates, images, f"{settings.study.name}: {title}",
                           sparse=settings.study.images.labels_sparse, numbered=False)
    return save_png(sheet, path)
