"""The tag queue, comparisons ("A is better than B") and the model-or-proxy check, on constructed cases."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.stats import spearmanr

from opsef_opt.score.tag_model import (
    NotEnoughTags, beats_proxy, fit_tag_model, normalize_comparisons, proxy_agreement, top_pick,
)
from opsef_opt.tags.queue import analyst_tag, choose_pairs, choose_runs, simulate_tagging


def _pool(n: int = 40, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = pd.DataFrame({"proxy.shape": rng.uniform(0, 1, n), "proxy.contrast": rng.normal(size=n),
                      "proxy.stability": rng.uniform(0, 1, n), "log1p.n_objects_mean": rng.uniform(2, 5, n)})
    return X, rng.uniform(0, 1, n)


def test_queue_never_returns_tagged_runs_and_is_deterministic():
    X, proxy = _pool()
    tagged = {int(i): t for i, t in zip(np.argsort(-proxy)[:8], ["correct", "over", "failed", "correct"] * 2)}
    comparisons = [(1, 2), (3, 4, 0.5)]
    got = choose_runs(X, proxy, tagged, comparisons, k=10, seed=3)
    assert len(got) == len(set(got)) == 10
    assert not set(got) & set(tagged)
    assert got == choose_runs(X, proxy, tagged, comparisons, k=10, seed=3)
    # asking for more than are untagged returns every untagged run once
    rest = choose_runs(X, proxy, tagged, comparisons, k=100, seed=0)
    assert sorted(rest) == sorted(set(range(len(X))) - set(tagged))
    assert choose_runs(X, proxy, {i: "correct" for i in range(len(X))}, [], k=3) == []


def test_queue_cold_start_takes_the_proxy_top_then_an_unlike_run():
    X, proxy = _pool(30, seed=1)
    best = int(np.argmax(proxy))
    twin = int(np.argsort(proxy)[-5])  # a near-copy of the best, with a high proxy
    X.loc[twin] = X.loc[best] + 1e-3
    proxy[twin] = proxy[best] - 1e-3
    got = choose_runs(X, proxy, {}, [], k=2, seed=0)
    assert got[0] == best and got[1] != twin


def _disagreement_case():
    """12 tagged runs teach 'quality = proxy.shape'; the proxy ignores it. Untagged: 4 runs the proxy
    ranks top and the model too (A), 4 the proxy ranks top and the model bottom (D), and filler."""
    rng = np.random.default_rng(0)
    rows, tags = [], {}
    for i in range(12):
        f = 0.05 + 0.9 * i / 11
        rows.append({"proxy.shape": f, "proxy.noise": rng.normal(), "proxy": rng.uniform(0.2, 0.5)})
        tags[i] = "correct" if f > 0.5 else "failed"
    for f in (0.8,) * 4 + (0.2,) * 4:
        rows.append({"proxy.shape": f + rng.normal(0, 0.02), "proxy.noise": rng.normal(),
                     "proxy": 0.9 + rng.normal(0, 0.01)})
    for _ in range(20):
        rows.append({"proxy.shape": rng.uniform(0.3, 0.7), "proxy.noise": rng.normal(), "proxy": rng.uniform(0.1, 0.4)})
    X = pd.DataFrame(rows)
    return X, X["proxy"].to_numpy(), tags, list(range(12, 16)), list(range(16, 20))


def test_queue_asks_where_proxy_and_model_disagree_before_where_they_agree():
    X, proxy, tags, agree, disagree = _disagreement_case()
    model = fit_tag_model(X, [tags.get(i) for i in range(len(X))], min_tagged=4)
    value = model.model_value(X)
    assert value[agree].min() > value[disagree].max()  # the model does disagree with the proxy on D
    got = choose_runs(X, proxy, tags, [], k=2, seed=0)
    assert set(got) <= set(disagree), got
    # without the tags there is no model to disagree with: the proxy's top comes first
    cold = choose_runs(X, proxy, {}, [], k=1, seed=0)
    assert cold == [int(np.argmax(proxy))]


def test_pairs_put_the_leader_against_challengers_it_has_not_met():
    X, proxy = _pool()
    order = [int(i) for i in np.argsort(-proxy)]
    pairs = choose_pairs(X, proxy, {}, [], k=3, seed=0)
    assert len(pairs) == 3 and all(a == order[0] for a, _ in pairs)
    assert [b for _, b in pairs] == order[1:4]
    # the leader lost to its first challenger: the challenger leads, the pair is not asked again
    pairs2 = choose_pairs(X, proxy, {}, [(order[1], order[0])], k=3, seed=0)
    assert all(a == order[1] for a, _ in pairs2)
    assert all({a, b} != {order[0], order[1]} for a, b in pairs2)
    assert order[0] not in {b for _, b in pairs2}  # ruled out by the judgement


def test_pairs_defend_the_run_that_would_be_chosen_now():
    """The leader is the final rule's choice (model when it beats the proxy in CV), not a blend of rankings."""
    X, proxy, tags, agree, disagree = _disagreement_case()
    model = fit_tag_model(X, [tags.get(i) for i in range(len(X))], min_tagged=10, seed=0, check_proxy=True)
    assert not model.use_proxy  # the case exercises the model path: the tags teach what the proxy ignores
    chosen = top_pick(model.predict_value(X), tags, [])
    assert chosen != int(np.argmax(proxy)) and chosen not in disagree  # not the proxy's choice
    pairs = choose_pairs(X, proxy, tags, [], k=2, seed=0)
    assert pairs and all(a == chosen for a, _ in pairs)
    assert chosen not in {b for _, b in pairs}


def test_model_from_comparisons_only_ranks_a_constructed_set():
    rng = np.random.default_rng(3)
    n = 16
    q = np.arange(n) / (n - 1)  # the analyst's (hidden) quality
    X = pd.DataFrame({"proxy.shape": q, "proxy.size": q ** 2 + rng.normal(0, 0.02, n),
                      "proxy": 1 - q + rng.normal(0, 0.01, n)})  # a proxy that gets it backwards
    pairs = [(i + 1, i) for i in range(0, n - 1, 2)] + [(i + 2, i) for i in range(0, n - 2, 3)]
    with pytest.raises(NotEnoughTags, match=r"or at least 5 comparisons \(4 given\)"):
        fit_tag_model(X, [None] * n, comparisons=pairs[:4])
    model = fit_tag_model(X, [None] * n, comparisons=pairs)
    assert model.classes == [] and model.n_pairs == len(pairs) and model.predict_tag(X) == [None] * n
    assert model.describe().startswith(f"tag model: 0 tagged runs and {len(pairs)} comparisons")
    value = model.predict_value(X)
    assert spearmanr(value, q).statistic > 0.95
    assert int(np.argmax(value)) == n - 1
    assert spearmanr(proxy_values := X["proxy"], q).statistic < -0.9 and proxy_values.iloc[-1] < proxy_values.iloc[0]


def test_comparisons_break_ties_the_tags_cannot():
    """Tags call runs 0-5 all 'correct'; comparisons say 3 is the best of them."""
    rng = np.random.default_rng(1)
    n = 20
    X = pd.DataFrame({"proxy.shape": rng.uniform(size=n), "proxy.stability": rng.uniform(size=n),
                      "proxy": np.r_[np.linspace(0.9, 0.8, 6), rng.uniform(0.1, 0.5, n - 6)]})
    tags = ["correct"] * 6 + ["failed"] * 4 + [None] * (n - 10)
    without = fit_tag_model(X, tags, min_tagged=4)
    assert int(np.argmax(without.model_value(X))) != 3
    pairs = [(3, 0), (3, 1), (3, 2), (3, 4), (3, 5)]
    with_pairs = fit_tag_model(X, tags, min_tagged=4, comparisons=pairs)
    assert int(np.argmax(with_pairs.model_value(X))) == 3
    assert "10 tagged runs (correct 6, failed 4) and 5 comparisons" in with_pairs.describe()


def test_beats_proxy_is_false_when_the_tags_follow_the_proxy_exactly():
    """The model can at best tie the proxy here (its features are the proxy): a tie keeps the proxy."""
    rng = np.random.default_rng(3)
    p = np.sort(rng.uniform(0, 1, 24))
    X = pd.DataFrame({"proxy.final": p, "proxy.noise": rng.normal(size=24)})
    tags = ["failed" if x < 0.3 else ("under" if x < 0.6 else "correct") for x in p]
    check = proxy_agreement(X, tags)
    assert check.proxy == 1.0 and check.model <= 1.0 and check.n_pairs > 100
    assert not check.model_wins and not beats_proxy(X, tags, p)
    model = fit_tag_model(X, tags, min_tagged=4, check_proxy=True)
    assert model.use_proxy
    np.testing.assert_array_equal(model.predict_value(X), p)
    assert model.describe().endswith("ranks by the proxy")
    # the same tags against a proxy that gets them backwards: the model wins
    anti = 1 - p + rng.normal(0, 0.05, 24)
    assert beats_proxy(X, tags, anti)
    model = fit_tag_model(X.assign(**{"proxy.final": anti}), tags, min_tagged=4, check_proxy=True)
    assert not model.use_proxy and model.describe().endswith("ranks by the tag model")


def test_beats_proxy_needs_cross_validation_not_a_fit_to_the_tags():
    """Tags that no feature explains: fitted in-sample the model would reproduce them, held out it cannot."""
    rng = np.random.default_rng(5)
    n = 30
    X = pd.DataFrame({"proxy.shape": rng.uniform(size=n), "proxy.noise": rng.normal(size=n)})
    tags = list(rng.choice(["correct", "failed"], n))
    proxy = np.where(np.array(tags) == "correct", 0.6, 0.4) + rng.normal(0, 0.15, n)  # informative, not perfect
    check = proxy_agreement(X, tags, proxy)
    assert 0.7 < check.proxy < 0.95
    in_sample = fit_tag_model(X.assign(**{"proxy.final": proxy}), tags, min_tagged=4).model_value(
        X.assign(**{"proxy.final": proxy}))
    from opsef_opt.score.tag_model import _agreement, _tag_pairs

    assert _agreement(in_sample, _tag_pairs(tags, {"correct": 1.0, "failed": 0.0})) > check.proxy
    assert not check.model_wins


def test_top_pick_skips_runs_the_judgements_rule_out():
    scores = [0.9, 0.8, 0.7, 0.6]
    assert top_pick(scores) == 0
    assert top_pick(scores, {0: "over", 2: "correct"}) == 1  # tagged below the best tag given
    assert top_pick(scores, {}, [(1, 0)]) == 1  # 0 lost to 1
    assert top_pick(scores, {}, [(1, 0), (2, 1, 1.0)]) == 2
    assert top_pick(scores, {}, [(0, 1, 0.5)]) == 0  # a tie rules nothing out
    assert top_pick(scores, {}, [(0, 1, 0.5), (2, 1)]) == 2  # equal to a run that lost: out too
    assert normalize_comparisons([(1, 0), (2, 3, "="), (4, 5, 0)]) == [(1, 0, 1.0), (2, 3, 0.5), (4, 5, 0.0)]
    with pytest.raises(ValueError, match="itself"):
        normalize_comparisons([(1, 1)])
    with pytest.raises(ValueError, match="outside"):
        normalize_comparisons([(1, 7)], n=4)


def test_simulated_analyst_and_tagging():
    assert [analyst_tag(f, 10, 8) for f in (0.1, 0.5, 0.9)] == ["failed", "over", "correct"]
    assert analyst_tag(0.5, 5, 8) == "under"
    rng = np.random.default_rng(2)
    n = 40
    f1 = rng.uniform(0.2, 0.9, n)
    X = pd.DataFrame({"proxy.shape": f1 + rng.normal(0, 0.05, n), "proxy.stability": rng.uniform(size=n)})
    proxy = f1 + rng.normal(0, 0.05, n)
    best = int(np.argmax(f1))
    decoy = int(np.argsort(f1)[n // 2])
    proxy[decoy] = proxy.max() + 0.1  # the proxy's pick is a mediocre run
    for strategy in ("information", "random", "top"):
        pick, clicks = simulate_tagging(X, proxy, f1, 8, strategy=strategy, seed=1)
        assert 0 <= pick < n and clicks == 8
        assert (pick, clicks) == simulate_tagging(X, proxy, f1, 8, strategy=strategy, seed=1)
    pick, _ = simulate_tagging(X, proxy, f1, 8, seed=1)
    assert pick != decoy and f1.max() - f1[pick] < 0.05, (pick, best)
    assert simulate_tagging(X, proxy, f1, 0)[0] == decoy  # no clicks: the proxy's pick
    with pytest.raises(ValueError, match="strategy"):
        simulate_tagging(X, proxy, f1, 3, strategy="guess")


@pytest.fixture(scope="module")
def _store_template(tmp_path_factory):
    """An MLflow store with 5 completed trial runs of stage ``s`` of study ``st`` (and one of another study)."""
    from opsef_opt.track import tracking_client

    root = tmp_path_factory.mktemp("store")
    client = tracking_client(f"sqlite:///{root}/mlflow.db")
    exp = client.create_experiment("st", artifact_location=(root / "art").as_uri())
    ids = []
    for trial, study in [(0, "st/s"), (1, "st/s"), (2, "st/s"), (3, "st/s"), (4, "st/s"), (0, "other/s")]:
        run = client.create_run(exp, tags={"optuna.study": study, "optuna.trial": str(trial),
                                           "opsef.status": "complete", "pipeline": f"none | classical(t={trial})"})
        client.log_metric(run.info.run_id, "proxy.final", 0.5 + trial / 10)
        client.set_terminated(run.info.run_id, "FINISHED")
        ids.append(run.info.run_id)
    return root / "mlflow.db", exp, ids


@pytest.fixture
def store(_store_template, tmp_path):
    """A fresh copy of the template store for each test."""
    from conftest import copy_database
    from opsef_opt.track import tracking_client

    db, exp, ids = _store_template
    copy_database(db, tmp_path / "mlflow.db")
    return tracking_client(f"sqlite:///{tmp_path}/mlflow.db"), exp, ids


def test_comparisons_round_trip_through_mlflow_tags(store):
    from opsef_opt.tags.learn import judgements_of
    from opsef_opt.tags.runs import BETTER_TAG, SAME_TAG, comparisons_of, set_comparison, trial_runs

    client, exp, ids = store
    set_comparison(client, ids[0], ids[1], 1.0)  # 0 better than 1
    set_comparison(client, ids[0], ids[2], 1.0)
    set_comparison(client, ids[3], ids[2], 0.5)  # equally good
    set_comparison(client, ids[4], ids[5], 1.0)  # with a run of another study: ignored when read back
    assert client.get_run(ids[0]).data.tags[BETTER_TAG] == f"{ids[1]},{ids[2]}"
    assert client.get_run(ids[2]).data.tags[SAME_TAG] == ids[3]
    runs = trial_runs(client, exp, "st")
    assert [r.trial for r in runs] == [0, 1, 2, 3, 4]
    assert set(comparisons_of(runs)) == {(ids[0], ids[1], 1.0), (ids[0], ids[2], 1.0),
                                         tuple(sorted((ids[2], ids[3]))) + (0.5,)}
    # a new judgement of the same two runs replaces the old one; the last one out removes the tag
    by_id = {r.run_id: r for r in runs}
    set_comparison(client, ids[0], ids[1], 0.0, by_id)  # now 1 is better than 0
    set_comparison(client, ids[2], ids[3], 1.0, by_id)
    assert by_id[ids[1]].better_than == [ids[0]] and by_id[ids[0]].better_than == [ids[2]]
    tags2 = client.get_run(ids[2]).data.tags
    assert SAME_TAG not in tags2 and tags2[BETTER_TAG] == ids[3]
    runs = trial_runs(client, exp, "st")
    assert set(comparisons_of(runs)) == {(ids[1], ids[0], 1.0), (ids[0], ids[2], 1.0), (ids[2], ids[3], 1.0)}
    tags, pairs = judgements_of(runs)
    assert tags == [None] * 5 and sorted(pairs) == [(0, 2, 1.0), (1, 0, 1.0), (2, 3, 1.0)]
    # what a person types in the UI: spaces, a JSON list
    client.set_tag(ids[4], BETTER_TAG, f'["{ids[3]}", "{ids[1]}"]')
    runs = trial_runs(client, exp, "st")
    assert {(a, b) for a, b, _ in comparisons_of(runs)} >= {(ids[4], ids[3]), (ids[4], ids[1])}
    with pytest.raises(ValueError):
        set_comparison(client, ids[0], ids[0], 1.0)


def test_comparisons_and_tags_import_from_csv(store, tmp_path):
    from opsef_opt.tags.csv_import import import_judgements, import_tags
    from opsef_opt.tags.runs import comparisons_of, trial_runs

    client, exp, ids = store
    runs = trial_runs(client, exp, "st")
    csv = tmp_path / "judged.csv"
    csv.write_text("trial,tag,better,worse,equal\n"
                   "0,correct,,,\n"
                   ",,3,1,\n"
                   f",,s#4,{ids[2]},\n"
                   ",,2,0,yes\n"
                   ",,9,1,\n"
                   ",,1,1,\n"
                   "1,nope,,,\n")
    got = import_judgements(csv, runs, client, "s")
    assert (got.tags, got.comparisons) == (1, 3), got
    assert len(got.problems) == 3
    assert "judged.csv:6: better '9' not a completed trial run" in got.problems[0]
    assert "judged.csv:7: 'better' and 'worse' are the same run" in got.problems[1]
    assert "judged.csv:8: unknown tag 'nope'" in got.problems[2]
    runs = trial_runs(client, exp, "st")
    assert runs[0].tag == "correct"
    assert set(comparisons_of(runs)) == {(ids[3], ids[1], 1.0), (ids[4], ids[2], 1.0),
                                         tuple(sorted((ids[0], ids[2]))) + (0.5,)}
    only_pairs = tmp_path / "pairs.csv"
    only_pairs.write_text(f"better,worse\n{ids[1]},{ids[3]}\n")
    assert import_tags(only_pairs, runs, client, "s") == (0, [])
    assert (ids[1], ids[3], 1.0) in comparisons_of(trial_runs(client, exp, "st"))
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    assert "needs a 'tag' column" in import_judgements(bad, runs, client, "s").problems[0]
