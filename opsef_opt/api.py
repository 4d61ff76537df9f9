"""The Python face of opsef-opt: run a study, load its best pipeline, apply a pipeline to images.

Everything the command line does is reachable here without Hydra boilerplate;
the same files are written (Optuna storage, MLflow runs, ``leaderboard.csv``,
``best.yaml``, contact sheets), so a notebook and a terminal can continue each
other's study.

>>> import opsef_opt
>>> sorted(n for n in ("run_study", "load_pipeline", "apply", "Pipeline") if hasattr(opsef_opt, n))
['Pipeline', 'apply', 'load_pipeline', 'run_study']
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from opsef_opt.pipeline import Pipeline

__all__ = ["StudyResult", "compose_config", "overrides_from", "run_study", "load_pipeline", "apply",
           "stage_leaderboards", "write_leaderboard", "study_tags"]


def _value(value: Any) -> str:
    """A Python value in Hydra's override grammar."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float, np.integer, np.floating)):
        return repr(value.item() if hasattr(value, "item") else value)
    if isinstance(value, Path):
        value = str(value)
    if isinstance(value, str):
        plain = value and all(c.isalnum() or c in "-_./:+" for c in value) and not value[0].isdigit()
        return value if plain else "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    if isinstance(value, Mapping):
        return "{" + ",".join(f"{k}:{_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_value(v) for v in value) + "]"
    raise TypeError(f"cannot pass {type(value).__name__} {value!r} as a config value")


def overrides_from(study: str | None = None, overrides: Mapping[str, Any] | None = None) -> list[str]:
    """Command-line overrides for ``study`` and ``key=value`` pairs (dotted keys reach into the study).

    Examples
    --------
    >>> overrides_from("demo", {"n_trials": 5, "study.images.train": ["a*", "b*"], "storage": None})
    ['study=demo', 'n_trials=5', "study.images.train=['a*','b*']", 'storage=null']
    """
    out = [f"study={study}"] if study else []
    return out + [f"{k}={_value(v)}" for k, v in (overrides or {}).items()]


def compose_config(overrides: Sequence[str] = (), config_dir: str | Path | None = None):
    """The composed config for command-line ``overrides`` (the CLI's Hydra setup, written once).

    ``config_dir``: a folder of your own with ``study/<name>.yaml`` files, added to Hydra's search path.
    """
    from hydra import compose, initialize_config_module
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from opsef_opt.config import ConfigError
    from opsef_opt.resolvers import register_resolvers

    register_resolvers()
    extra = [f"hydra.searchpath=[file://{Path(config_dir).resolve()}]"] if config_dir else []
    try:
        with initialize_config_module(config_module="opsef_opt.conf", version_base="1.3"):
            return compose(config_name="config", overrides=[*overrides, *extra])
    except (HydraException, OmegaConfBaseException) as e:  # an unknown study or key: one line, like the CLI
        raise ConfigError(str(e).strip().splitlines()[0]) from None


def _settings(study: str, overrides: Mapping[str, Any], config_dir: str | Path | None, mode: str):
    from opsef_opt.config import validate

    return validate(compose_config(overrides_from(study, {"mode": mode, **overrides}), config_dir))


def stage_leaderboards(settings) -> dict:
    """Every stage in storage (also those a command did not run) -> its leaderboard DataFrame, tags included."""
    from opsef_opt.search.leaderboard import leaderboard
    from opsef_opt.search.study import stage_studies

    tags = study_tags(settings)
    return {name: leaderboard(s, tags) for name, s in stage_studies(settings).items()}


def write_leaderboard(settings, boards: Mapping[str, Any] | None = None) -> "Any":
    """Write ``<study>/leaderboard.csv`` over every stage in storage and return it as a DataFrame.

    ``boards``: the stages' leaderboards when the caller has them (:func:`stage_leaderboards`).
    """
    from opsef_opt.search.leaderboard import combined_leaderboard

    table = combined_leaderboard(stage_leaderboards(settings) if boards is None else boards)
    csv = settings.study_dir / "leaderboard.csv"
    csv.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(csv, index=False)
    return table


def study_tags(settings) -> dict[str, str]:
    """Quality tags of the study's runs, by MLflow run id (for the leaderboard)."""
    from opsef_opt.tags import trial_runs
    from opsef_opt.track import tracking_client

    client = tracking_client(settings.tracking_uri)
    exp = client.get_experiment_by_name(settings.study.name)
    if exp is None:
        return {}
    return {r.run_id: r.tag for r in trial_runs(client, exp.experiment_id, settings.study.name) if r.tag}


@dataclass
class StudyResult:
    """What a finished (or resumed) study gives back.

    ``leaderboard``: every evaluated pipeline of every stage, best first per
    stage (the CSV's table); ``best``: the pipeline of ``best.yaml`` (None
    when no trial completed); ``folder``: ``studies/<study>``;
    ``mlflow_uri``: the tracking store the runs are in.
    """

    name: str
    folder: Path
    leaderboard: Any
    best: Pipeline | None
    mlflow_uri: str
    studies: list = field(default_factory=list, repr=False)


def run_study(study: str = "demo", *, config_dir: str | Path | None = None, **overrides: Any) -> StudyResult:
    """Run (or continue) a study as ``python -m opsef_opt study=STUDY key=value ...`` would.

    ``overrides`` are the command line's keys (``n_trials=``, ``studies_dir=``,
    ``seed=``; dotted keys via ``**{"study.images.folder": path}``). Running it
    again continues the same study, exactly like the CLI. Raises
    :class:`~opsef_opt.config.ConfigError` for a bad config, and the search's
    own errors (``StudyError``, ``NeedTags``, ``StageFailed``) as exceptions.
    """
    from opsef_opt.backends import check_backends
    from opsef_opt.search.study import NeedTags, run_search

    settings = _settings(study, overrides, config_dir, "search")
    check_backends(settings.storage, settings.tracking_uri, settings.studies_dir)
    try:
        studies = run_search(settings)
    except NeedTags:  # the stages before the one waiting for tags are done: their table helps to tag
        write_leaderboard(settings)
        raise
    table = write_leaderboard(settings)
    best_file = settings.study_dir / "best.yaml"
    return StudyResult(settings.study.name, settings.study_dir, table,
                       Pipeline.from_yaml(best_file) if best_file.is_file() else None,
                       settings.tracking_uri, studies)


def load_pipeline(path: str | Path) -> Pipeline:
    """The pipeline of a ``best.yaml`` (or any pipeline file), reshaping included; call it on an array."""
    return Pipeline.from_yaml(path)


def _named_images(images: Any, axes: str | None) -> list[tuple[str, np.ndarray, str | None]]:
    from opsef_opt.io import read_image

    if isinstance(images, np.ndarray):
        return [("image", images, axes)]
    if isinstance(images, (str, Path)):
        path = Path(images)
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in (".tif", ".tiff", ".lif")) \
            if path.is_dir() else [path]
        if not files:
            raise FileNotFoundError(f"{path}: no .tif/.tiff/.lif images in this folder")
        out = []
        for f in files:
            read = read_image(f)
            for k, im in enumerate(read):
                out.append((f.stem if len(read) == 1 else f"{f.stem}#{k}", im.data, im.axes))
        return out
    if isinstance(images, Mapping):
        return [(str(k), np.asarray(v), axes) for k, v in images.items()]
    return [(f"image{k}", np.asarray(v), axes) for k, v in enumerate(images)]


def apply(pipeline: Pipeline | str | Path, images: Any, *, axes: str | None = None,
          progress: bool = True) -> dict[str, np.ndarray]:
    """Segment ``images`` with ``pipeline``: {image name: int32 labels}.

    ``images``: an array, a list or dict of arrays, an image file or a folder
    of TIFF/LIF files. For whole datasets with tiles, filters, measurements and
    ImageJ/QuPath exports use the apply mode: ``python -m opsef_opt study=NAME mode=apply``.
    """
    from tqdm.auto import tqdm

    if not isinstance(pipeline, Pipeline):
        pipeline = load_pipeline(pipeline)
    named = _named_images(images, axes)
    out: dict[str, np.ndarray] = {}
    for name, data, ax in tqdm(named, desc="apply", unit="image", disable=not progress or len(named) < 2):
        out[name] = pipeline(data, ax)
    return out
