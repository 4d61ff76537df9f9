"""The MLflow UI's first screen, in a real browser: the printed link shows which pipeline won and how good it is.

A demo study runs through the CLI, ``mode=ui`` starts a real ``mlflow
server`` and prints the link; headless Chromium opens it at 1600 px and the
test reads the rendered runs table. The screenshot is the one the README
shows (tests/screenshots/mlflow_first_screen.png).
"""
from __future__ import annotations

import os
import shutil
import signal
import time

import pandas as pd
import pytest

from conftest import REPO, TEST_CONF, popen_cli, run_cli

TINY = ["study=tiny", f"hydra.searchpath=[file://{TEST_CONF}]"]
SCREENSHOT = REPO / "tests" / "screenshots" / "mlflow_first_screen.png"
WIDTH, HEIGHT = 1600, 900


def _browser():
    """Headless Chromium through Selenium; skipped (with the reason) where it is not installed, except in CI."""
    chromium = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)),
                    None)
    driver = shutil.which("chromedriver")
    try:
        from selenium import webdriver
    except ImportError:
        webdriver = None
    missing = [what for what, ok in (("chromium", chromium), ("chromedriver", driver), ("selenium", webdriver))
               if not ok]
    if missing:
        reason = (f"{', '.join(missing)} not installed (apt-get install chromium chromium-driver; "
                  f"pip install -e '.[test]'); see .ci/chromium.sh")
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                f"--window-size={WIDTH},{HEIGHT + 200}"):
        options.add_argument(arg)
    browser = webdriver.Chrome(options=options, service=Service(driver))
    # the page itself 1600 px wide (a window's frame would take some of it)
    browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                            {"width": WIDTH, "height": HEIGHT, "deviceScaleFactor": 1, "mobile": False})
    return browser


#: every cell of the runs table's first row (MLflow's table is an ag-grid: one row element per pinned part),
#: with its column, its text, where that text is drawn, the visible part of the table, and whether the text is cut
_FIRST_ROW = """
const cells = [];
for (const row of document.querySelectorAll('[role=row][row-index="0"]')) {
  const part = row.closest('.ag-center-cols-viewport, .ag-pinned-left-cols-container, .ag-body-viewport') || row;
  const shown = part.getBoundingClientRect();
  for (const cell of row.querySelectorAll('[col-id]')) {
    const range = document.createRange();
    range.selectNodeContents(cell);
    const r = range.getBoundingClientRect();
    const cut = [cell, ...cell.querySelectorAll('*')].some(e => e.scrollWidth > e.clientWidth + 1);
    cells.push({col: cell.getAttribute('col-id'), text: cell.innerText.trim(), left: r.left, right: r.right,
                top: r.top, bottom: r.bottom, shown_left: shown.left, shown_right: shown.right, cut: cut});
  }
}
return cells;
"""


def _ui_url(proc, timeout: float = 120) -> tuple[str, list[str]]:
    """The first-screen link ``mode=ui`` prints (read from its output as a user would)."""
    lines, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            if proc.poll() is not None:
                break
            continue
        lines.append(line.rstrip())
        if "viewStateShareKey=" in line:
            return line.split()[0], lines
    raise AssertionError("mode=ui printed no link:\n" + "\n".join(lines))


@pytest.mark.slow
def test_first_screen_shows_best_pipeline_score_gt_and_tag(tmp_path):
    browser = _browser()
    try:
        # proxy objective: the score the search ranks by and the ground-truth F1 are different numbers
        r = run_cli(*TINY, "n_trials=6", "+study.score.objective=proxy", cwd=tmp_path)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "mode=ui" in r.stdout and "viewStateShareKey=opsef-search" in r.stdout, r.stdout
        board = pd.read_csv(tmp_path / "studies" / "tiny" / "leaderboard.csv")
        best = board.iloc[0]
        (tmp_path / "tags.csv").write_text(f"run_id,tag\n{best['mlflow_run_id']},correct\n")
        r = run_cli(*TINY, "mode=tag", f"tags_csv={tmp_path / 'tags.csv'}", cwd=tmp_path)
        assert r.returncode == 0, r.stdout + r.stderr

        proc = popen_cli(*TINY, "mode=ui", cwd=tmp_path)
        try:
            url, printed = _ui_url(proc)
            assert "workflowType=machine_learning" in url
            browser.get(url)
            from selenium.webdriver.support.ui import WebDriverWait

            trial = str(best["trial"])  # the leaderboard names trials as MLflow does (search#4), or numbers them
            name = trial if "#" in trial else f"search#{int(trial)}"

            def ready(b):  # the saved view applied: first row is the best trial, with its pipeline column
                cells = b.execute_script(_FIRST_ROW)
                texts = [line for c in cells for line in c["text"].splitlines()]  # the name cell has a colour too
                return cells if name in texts and best["pipeline"] in texts else False

            try:
                cells = WebDriverWait(browser, 90, poll_frequency=0.25).until(ready)
            except Exception:
                browser.save_screenshot(str(tmp_path / "failed.png"))
                raise AssertionError(f"runs table never showed {name} first; page text:\n"
                                     + browser.find_element("tag name", "body").text[:2000])
            SCREENSHOT.parent.mkdir(exist_ok=True)
            browser.save_screenshot(str(SCREENSHOT))
            body = browser.find_element("tag name", "body").text
        finally:
            proc.send_signal(signal.SIGINT)
            out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0, out
    finally:
        browser.quit()

    by_col = {c["col"]: c for c in cells}
    score = next(c for col, c in by_col.items() if "score" in col and "source" not in col)
    gt = next(c for col, c in by_col.items() if "gt.f1" in col)
    tag = next(c for col, c in by_col.items() if "quality" in col)
    pipeline = next(c for col, c in by_col.items() if "pipeline" in col)
    # the values of the best trial, as the search and MLflow logged them: the table ranks by the final score,
    # as the leaderboard does (the proxy objective has one)
    assert "score.final" in next(col for col in by_col if "score" in col and "source" not in col)
    assert abs(float(score["text"]) - best["score_final"]) < 1e-9
    from mlflow import MlflowClient

    run = MlflowClient(f"sqlite:///{tmp_path}/studies/mlflow.db").get_run(best["mlflow_run_id"])
    assert abs(float(gt["text"]) - run.data.metrics["gt.f1"]) < 1e-9
    assert tag["text"] == "correct" and pipeline["text"] == best["pipeline"]
    # all on the first screen: inside 1600 x 900, nothing cut, no horizontal scrolling needed
    for cell in (score, gt, tag, pipeline):
        assert 0 <= cell["left"] and cell["right"] <= WIDTH and 0 < cell["top"] and cell["bottom"] <= HEIGHT, cell
        assert cell["shown_left"] <= cell["left"] and cell["right"] <= cell["shown_right"], cell
        assert not cell["cut"], cell
    # the classic ML layout (runs, metrics), not MLflow 3's GenAI one (traces, evaluations)
    assert "matching runs" in body and "Evaluations" not in body
    # trials only, flat: the stage's parent run is not a row of its own
    assert f"{len(board)} matching runs" in body


@pytest.mark.parametrize(("objective", "columns", "name"), [
    ("proxy", ["metrics.`score`", "metrics.`gt.f1`", "tags.`quality`", "tags.`pipeline`"],
     "opsef: coarse, best first by proxy"),
    ("gt_f1", ["metrics.`score`", "tags.`quality`", "tags.`pipeline`"], "opsef: coarse, best first by GT F1"),
])
def test_saved_view_per_stage_sorts_filters_and_picks_columns(tmp_path, objective, columns, name):
    """The view's state as MLflow's UI reads it: an experiment tag with a JSON envelope around the table state."""
    import json

    from mlflow import MlflowClient

    from opsef_opt.track import Tracker
    from opsef_opt.ui import VIEW_TAG, experiment_url, study_views

    tracker = Tracker(f"sqlite:///{tmp_path}/mlflow.db", tmp_path / "mlartifacts", "s")
    parent = tracker.open_parent(None, "coarse", {"optuna.study": "s/coarse", "objective": objective})
    run = tracker.start_trial(parent, 3, "s/coarse", {"model": "classical"}, {"pipeline": "none | classical()"})
    tracker.log(run, metrics={"score": 0.5, "gt.f1": 0.4}, tags={"opsef.status": "complete"})
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    assert client.get_run(run).info.run_name == "coarse#3"
    exp = client.get_experiment(tracker.experiment_id)
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"

    views = study_views(client, tracker.experiment_id, "s", ["coarse", "fine"])
    assert views == {"coarse": "opsef-coarse"}  # no view for a stage without runs
    envelope = json.loads(client.get_experiment(tracker.experiment_id).tags[VIEW_TAG + "opsef-coarse"])
    assert envelope["name"] == name and isinstance(envelope["createdAt"], int)
    state = json.loads(envelope["state"])
    assert state["selectedColumns"] == columns and state["columnOrder"] == columns
    assert (state["orderByKey"], state["orderByAsc"]) == ("metrics.`score`", False)
    # the filter finds the trial and not the stage's parent run (MLflow's own search syntax)
    found = client.search_runs([tracker.experiment_id], state["searchFilter"])
    assert [r.info.run_id for r in found] == [run]
    # once the stage-end re-score has logged final scores, the view ranks by them
    tracker.log(run, metrics={"score.final": 0.7})
    study_views(client, tracker.experiment_id, "s", ["coarse"])
    state = json.loads(json.loads(client.get_experiment(tracker.experiment_id).tags[VIEW_TAG + "opsef-coarse"])["state"])
    assert state["orderByKey"] == "metrics.`score.final`" and state["selectedColumns"][0] == "metrics.`score.final`"
    url = experiment_url("http://[::1]:5000", tracker.experiment_id, views["coarse"])
    assert url == (f"http://[::1]:5000/#/experiments/{tracker.experiment_id}/runs?"
                   "workflowType=machine_learning&viewStateShareKey=opsef-coarse")
