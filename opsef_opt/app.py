"""What the command line does once Hydra has composed the config: validate, then run the mode."""
from __future__ import annotations

import logging
import sys

from omegaconf import DictConfig

from opsef_opt.config import ConfigError, Settings, validate

log = logging.getLogger("opsef_opt")

#: libraries that log routine INFO lines (schema migrations, ...) users need not see
_QUIET = ("alembic", "mlflow", "optuna", "urllib3", "numba", "git")


def run(cfg: DictConfig) -> int:
    """Run the configured mode; return the process exit code."""
    for name in _QUIET:
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        settings = validate(cfg)
    except ConfigError as e:
        print(f"opsef-opt: config error: {e}", file=sys.stderr)
        return 2
    if settings.mode == "models":
        from opsef_opt.models_report import print_models

        print_models(settings)
        return 0
    return _search(settings)


def _search(settings: Settings) -> int:
    from opsef_opt.search.leaderboard import leaderboard, print_leaderboard
    from opsef_opt.search.study import StudyError, run_search

    try:
        study = run_search(settings)
    except (ConfigError, StudyError) as e:
        print(f"opsef-opt: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nopsef-opt: interrupted; run the same command again to continue the study.", file=sys.stderr)
        return 130
    csv = settings.study_dir / "leaderboard.csv"
    print_leaderboard(leaderboard(study), settings.leaderboard_rows, csv, f"study {study.study_name}",
                      study.user_attrs.get("skipped_models"))
    uri = settings.tracking_uri
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        from pathlib import Path

        uri = "sqlite:///" + str(Path(uri[len("sqlite:///"):]).resolve())
    stats = study.user_attrs.get("cache_stats", {})
    print(f"\nResults: {settings.study_dir.resolve()}  (leaderboard.csv, optuna.db, cache/)")
    print(f"Preprocessing cache: {stats}")
    print(f"Browse all runs:  mlflow ui --backend-store-uri {uri}  then open http://127.0.0.1:5000 "
          f"(experiment '{settings.study.name}')")
    return 0
