"""Config validation: every mistake is named before any work starts."""
from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_module

from opsef_opt.config import ConfigError, validate
from opsef_opt.resolvers import register_resolvers

from conftest import TEST_CONF, run_cli


def _compose(*overrides: str):
    register_resolvers()
    with initialize_config_module(config_module="opsef_opt.conf", version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def test_demo_validates(tmp_path):
    s = validate(_compose(), base=tmp_path)
    assert s.study.name == "demo"
    assert s.study.search.sampler == "grid"
    assert s.storage == "sqlite:///studies/demo/optuna.db"
    assert s.study.images.folder.is_dir()
    labels = [o.label for o in s.study.search.preprocess["filter"]]
    assert labels == ["none", "median(size=3)", "gaussian(sigma=1.0)"]


def test_overrides_reach_settings(tmp_path):
    s = validate(_compose("n_trials=3", "seed=7", f"studies_dir={tmp_path}"), base=tmp_path)
    assert (s.n_trials, s.seed) == (3, 7)
    assert s.storage == f"sqlite:///{tmp_path}/demo/optuna.db"


@pytest.mark.parametrize(
    "override, expected",
    [
        ("study.search.preprocess.filter=[{name: median, size: 3.5}]", "must be an integer"),
        ("study.search.preprocess.filter=[{name: median, size: 4}]", "must be odd"),
        ("study.search.preprocess.filter=[{name: medain, size: 3}]", "name='medain': unknown filter step; allowed: gaussian, mean, median, none"),
        ("study.search.preprocess.filter=[{name: median, kernel: 3}]", "unknown parameter of filter step 'median'"),
        ("+study.search.preprocess.blur=[none]", "study.search.preprocess.blur: unknown key"),
        ("+study.search.models.cellpos={}", "unknown model family 'cellpos'"),
        ("+study.search.models.classical.params.threshold=[otsu, magic]", "'magic': not allowed"),
        ("~study.search.models.classical.params.min_distance;+study.search.models.classical.params.min_distance={low: 2, high: 9}", "sampler=grid: the space has {low, high} ranges"),
        ("study.images.folder=no/such/folder", "study.images.folder='"),
        ("+study.imagez=1", "study.imagez: unknown key"),
        ("+study.reshape.tile.size=[0, 64]", "study.reshape.tile.size"),
        ("study.score.objective=f2", "study.score.objective='f2'"),
        ("+study.score.proxies.consensos={weight: 1}", "study.score.proxies.consensos: unknown key"),
        ("+study.score.proxies.consensus={weight: -1}", "study.score.proxies.consensus.weight=-1"),
        ("+study.score.proxies.stability={perturbations: 3}", "study.score.proxies.stability.perturbations"),
        ("+study.score.tags={values: {perfect: 1.0}}", "study.score.tags.values.perfect: unknown tag"),
        ("+study.score.aggregate=sum", "study.score.aggregate='sum'"),
        ("+study.stages={a: {objective: tagz}}", "study.stages.a.objective='tagz'"),
        ("+study.stages={a: {}};stage=b", "stage='b': the study has the stages a"),
        ("~study.search.models.classical.params.min_distance;+study.search.models.classical.params.min_distance={low: 2, high: 9};study.search.sampler=tpe;+study.stages={coarse: {sampler: grid}}", "study.stages.coarse.sampler=grid"),
        ("+tags_csv=nope.csv", "tags_csv="),
        ("+study.stages={a: {pruner: mean}}", "study.stages.a.pruner='mean'"),
        ("+study.stages={a: {space: refine}}", "study.stages.a.space=refine: needs 'from"),
        ("+study.stages={a: {}, b: {from: c, space: top}}", "study.stages.b.from='c': must name an earlier stage (a)"),
        ("+study.stages={a: {}, b: {from: a, space: refine, sampler: grid}}", "a refined space has continuous ranges"),
        ("+study.stages={a: {images: some}}", "study.stages.a.images='some'"),
        ("restart_stage=nope", "restart_stage='nope': the study has the stages search"),
        ("+study.images.labels.regex='t(['", "study.images.labels.regex='t([': not a valid regular expression"),
        ("+study.images.labels.regex=abc", "study.images.labels.regex='abc': needs a group"),
        ("+study.images.labels.pattern='{id}.tif'", "study.images.labels.pattern='{id}.tif': unknown field {id}; "
                                                    "allowed: {stem} (add labels.regex to use its groups)"),
        ("+study.images.labels.pattern='{stem}_{2}.tif';+study.images.labels.regex='t([0-9]+)'",
         "study.images.labels.pattern='{stem}_{2}.tif': unknown field {2}; allowed: {stem}, {0}, {1}"),
        ("+study.images.labels.pattern=labels.tif", "study.images.labels.pattern='labels.tif': must contain '{stem}'"),
        ("+study.images.labels.match=x", "study.images.labels.match: unknown key; allowed keys: folder, pattern, "
                                         "regex, sparse"),
        ("+study.images.exclude=[3]", "study.images.exclude=[3]: expected a list of file-name globs"),
    ],
)
def test_bad_values_are_named(tmp_path, override, expected):
    with pytest.raises(ConfigError) as err:
        validate(_compose(*override.split(";")), base=tmp_path)
    assert expected in str(err.value)


def test_score_and_stages_defaults(tmp_path):
    s = validate(_compose(), base=tmp_path)
    assert [st.name for st in s.study.stages] == ["search"]
    assert s.study.stages[0].sampler == "grid" and s.study.stages[0].n_trials == s.n_trials
    score = s.study.score
    assert score.objective == "auto" and score.gate == "sanity" and score.aggregate == "per_image"
    assert {"consensus", "stability", "shape", "contrast", "confidence", "sanity"} <= set(score.weights)
    assert score.tag_values == {"correct": 1.0, "over": 0.4, "under": 0.4, "failed": 0.0}
    s = validate(_compose("+study.stages={coarse: {n_trials: 4}, taste: {objective: tags, sampler: tpe}}",
                          "stage=taste", "+study.score.tags={values: {over: 0.5}}",
                          "+study.score.proxies.consensus={weight: 2}"), base=tmp_path)
    assert [(st.name, st.objective, st.sampler, st.n_trials) for st in s.stages_to_run()] == [
        ("taste", "tags", "tpe", s.n_trials)]
    assert s.study.stages[0].n_trials == 4
    assert s.study.score.tag_values["over"] == 0.5 and s.study.score.weights["consensus"] == 2.0


def test_exclude_and_label_rules_reach_settings(tmp_path):
    images = validate(_compose(), base=tmp_path).study.images
    assert images.exclude == () and images.labels_pattern == "{stem}.tif" and images.labels_regex is None
    images = validate(_compose("+study.images.exclude=['*_labels.tif', 'notes*']",
                               "+study.images.labels.regex='t(?P<id>[0-9]+)'",
                               "+study.images.labels.pattern='man_seg{id}.tif'"), base=tmp_path).study.images
    assert images.exclude == ("*_labels.tif", "notes*")
    assert (images.labels_regex, images.labels_pattern) == ("t(?P<id>[0-9]+)", "man_seg{id}.tif")
    images = validate(_compose("+study.images.exclude='*_mask.tif'"), base=tmp_path).study.images
    assert images.exclude == ("*_mask.tif",)


def test_missing_folder_error_names_data_source(tmp_path):
    cfg = _compose("study.images.folder=nowhere", "+study.data_source='Download BBBC038 into data/bbbc038'")
    with pytest.raises(ConfigError, match="Download BBBC038"):
        validate(cfg, base=tmp_path)


def test_cli_unknown_top_level_key_exits_nonzero_and_writes_nothing(tmp_path):
    r = run_cli("n_trails=3", cwd=tmp_path, timeout=120)
    assert r.returncode != 0
    assert "n_trails" in r.stderr
    assert list(tmp_path.iterdir()) == []


def test_cli_bad_study_value_exits_2_and_writes_nothing(tmp_path):
    r = run_cli("study.search.preprocess.filter=[{name: median, size: 3.5}]", cwd=tmp_path, timeout=120)
    assert r.returncode == 2, r.stderr
    assert "study.search.preprocess.filter[0].size=3.5: must be an integer" in r.stderr
    assert list(tmp_path.iterdir()) == []


def test_cli_unknown_study_lists_choices(tmp_path):
    r = run_cli("study=kidny", cwd=tmp_path, timeout=120)
    assert r.returncode != 0
    assert "kidny" in r.stderr and "demo" in r.stderr
    assert list(tmp_path.iterdir()) == []


def test_tests_study_config_is_found_through_searchpath(tmp_path):
    cfg = None
    register_resolvers()
    with initialize_config_module(config_module="opsef_opt.conf", version_base="1.3"):
        cfg = compose(config_name="config", overrides=["study=tiny", f"hydra.searchpath=[file://{TEST_CONF}]"])
    assert validate(cfg, base=Path(tmp_path)).study.name == "tiny"


@pytest.mark.parametrize(
    "override, expected",
    [
        ("+study.apply.tiles=1", "study.apply.tiles: unknown key"),
        ("+study.apply.tile={size: 100, overlap: 50}", "must be larger than 2 x overlap"),
        ("+study.apply.filter={area: [50, 10]}", "min 50.0 is greater than max 10.0"),
        ("+study.apply.filter={area: 5}", "expected [min, max]"),
        ("+study.apply.classify={mask: {sigma: 2}}", "either 'channel'"),
        ("+study.apply.classify={mask: {channel: 1}, rule: nearest}", "study.apply.classify.rule='nearest'"),
        ("+study.apply.classify={mask: {folder: no_such_masks}}", "folder not found"),
        ("+study.apply.analysis={cluster: {method: dbscan}}", "expected one of kmeans, agglomerative"),
        ("+study.apply.export={roi: true}", "study.apply.export.roi: unknown key"),
        ("mode=reimport", "needs edited="),
        ("mode=apply ; dask_scheduler=localhost", "expected an address like tcp://"),
        ("mode=apply ; pipeline=missing.yaml", "not found"),
    ],
)
def test_apply_settings_are_validated_before_work(tmp_path, override, expected):
    with pytest.raises(ConfigError) as e:
        validate(_compose(*override.split(" ; ")), base=tmp_path)
    assert expected in str(e.value)


def test_apply_defaults(tmp_path):
    s = validate(_compose("mode=apply"), base=tmp_path)
    a = s.study.apply
    assert (a.tile.size, a.tile.overlap) == (2048, 96) and a.filter == {} and a.classify is None
    assert a.export.imagej and a.export.qupath and a.analysis.pca
