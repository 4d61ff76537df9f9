"""The MLflow UI as the study's first screen: a saved view (best trial first) and the links the tool prints.

What an analyst should see when opening the printed link: the study's
trials, flat and best first, with the trial name (``coarse#18``), the score,
the ground-truth F1 when labels exist, the quality tag and the whole
pipeline, without clicking. MLflow 3.17 gets there with three things it
offers, all read from its UI code (``mlflow/server/js``):

- ``?workflowType=machine_learning`` in the URL (and the experiment tag
  ``mlflow.experimentKind=custom_model_development``): the classic runs
  table instead of the GenAI layout (traces, judges).
- A *saved view*: the experiment tag ``mlflow.sharedViewState.<id>`` holds
  the runs table state (filter, sort, columns, column widths) and the URL
  parameter ``viewStateShareKey=<id>`` opens it; it also appears in the
  UI's list of saved views. URL parameters alone cannot choose columns.
- A filter on the trial runs of one stage, sorted by the score the study
  ranks by (``metrics.score.final`` once the stage-end re-score has
  written it, as the leaderboard and ``best.yaml`` do; ``metrics.score``,
  the optimiser's value, before): MLflow then lists the matching runs flat
  instead of nested under their stage's parent run.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Iterable
from urllib.parse import quote, urlencode

from mlflow import MlflowClient

__all__ = ["DEFAULT_PORT", "VIEW_TAG", "first_screen_state", "save_first_screen", "experiment_url", "run_url",
           "base_url", "default_host", "ui_base", "serve", "ui_command", "study_views"]

#: where ``mode=ui`` serves the MLflow UI (the next free port when taken)
DEFAULT_PORT = 5000
#: experiment tag prefix of MLflow's saved views (the UI's ``SHARE_VIEW_STATE_TAG_PREFIX``)
VIEW_TAG = "mlflow.sharedViewState."
#: widths (px) that fit trial name, score, GT F1, tag and a pipeline of about 95 characters in 1600 px (the run
#: name, 190 px, and "Created", 150 px, are always shown and keep their widths)
_WIDTHS = {"metrics.`score`": 150, "metrics.`score.final`": 150, "metrics.`gt.f1`": 150, "tags.`quality`": 80,
           "tags.`pipeline`": 540}
#: the pipeline's width without a GT F1 column (about 125 characters)
_WIDE = 690


def _key(kind: str, name: str) -> str:
    """A runs-table column id as the UI names it, e.g. ``metrics.`score```."""
    return f"{kind}.`{name}`"


def view_id(stage: str) -> str:
    """The saved view's id: plain characters, stable per stage, so a re-run updates the same view."""
    return f"opsef-{stage}"


def first_screen_state(study_name: str, stage: str, has_gt: bool, score: str = "score") -> dict:
    """Runs-table state of one stage: its finished trials, best first, with the columns that answer the question.

    ``score`` is the metric the trials are ranked by: ``score.final`` where
    the stage has final scores (the order of the leaderboard and
    ``best.yaml``), else ``score``.
    """
    columns = [_key("metrics", score)] + ([_key("metrics", "gt.f1")] if has_gt else []) \
        + [_key("tags", "quality"), _key("tags", "pipeline")]
    return {
        # a filter and a sort other than by time: MLflow lists the trials flat, not under their parent run
        "searchFilter": f"tags.`optuna.study` = '{study_name}/{stage}' and tags.`opsef.status` = 'complete' "
                        f"and attributes.run_name LIKE '{stage}#%'",
        "orderByKey": _key("metrics", score),
        "orderByAsc": False,
        "startTime": "ALL",
        "lifecycleFilter": "Active",
        "datasetsFilter": [],
        "modelVersionFilter": "All Runs",
        "selectedColumns": columns,
        "columnOrder": columns,
        "columnWidths": {**{c: _WIDTHS[c] for c in columns},
                         **({} if has_gt else {_key("tags", "pipeline"): _WIDE})},
        "runListHidden": False,
        "viewMaximized": False,
    }


def save_first_screen(client: MlflowClient, experiment_id: str, study_name: str, stage: str,
                      has_gt: bool | None = None) -> str:
    """Write (or update) the stage's saved view on the experiment; return its id (for ``viewStateShareKey``).

    ``has_gt=None``: a GT F1 column when any finished trial of the stage logged ``gt.f1`` and the stage
    does not rank by it already (objective ``gt_f1``: the score *is* the GT F1, and the pipeline gets the room).
    The trials are sorted by ``score.final`` when any of them has it.
    """
    objective = None
    parents = client.search_runs([experiment_id], f"tags.`optuna.study` = '{study_name}/{stage}' and "
                                                  f"attributes.run_name = '{stage}'", max_results=1)
    if parents:
        objective = parents[0].data.tags.get("objective")
    if has_gt is None:
        runs = client.search_runs([experiment_id], f"tags.`optuna.study` = '{study_name}/{stage}' and "
                                                   f"metrics.`gt.f1` > -1", max_results=1)
        has_gt = bool(runs) and objective != "gt_f1"
    finals = client.search_runs([experiment_id], f"tags.`optuna.study` = '{study_name}/{stage}' and "
                                                 f"metrics.`score.final` > -1e9", max_results=1)
    state = first_screen_state(study_name, stage, has_gt, "score.final" if finals else "score")
    key = view_id(stage)
    now = int(time.time() * 1000)
    exp = client.get_experiment(experiment_id)
    created = now
    old = exp.tags.get(VIEW_TAG + key)
    if old:
        try:
            created = int(json.loads(old).get("createdAt", now))
        except (ValueError, AttributeError):
            pass
    ranked = f" by {'GT F1' if objective == 'gt_f1' else objective}" if objective else ""
    envelope = {"name": f"opsef: {stage}, best first{ranked}", "createdAt": created, "updatedAt": now,
                "state": json.dumps(state)}
    client.set_experiment_tag(experiment_id, VIEW_TAG + key, json.dumps(envelope))
    return key


def default_host() -> str:
    """Where ``mode=ui`` listens: the IPv6 loopback ``::1``, else ``127.0.0.2``, else ``127.0.0.1``.

    All are reachable from this machine only. Not ``127.0.0.1`` first because
    MLflow 3.17 opens its Assistant panel over a third of the runs table on
    the first visit of a page whose host name is ``localhost`` or
    ``127.0.0.1`` (``isLocalServer`` in its UI code); at ``[::1]`` or
    ``127.0.0.2`` (Linux answers on all of 127.0.0.0/8; the server is then
    told to accept that host, see :func:`serve`) the table gets the whole width.
    """
    for host, family in (("::1", socket.AF_INET6), ("127.0.0.2", socket.AF_INET)):
        try:
            with socket.socket(family) as s:
                s.bind((host, 0))
            return host
        except OSError:
            continue
    return "127.0.0.1"


def ui_base(tracking_uri: str, port: int = DEFAULT_PORT) -> str:
    """The UI's address for a tracking URI: the server itself for ``http(s)://``, else where ``mode=ui`` serves."""
    if tracking_uri.startswith(("http://", "https://")):
        return tracking_uri.rstrip("/")
    return base_url(port, default_host())


def base_url(port: int = DEFAULT_PORT, host: str = "127.0.0.1") -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def experiment_url(base: str, experiment_id: str, view: str | None = None) -> str:
    """The runs table of an experiment in the classic ML layout (and the saved view ``view``)."""
    query = {"workflowType": "machine_learning"}
    if view:
        query["viewStateShareKey"] = view
    return f"{base.rstrip('/')}/#/experiments/{quote(str(experiment_id))}/runs?{urlencode(query)}"


def run_url(base: str, experiment_id: str, run_id: str) -> str:
    """One run's page (parameters, metrics, artifacts)."""
    return (f"{base.rstrip('/')}/#/experiments/{quote(str(experiment_id))}/runs/{quote(run_id)}"
            f"?workflowType=machine_learning")


def ui_command(study: str, extra: Iterable[str] = ()) -> str:
    """The command that serves the UI for a study (printed after a search)."""
    return " ".join(["python -m opsef_opt", f"study={study}", "mode=ui", *extra])


def _free_port(start: int, host: str = "127.0.0.1") -> int:
    for port in range(start, start + 100):
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return port
    raise OSError(f"no free port in {start}..{start + 99}")


def _absolute(uri: str) -> str:
    """A relative ``sqlite:///`` URI made absolute (the server may run elsewhere)."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + str(Path(uri[len("sqlite:///"):]).resolve())
    return uri


def serve(tracking_uri: str, artifact_root: Path, port: int = DEFAULT_PORT, host: str | None = None,
          timeout: float = 120) -> tuple[subprocess.Popen, str]:
    """Start ``mlflow server`` on the tracking store; return the process and its base URL once it answers."""
    host = host or default_host()
    port = _free_port(port, host)
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", _absolute(tracking_uri),
           "--artifacts-destination", str(artifact_root.resolve()), "--host", host, "--port", str(port),
           "--workers", "1"]
    if host not in ("127.0.0.1", "localhost", "::1"):  # MLflow's own checks accept only those by default
        cmd += ["--allowed-hosts", f"{host}:{port},{host}", "--cors-allowed-origins", base_url(port, host)]
    log = tempfile.TemporaryFile("w+")  # the server's messages, shown when it fails to start
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True)
    base = base_url(port, host)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log.seek(0)
            err = log.read().strip().splitlines()
            raise RuntimeError(f"mlflow server exited ({proc.returncode}): {err[-1] if err else 'no output'}")
        try:
            with urllib.request.urlopen(base + "/health", timeout=2) as r:
                if r.status == 200:
                    return proc, base
        except OSError:
            time.sleep(0.3)
    proc.terminate()
    raise RuntimeError(f"mlflow server did not answer at {base} within {timeout:.0f} s")


def study_views(client: MlflowClient, experiment_id: str, study_name: str, stages: Iterable[str]) -> dict[str, str]:
    """Save the first-screen view of every stage that has runs; stage -> view id, in the given order."""
    views = {}
    for stage in stages:
        if client.search_runs([experiment_id], f"tags.`optuna.study` = '{study_name}/{stage}'", max_results=1):
            views[stage] = save_first_screen(client, experiment_id, study_name, stage)
    return views
