"""MLflow bookkeeping: one experiment per study, a parent run per stage, a child run per trial.

Uses :class:`mlflow.MlflowClient` with explicit run ids (no global "active
run"), so several workers and resumed processes log safely into the same
store.
"""
from __future__ import annotations

import logging
import re
import sqlite3
import time
import uuid
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from PIL import Image

from opsef_opt.backends import ensure_sqlite, quiet_db_logs, sqlite_path
from opsef_opt.track.names import stage_of, trial_name

__all__ = ["Tracker", "metric_name", "tracking_client", "relocate_artifacts", "mark_interrupted",
           "EXPERIMENT_KIND"]

log = logging.getLogger("opsef_opt")

#: MLflow 3's experiment tag that picks the UI layout: the classic ML one (runs, metrics, charts), not GenAI
#: (traces, judges); the values are those of the UI's ExperimentKind enum (mlflow/server/js, 3.17)
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")


def _init_store(uri: str) -> None:
    """Create (or check) the tables of the tracking store at ``uri``."""
    MlflowClient(tracking_uri=uri).search_experiments(max_results=1)

_BAD = re.compile(r"[^\w\-. /:]")


def _forget_engine(uri: str) -> None:
    """Drop MLflow's cached database engine of ``uri`` (it stays connected to a file that was moved)."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    engines = getattr(SqlAlchemyStore, "_engine_map", {})
    engine = engines.pop(uri, None)
    if engine is not None:
        engine.dispose()


def tracking_client(tracking_uri: str) -> MlflowClient:
    """A client of the tracking store; a new SQLite store is created kill-safe (see ``opsef_opt.backends``)."""
    ensure_sqlite(tracking_uri, _init_store, ("runs",), "MLflow tracking", forget=_forget_engine)
    with quiet_db_logs():
        return MlflowClient(tracking_uri=tracking_uri)


_OPEN: dict[str, tuple[str, MlflowClient]] = {}


def _reopen(tracking_uri: str, experiment_id: str, token: str) -> "Tracker":
    """A pickled :class:`Tracker` in another process: its store's client, opened once per tracker.

    ``token`` names the tracker it was pickled from. Another tracker of the
    same store (the next study run in a notebook, possibly after its folder
    was deleted) opens the store again, so nothing is written through an
    engine still connected to a deleted file.
    """
    known = _OPEN.get(tracking_uri)
    if known is None or known[0] != token:
        if known is not None:
            _forget_engine(tracking_uri)
        _OPEN[tracking_uri] = (token, tracking_client(tracking_uri))
    tracker = Tracker.__new__(Tracker)
    tracker.client, tracker.tracking_uri, tracker.experiment_id = _OPEN[tracking_uri][1], tracking_uri, experiment_id
    tracker._token = token
    return tracker


def metric_name(name: str) -> str:
    """A string MLflow accepts as a metric/param key."""
    return _BAD.sub("_", name)


class Tracker:
    """Logs a study into an MLflow tracking store."""

    def __init__(self, tracking_uri: str, artifact_root: Path, experiment: str, description: str = "") -> None:
        self.client = tracking_client(tracking_uri)
        self.tracking_uri = tracking_uri
        self._token = uuid.uuid4().hex  # names this tracker in the recording process (see _reopen)
        relocate_artifacts(tracking_uri, artifact_root)  # a copied studies/ folder: artifacts go into the copy
        exp = self.client.get_experiment_by_name(experiment)
        if exp is None:
            artifact_root.mkdir(parents=True, exist_ok=True)
            try:
                self.experiment_id = self.client.create_experiment(
                    experiment,
                    artifact_location=artifact_root.resolve().as_uri(),
                    tags={EXPERIMENT_KIND[0]: EXPERIMENT_KIND[1],
                          **({"mlflow.note.content": description} if description else {})},
                )
            except Exception:  # created meanwhile by another worker
                exp = self.client.get_experiment_by_name(experiment)
                if exp is None:
                    raise
                self.experiment_id = exp.experiment_id
        else:
            if exp.lifecycle_stage == "deleted":
                self.client.restore_experiment(exp.experiment_id)
            self.experiment_id = exp.experiment_id
            if EXPERIMENT_KIND[0] not in exp.tags:  # made by an older version: open it in the ML layout too
                self.client.set_experiment_tag(self.experiment_id, *EXPERIMENT_KIND)

    def __reduce__(self):
        # the recording process gets (store, experiment) and opens the store once (see _reopen)
        return _reopen, (self.tracking_uri, self.experiment_id, self._token)

    # ------------------------------------------------------------ parent runs
    def open_parent(self, run_id: str | None, name: str, tags: Mapping[str, str]) -> str:
        """Reopen the stage's parent run when it exists, else create it."""
        if run_id:
            try:
                self.client.update_run(run_id, status="RUNNING")
                return run_id
            except Exception:
                pass  # deleted by the user: start a new one
        run = self.client.create_run(self.experiment_id, run_name=name, tags=dict(tags))
        return run.info.run_id

    def close_parent(self, run_id: str, metrics: Mapping[str, float], tags: Mapping[str, str], status: str = "FINISHED") -> None:
        self.log(run_id, metrics=metrics, tags=tags)
        self.client.set_terminated(run_id, status=status)

    # ------------------------------------------------------------ trial runs
    def start_trial(self, parent_id: str, trial_number: int, study_name: str, params: Mapping[str, Any], tags: Mapping[str, str]) -> str:
        """Create the child run of one trial attempt and log its parameters."""
        run = self.client.create_run(
            self.experiment_id,
            run_name=trial_name(stage_of(study_name), trial_number),
            tags={
                "mlflow.parentRunId": parent_id,
                "optuna.study": study_name,
                "optuna.trial": str(trial_number),
                **tags,
            },
        )
        run_id = run.info.run_id
        self.log(run_id, params=params)
        return run_id

    def log(
        self,
        run_id: str,
        metrics: Mapping[str, float] | None = None,
        params: Mapping[str, Any] | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> None:
        """Log metrics, params and tags in one batch (one store transaction)."""
        now = int(time.time() * 1000)
        self.client.log_batch(
            run_id,
            metrics=[Metric(metric_name(k), float(v), now, 0) for k, v in (metrics or {}).items()],
            params=[Param(metric_name(k), str(v)) for k, v in (params or {}).items()],
            tags=[RunTag(k, str(v)[:5000]) for k, v in (tags or {}).items()],
        )

    def log_folder(self, run_id: str, folder: Path, artifact_path: str | None = None) -> None:
        self.client.log_artifacts(run_id, str(folder), artifact_path)

    def finish(self, run_id: str, status: str = "FINISHED", tags: Mapping[str, str] | None = None) -> None:
        if tags:
            self.log(run_id, tags=tags)
        self.client.set_terminated(run_id, status=status)

    def log_file(self, run_id: str, path: Path, artifact_path: str | None = None) -> None:
        """Store one file (a contact sheet, ``best.yaml``, a plot) with the run."""
        self.client.log_artifact(run_id, str(path), artifact_path)

    def log_image(self, run_id: str, image: Any, key: str, most: int = 512) -> None:
        """A keyed image (MLflow's image charts compare the same key across runs), at most ``most`` px.

        An RGB array larger than ``most`` is shrunk by an integer factor (box
        filter) first: the charts show 256-px thumbnails, and MLflow encodes
        the image twice (PNG and a WebP thumbnail), which for an enlarged
        768-px overlay took longer than drawing it. Full size is the run's
        ``overlay.png`` artifact.
        """
        pil = Image.fromarray(np.asarray(image))
        factor = -(-max(pil.size) // most)
        if factor > 1:
            pil = pil.reduce(factor)
        # Pillow takes writer options from the image too: MLflow saves it with the default zlib level 6,
        # 3x slower than level 1 for 5 % smaller files (94 vs 33 ms for a 512 px overlay)
        pil.encoderinfo = {"compress_level": 1}
        self.client.log_image(run_id, pil, key=key, step=0, synchronous=True)

    def trial_runs(self, study_prefix: str) -> list:
        """Every completed trial run of the study's stages, with its tag (:func:`opsef_opt.tags.trial_runs`)."""
        from opsef_opt.tags.runs import trial_runs

        return trial_runs(self.client, self.experiment_id, study_prefix)

    def running_trial_runs(self, study_name: str) -> set[str]:
        """Ids of the stage's runs still marked RUNNING (a killed process did not finish recording them)."""
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"attributes.status = 'RUNNING' and tags.`optuna.study` = '{study_name}'",
            max_results=1000,
        )
        return {r.info.run_id for r in runs}


def mark_interrupted(tracking_uri: str, run_id: str) -> None:
    """Close the run of a trial whose process died (no heartbeat): status KILLED, ``opsef.status`` interrupted."""
    client = tracking_client(tracking_uri)
    client.set_tag(run_id, "opsef.status", "interrupted")
    client.set_terminated(run_id, "KILLED")


def relocate_artifacts(tracking_uri: str, artifact_root: Path, location: str | None = None) -> int:
    """Point a copied or moved ``studies/`` folder's MLflow store at the artifacts next to it.

    MLflow stores absolute ``file://`` artifact locations (per experiment and
    per run), so after ``cp -r studies elsewhere`` the copy's ``mlflow.db``
    still names the original folder and new runs would write there. When the
    tracking store is the SQLite file next to ``artifact_root`` (the default
    layout, ``studies/mlflow.db`` + ``studies/mlartifacts``) and its
    experiments name another ``.../mlartifacts`` folder, every location under
    that folder is rewritten to ``artifact_root`` (one transaction). Returns
    the number of experiments moved; other layouts are left alone.
    ``location``: an experiment's current artifact location, to skip the
    database when it is already right.
    """
    db = sqlite_path(tracking_uri)
    root = artifact_root.resolve()
    if db is None or not db.is_file() or db.resolve().parent != root.parent:
        return 0
    new = root.as_uri()
    if location is not None and (location == new or not location.startswith("file://")):
        return 0
    con = sqlite3.connect(db, timeout=60)
    try:
        with con:
            rows = con.execute("select experiment_id, artifact_location from experiments").fetchall()
            olds = {loc for _, loc in rows if loc and loc.startswith("file://") and loc != new
                    and loc.rstrip("/").endswith("/mlartifacts")}
            moved = 0
            for old in olds:
                tables = {r[0] for r in con.execute("select name from sqlite_master where type='table'")}
                moved += con.execute("update experiments set artifact_location = ? where artifact_location = ?",
                                     (new, old)).rowcount
                for table, column in (("runs", "artifact_uri"), ("logged_models", "artifact_location")):
                    if table in tables:
                        con.execute(f"update {table} set {column} = ? || substr({column}, ?) "
                                    f"where substr({column}, 1, ?) = ?",
                                    (new + "/", len(old) + 2, len(old) + 1, old + "/"))
                log.warning("the studies folder was copied or moved: MLflow artifacts of %s now go to %s "
                            "(was %s)", db, root, old[len("file://"):])
    finally:
        con.close()
    return moved
