"""What the command line does once Hydra has composed the config: validate, then run the mode."""
from __future__ import annotations

import logging
import sys
from pathlib import Path

from omegaconf import DictConfig

from opsef_opt.config import ConfigError, Settings, validate

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
    if settings.mode == "tag":
        from opsef_opt.tags.terminal import tag_mode

        return tag_mode(settings)
    if settings.mode in ("apply", "reimport"):
        return _apply(settings)
    return _search(settings)


def _apply(settings: Settings) -> int:
    from opsef_opt.apply.run import EXIT_SOME_FAILED, ApplyError

    try:
        if settings.mode == "apply":
            from opsef_opt.apply.run import run_apply

            report = run_apply(settings)
        else:
            from opsef_opt.apply.reimport_mode import run_reimport

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
    print(f"MLflow run: {report.mlflow_run_id}")
    return EXIT_SOME_FAILED if report.failed else 0


def _search(settings: Settings) -> int:
    from opsef_opt.search.leaderboard import combined_leaderboard, leaderboard, print_leaderboard
    from opsef_opt.backends import BackendError
    from opsef_opt.search.study import NeedTags, StageFailed, StudyError, run_search, stage_studies

    try:
        studies = run_search(settings)
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
    tags = _tags(settings)
    csv = settings.study_dir / "leaderboard.csv"
    # the CSV covers every stage in storage, also those not run by this command (stage=NAME)
    boards = {name: leaderboard(study, tags) for name, study in stage_studies(settings).items()}
    csv.parent.mkdir(parents=True, exist_ok=True)
    combined_leaderboard(boards).to_csv(csv, index=False)
    for study in studies:
        stage = study.study_name.rsplit("/", 1)[-1]
        print_leaderboard(boards.get(stage, leaderboard(study, tags)), settings.leaderboard_rows, csv,
                          f"study {study.study_name}", study.user_attrs.get("skipped_models"))
    uri = settings.tracking_uri
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = "sqlite:///" + str(Path(uri[len("sqlite:///"):]).resolve())
    stats = studies[-1].user_attrs.get("cache_stats", {}) if studies else {}
    print(f"\nResults: {settings.study_dir.resolve()}  (leaderboard, contact_sheets/, optuna.db, cache/)")
    print(f"Preprocessing cache: {stats}")
    print(f"Browse all runs:  mlflow ui --backend-store-uri {uri}  then open http://127.0.0.1:5000 "
          f"(experiment '{settings.study.name}')")
    print(f"Tag results:  python -m opsef_opt study={settings.study.name} mode=tag  (or in the MLflow UI)")
    return 0


def _tags(settings: Settings) -> dict[str, str]:
    """Quality tags of the study's runs, by MLflow run id (for the leaderboard)."""
    from opsef_opt.tags import trial_runs
    from opsef_opt.track import tracking_client

    client = tracking_client(settings.tracking_uri)
    exp = client.get_experiment_by_name(settings.study.name)
    if exp is None:
        return {}
    return {r.run_id: r.tag for r in trial_runs(client, exp.experiment_id, settings.study.name) if r.tag}
