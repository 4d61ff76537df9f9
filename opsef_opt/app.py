"""What the command line does once Hydra has composed the config: validate, then run the mode."""
from __future__ import annotations

import logging
import sys
from pathlib import Path

from omegaconf import DictConfig

from opsef_opt.config import ConfigError, Settings, validate
from opsef_opt.search import attrs as A

log = logging.getLogger("opsef_opt")

#: libraries that log routine INFO lines (schema migrations, ...) users need not see
_QUIET = ("alembic", "mlflow", "optuna", "urllib3", "numba", "git")

#: exit code of a config error, bad input found before any trial, or an unusable storage/tracking URI
EXIT_CONFIG = 2
#: exit code when a stage waits for the analyst's tags
EXIT_NEED_TAGS = 3
#: exit code when every trial of a stage failed (the reasons are summarised in one line)
EXIT_STAGE_FAILED = 5
#: exit code after Ctrl-C / SIGTERM (the same command continues)
EXIT_INTERRUPTED = 130


def run(cfg: DictConfig) -> int:
    """Run the configured mode; return the process exit code."""
    for name in _QUIET:
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        settings = validate(cfg)
    except ConfigError as e:
        print(f"opsef-opt: config error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    if settings.mode != "models":
        from opsef_opt.backends import BackendError, check_backends

        try:  # before anything is created: a wrong URI costs seconds, not a half-made study
            check_backends(settings.storage if settings.mode == "search" else None, settings.tracking_uri,
                           settings.studies_dir)
        except BackendError as e:
            print(f"opsef-opt: {e}", file=sys.stderr)
            return EXIT_CONFIG
    if settings.mode == "models":
        from opsef_opt.models_report import print_models

        print_models(settings)
        return 0
    if settings.mode in ("tag", "ui") and _no_store(settings):
        print(f"opsef-opt: study {settings.study.name} has no runs yet; run it first "
              f"(python -m opsef_opt study={settings.study.name})", file=sys.stderr)
        return EXIT_CONFIG
    if settings.mode == "tag":
        from opsef_opt.tags.terminal import tag_mode

        return tag_mode(settings)
    if settings.mode in ("apply", "reimport"):
        return _apply(settings)
    if settings.mode == "ui":
        return _ui(settings)
    return _search(settings)


def _no_store(settings: Settings) -> bool:
    """True when the tracking store is a SQLite file that does not exist (a mode that only reads it would create it)."""
    from opsef_opt.backends import sqlite_path

    db = sqlite_path(settings.tracking_uri)
    return db is not None and not db.is_file()


def _apply(settings: Settings) -> int:
    from opsef_opt.batch.run import EXIT_SOME_FAILED, ApplyError

    try:
        if settings.mode == "apply":
            from opsef_opt.batch.run import run_apply

            report = run_apply(settings)
        else:
            from opsef_opt.batch.reimport_mode import run_reimport

            report = run_reimport(settings)
    except (ApplyError, ConfigError) as e:
        print(f"opsef-opt: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nopsef-opt: interrupted; run the same command again: finished images are kept.", file=sys.stderr)
        return 130
    rate = f", {report.megapixels / report.seconds:.2f} Mpx/s" if report.seconds > 0 and report.megapixels else ""
    print(f"\n{settings.mode}: {len(report.done)} image(s) done ({report.megapixels:.1f} Mpx in "
          f"{report.seconds:.1f} s{rate}, {settings.n_workers} worker(s), +{report.startup_seconds:.1f} s to start "
          f"them), {len(report.skipped)} already done, "
          f"{len(report.failed)} failed")
    if report.phases:
        print("  time: " + ", ".join(f"{k} {v:.1f} s" for k, v in report.phases.items()))
    for line in report.failed.values():
        print(f"  failed: {line}", file=sys.stderr)
    print(f"Results: {report.run_dir.resolve()}  (images/<image>/: labels.ome.tif, overlay.png, regions.csv, "
          f"rois.zip, objects.geojson; objects.csv/.parquet, plots/)")
    print(f"MLflow run: {_run_link(settings, report.mlflow_run_id)}")
    return EXIT_SOME_FAILED if report.failed else 0


def _run_link(settings: Settings, run_id: str, hint: bool = True) -> str:
    """A run as a link to its page in the MLflow UI (served by ``mode=ui`` for a local store)."""
    from opsef_opt.track import tracking_client
    from opsef_opt.ui import run_url, ui_base, ui_command

    try:
        experiment_id = tracking_client(settings.tracking_uri).get_run(run_id).info.experiment_id
    except Exception:  # the link is a convenience; the id still identifies the run
        return run_id
    link = run_url(ui_base(settings.tracking_uri), experiment_id, run_id)
    if not hint or settings.tracking_uri.startswith(("http://", "https://")):
        return link
    return f"{link}  (with {ui_command(settings.study.name)} running)"


def _search(settings: Settings) -> int:
    from opsef_opt.api import stage_leaderboards, write_leaderboard
    from opsef_opt.backends import BackendError
    from opsef_opt.search.leaderboard import print_leaderboard
    from opsef_opt.search.control import stop_on_signals
    from opsef_opt.search.study import NeedTags, StageFailed, StudyError, run_search

    try:
        with stop_on_signals() as stop:  # the first Ctrl-C / SIGTERM stops after the current image
            studies = run_search(settings, stop)
    except (ConfigError, StudyError, BackendError) as e:
        prefix = "config error: " if isinstance(e, ConfigError) else ""
        print(f"opsef-opt: {prefix}{e}", file=sys.stderr)
        return EXIT_CONFIG
    except NeedTags as e:
        print(f"opsef-opt: {e}", file=sys.stderr)
        return EXIT_NEED_TAGS
    except StageFailed as e:
        print(f"opsef-opt: {e}", file=sys.stderr)
        return EXIT_STAGE_FAILED
    except KeyboardInterrupt:
        print("\nopsef-opt: interrupted; run the same command again to continue the study.", file=sys.stderr)
        return EXIT_INTERRUPTED
    # the CSV covers every stage in storage, also those not run by this command (stage=NAME)
    boards = stage_leaderboards(settings)
    write_leaderboard(settings, boards)
    csv = settings.study_dir / "leaderboard.csv"
    for study in studies:
        stage = study.study_name.rsplit("/", 1)[-1]
        print_leaderboard(boards[stage], settings.leaderboard_rows, csv,
                          f"study {study.study_name}", study.user_attrs.get(A.SKIPPED_MODELS))
    uri = settings.tracking_uri
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = "sqlite:///" + str(Path(uri[len("sqlite:///"):]).resolve())
    stats = studies[-1].user_attrs.get(A.CACHE_STATS, {}) if studies else {}
    print(f"\nResults: {settings.study_dir.resolve()}  (leaderboard, contact_sheets/, optuna.db, cache/)")
    print(f"Preprocessing cache: {stats}")
    _print_ui_links(settings, [s.study_name.rsplit("/", 1)[-1] for s in studies])
    if studies:  # the last stage's pick, as a link to its MLflow run (parameters, metrics, images)
        board = boards.get(studies[-1].study_name.rsplit("/", 1)[-1])
        top = board.iloc[0] if board is not None and len(board) and "mlflow_run_id" in board else None
        if top is not None and isinstance(top["mlflow_run_id"], str):
            print(f"  best trial {top.get('trial', '')}: {_run_link(settings, top['mlflow_run_id'], hint=False)}")
    print(f"  (or any MLflow UI: mlflow ui --backend-store-uri {uri}, experiment '{settings.study.name}')")
    print(f"Tag results:  python -m opsef_opt study={settings.study.name} mode=tag  (or in the MLflow UI)")
    return 0


def _views(settings: Settings, stages: list[str]) -> tuple[str, dict[str, str]] | None:
    """Save the first-screen view of each stage (last stage last); (experiment id, stage -> view id)."""
    from opsef_opt.track import tracking_client
    from opsef_opt.ui import study_views

    client = tracking_client(settings.tracking_uri)
    exp = client.get_experiment_by_name(settings.study.name)
    if exp is None:
        return None
    return exp.experiment_id, study_views(client, exp.experiment_id, settings.study.name, stages)


def _print_ui_links(settings: Settings, stages: list[str], base: str | None = None) -> None:
    """The study's trials in the MLflow UI, one link per stage, best trial first."""
    from opsef_opt.ui import experiment_url, ui_base, ui_command

    try:
        found = _views(settings, stages)
    except Exception as e:  # the links are a convenience; the results are written
        log.warning("MLflow UI view not saved: %s: %s", type(e).__name__, e)
        return
    if not found:
        return
    experiment_id, views = found
    local = base is None and not settings.tracking_uri.startswith(("http://", "https://"))
    base = base or ui_base(settings.tracking_uri)
    if local:
        print(f"MLflow UI (best trial first):  {ui_command(settings.study.name)}  then open")
    else:
        print("MLflow UI (best trial first):")
    for stage, view in views.items():
        print(f"  {experiment_url(base, experiment_id, view)}" + (f"  (stage {stage})" if len(views) > 1 else ""))


def _ui(settings: Settings) -> int:
    """``mode=ui``: serve the MLflow UI on the study's tracking store and print the link to its first screen."""
    import signal
    import time

    from opsef_opt.track import tracking_client
    from opsef_opt.track.mlflow_tracker import relocate_artifacts
    from opsef_opt.ui import serve

    exp = tracking_client(settings.tracking_uri).get_experiment_by_name(settings.study.name)
    if exp is None:
        print(f"opsef-opt: study {settings.study.name} has no runs yet in {settings.tracking_uri}; run it first "
              f"(python -m opsef_opt study={settings.study.name})", file=sys.stderr)
        return EXIT_CONFIG
    stages = [s.name for s in settings.study.stages]
    if settings.tracking_uri.startswith(("http://", "https://")):  # a server is running already
        _print_ui_links(settings, stages)
        return 0
    relocate_artifacts(settings.tracking_uri, settings.studies_dir / "mlartifacts", exp.artifact_location)
    try:
        proc, base = serve(settings.tracking_uri, settings.studies_dir / "mlartifacts")
    except (RuntimeError, OSError) as e:
        print(f"opsef-opt: the MLflow UI could not start: {e}", file=sys.stderr)
        return 1
    print(f"MLflow UI of study {settings.study.name} at {base}  (Ctrl-C stops it)")
    _print_ui_links(settings, stages, base)
    sys.stdout.flush()
    stop = []
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    try:
        while not stop and proc.poll() is None:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except Exception:
                proc.kill()
    if proc.returncode not in (None, 0, -signal.SIGTERM) and not stop:
        print(f"opsef-opt: the MLflow server stopped ({proc.returncode})", file=sys.stderr)
        return 1
    return 0
