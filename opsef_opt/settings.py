"""The validated settings of a run: plain, frozen values that every package may import.

They hold what the composed config says after :func:`opsef_opt.config.validate`
checked it; this module imports nothing from the rest of the package, so any
module can depend on it without an import cycle.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

__all__ = [
    "MODES", "TAGS", "DEFAULT_TAG_VALUES", "SAMPLERS", "PRUNERS", "STAGE_SPACES", "FORMATS",
    "ConfigError", "Range", "ImagesSpec", "ReshapeSpec", "StepOption", "ModelSpec", "SearchSpec",
    "ProxySetting", "ScoreSpec", "StageSpec", "StudySpec", "Settings",
]

MODES = ("search", "models", "tag", "apply", "reimport", "ui")
TAGS = ("correct", "over", "under", "failed")
DEFAULT_TAG_VALUES = {"correct": 1.0, "over": 0.4, "under": 0.4, "failed": 0.0}
SAMPLERS = ("auto", "grid", "tpe", "random")
PRUNERS = ("none", "median", "halving")
STAGE_SPACES = ("same", "refine", "top")
FORMATS = ("auto", "tiff", "lif")


class ConfigError(ValueError):
    """The configuration is invalid; the message names the key and the fix."""


@dataclass(frozen=True)
class Range:
    """A continuous or integer range to search, e.g. ``{low: 0.5, high: 3, log: false}``."""

    low: float
    high: float
    log: bool = False
    step: float | None = None


@dataclass(frozen=True)
class ImagesSpec:
    folder: Path | None
    pattern: str
    files: tuple[Path, ...]
    format: str
    channel: int | None
    axes: str | None
    z: tuple[int, int] | None
    lif_image: Any
    lif_t: int
    lif_mosaic: int | None
    labels_folder: Path | None
    labels_pattern: str
    train: tuple[str, ...] | None
    #: only some objects are labelled: score only the labelled ones (see opsef_opt.score.gt)
    labels_sparse: bool = False
    #: file-name globs of files to leave out of the study (e.g. label files in the image folder)
    exclude: tuple[str, ...] = ()
    #: regular expression matched against the whole image file stem; its groups fill labels_pattern
    #: ({1}, {2}, ... or {name}), e.g. 't(\\d+)' with 'man_seg{1}.tif' (Cell Tracking Challenge)
    labels_regex: str | None = None


@dataclass(frozen=True)
class ReshapeSpec:
    bin: int = 1
    scale: float = 1.0
    substack: int | None = None
    tile_size: tuple[int, ...] | None = None
    tile_overlap: int = 0


@dataclass(frozen=True)
class StepOption:
    """One searchable option of a preprocessing slot.

    ``fixed`` holds concrete parameter values; ``ranges`` the parameters the
    sampler tunes within a range. ``label`` is stable and readable, e.g.
    ``median(size=3)``, and is what Optuna and MLflow record.
    """

    slot: str
    name: str
    fixed: Mapping[str, Any]
    ranges: Mapping[str, Range]
    label: str


@dataclass(frozen=True)
class ModelSpec:
    """A model entry of the search space: a registered family plus its settings."""

    label: str
    family: str
    init: Mapping[str, Any]
    fixed: Mapping[str, Any]
    choices: Mapping[str, tuple]
    ranges: Mapping[str, Range]
    #: when its weights are missing, drop it from the search (with a message) instead of failing its trials
    optional: bool = False


@dataclass(frozen=True)
class SearchSpec:
    sampler: str
    preprocess: Mapping[str, tuple[StepOption, ...]]
    models: tuple[ModelSpec, ...]


@dataclass(frozen=True)
class ProxySetting:
    """One registered proxy: its weight in the combined score and its options."""

    name: str
    weight: float
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ScoreSpec:
    """How trials are scored (``study.score``).

    ``objective`` is what the search maximises: ``auto`` (ground truth when
    every image has labels, else the combined proxy), ``gt_<metric>``,
    ``proxy`` (the combined proxy), ``proxy.<name>`` (one proxy), ``tags``
    (human quality tags, the learned tag model for untagged runs) or
    ``tag_model`` (the learned tag model for every run).
    """

    objective: str = "auto"
    iou: float = 0.5
    aggregate: str = "per_image"
    proxies: tuple[ProxySetting, ...] = ()
    gate: str | None = "sanity"
    tag_values: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_TAG_VALUES))
    min_tagged: int = 10
    #: how ``proxy.final`` combines the proxies: ``rank`` (their percentiles in the pool, with learned
    #: coefficients: :mod:`opsef_opt.score.proxies.rank`; the default, chosen by leave-one-dataset-out) or
    #: ``mean`` (the weighted mean of their values; what a study that sets proxy weights of its own gets)
    combination: str = "rank"

    @property
    def weights(self) -> dict[str, float]:
        return {p.name: p.weight for p in self.proxies}

    def options(self, name: str) -> dict[str, Any]:
        return next((dict(p.options) for p in self.proxies if p.name == name), {})


@dataclass(frozen=True)
class StageSpec:
    """One stage of a study: its own Optuna study ``<study>/<name>`` and MLflow parent run."""

    name: str
    objective: str
    sampler: str
    n_trials: int
    #: none | median | halving: stop a trial after its first images when it is clearly worse
    pruner: str = "none"
    #: the earlier stage whose best pipelines this stage starts from
    source: str | None = None
    #: same (the study's space) | refine (around the source's top_k) | top (exactly the source's top_k)
    space: str = "same"
    top_k: int = 5
    #: train (study.images.train, or all when not set) | all
    images: str = "train"
    #: the stage's own space (its ``search`` merged over the study's), e.g. a coarse subset; None: the study's
    search: SearchSpec | None = None

    def own_space(self, study_space: "SearchSpec") -> "SearchSpec":
        """The space a ``space: same`` stage searches."""
        return self.search if self.search is not None else study_space


@dataclass(frozen=True)
class StudySpec:
    name: str
    description: str
    data_source: str
    images: ImagesSpec
    reshape: ReshapeSpec
    search: SearchSpec
    score: ScoreSpec
    stages: tuple[StageSpec, ...] = ()
    #: study.apply (opsef_opt.batch.config.ApplySpec): the apply mode's tiles, filters, classes, exports
    apply: Any = None


@dataclass(frozen=True)
class Settings:
    """Everything one run needs, validated."""

    mode: str
    study: StudySpec
    studies_dir: Path
    n_trials: int
    seed: int
    storage: str
    tracking_uri: str
    heartbeat_interval: int
    heartbeat_grace: int
    log_artifacts: bool
    leaderboard_rows: int
    #: run only this stage (None: every stage in order)
    stage: str | None = None
    #: mode=tag: import tags from this CSV instead of asking
    tags_csv: Path | None = None
    #: mode=tag: how many untagged runs to show and ask about at once
    tag_batch: int = 12
    #: mode=tag: "which is better, A or B?" questions after each batch of tags
    tag_pairs: int = 3
    #: worker processes on this machine sharing each stage
    n_workers: int = 1
    #: delete this stage's trials and run it again
    restart_stage: str | None = None
    #: mode=apply: this pipeline file instead of the study's best.yaml
    pipeline: Path | None = None
    #: mode=apply: segment the images of this folder (or file) instead of the study's
    input: Path | None = None
    #: mode=apply/reimport: name of the output folder under studies/<study>/apply/
    apply_run: str | None = None
    #: mode=apply: address of a running Dask scheduler (tcp://host:port); None starts a local cluster
    dask_scheduler: str | None = None
    #: mode=reimport: folder with edited label images or ImageJ ROI zips
    edited: Path | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def stages_to_run(self) -> tuple[StageSpec, ...]:
        if self.stage is None:
            return self.study.stages
        return tuple(s for s in self.study.stages if s.name == self.stage)

    @property
    def study_dir(self) -> Path:
        return self.studies_dir / self.study.name
