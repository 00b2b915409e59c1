"""The evaluate stage end to end on the bundled sample: real Spark, real Delta, a real model."""

from __future__ import annotations

import math

import metrics_reference as R
import pandas as pd
import pytest
from pyspark.sql import functions as F

from sparkrec.evaluation.slices import bucket_names, cold_item_candidates, sliced_truth

MODELS = ["hybrid", "most_popular", "als", "itemknn", "ease", "content_only"]


def test_bucket_names_cover_every_count():
    assert bucket_names([5, 20, 100]) == ["activity:1-5", "activity:6-20", "activity:21-100", "activity:101+"]
    assert bucket_names([1, 3]) == ["activity:1", "activity:2-3", "activity:4+"]


def test_slices_tag_each_test_row_by_what_train_knew(spark):
    # user 0: 6 train rows (warm); user 1: 1 train row (cold user); user 2: none (new user).
    rows = [(0, i, "train") for i in range(6)] + [(1, 0, "train")]
    rows += [(0, 1, "test"), (0, 99, "test"), (1, 2, "test"), (2, 3, "test")]
    split = spark.createDataFrame([(u, i, 4.0, 1.0, None, n, True, p) for n, (u, i, p) in enumerate(rows)],
                                  "user_idx int, item_idx int, rating double, weight double, event_time timestamp, "
                                  "seq long, is_positive boolean, part string")
    tagged = sliced_truth(split, cold_user_max_train=5, activity_buckets=[5, 20]).toPandas()
    got = {(r.user_idx, r.item_idx): set() for r in tagged.itertuples()}
    for r in tagged.itertuples():
        got[(r.user_idx, r.item_idx)].add(r.slice)
    assert got[(0, 1)] == {"all", "warm", "activity:6-20"}
    assert got[(0, 99)] == {"all", "cold_items", "activity:6-20"}
    assert got[(1, 2)] == {"all", "cold_users", "activity:1-5"}  # item 2 is warm (user 0 had it)
    assert got[(2, 3)] == {"all", "cold_users", "activity:0"}
    assert sorted(r[0] for r in cold_item_candidates(split).collect()) == [99]


@pytest.fixture(scope="module")
def evaluated(spark, temporal_model):
    """The sample with item text and a small model trained on temporal_loo, then evaluated."""
    from sparkrec.evaluation.job import run_evaluate

    cfg, lake, root, _ = temporal_model
    cfg = cfg.model_copy(deep=True)  # test_model trains from the same config
    ec = cfg.evaluation
    ec.models, ec.ks = MODELS, [5, 10, 20]
    ec.als_ranks, ec.als_reg_params, ec.als_alphas, ec.als_max_iter = [16], [0.1], [1.0], 5
    ec.ease_lambdas = [250.0]  # grids are tested in test_baselines; one point keeps this fast
    summary = run_evaluate(cfg, spark, lake, root / "report.html")
    return cfg, lake, summary


def _metrics(lake, eval_id: str) -> pd.DataFrame:
    return lake.read("evaluation_metrics").filter(F.col("eval_id") == eval_id).toPandas()


def _value(m: pd.DataFrame, model: str, metric: str, k: int | None = None, slice_: str = "all") -> float:
    sel = (m["model"] == model) & (m["metric"] == metric) & (m["slice"] == slice_)
    sel &= m["k"].isna() if k is None else (m["k"] == k)
    assert sel.sum() == 1, (model, metric, k, slice_)
    return float(m.loc[sel, "value"].iloc[0])


def test_every_model_has_every_metric_on_every_slice(evaluated):
    _, lake, summary = evaluated
    m = _metrics(lake, summary["eval_id"])
    assert sorted(m["model"].unique()) == sorted(MODELS)
    for model in MODELS:
        rows = m[m["model"] == model]
        assert {"all", "warm"} <= set(rows["slice"])  # the sample has no user with <= 5 train rows
        for k in (5, 10, 20):
            for metric in ("precision", "recall", "ndcg", "map", "hitrate", "coverage", "novelty",
                           "popularity_bias", "ild"):
                value = _value(m, model, metric, k)
                assert math.isfinite(value), (model, metric, k)
            assert 0.0 <= _value(m, model, "ndcg", k) <= 1.0
            assert _value(m, model, "recall", k) <= _value(m, model, "recall", 20) + 1e-12
        assert 0.0 <= _value(m, model, "mrr") <= 1.0
        assert rows["train_seconds"].notna().all() and (rows["train_seconds"] > 0).all()
    # Most-popular recommends the same few items to everyone: the least coverage, the most bias.
    others = [x for x in MODELS if x != "most_popular"]
    assert _value(m, "most_popular", "coverage", 20) < min(_value(m, x, "coverage", 20) for x in others)
    assert _value(m, "most_popular", "popularity_bias", 10) > max(_value(m, x, "popularity_bias", 10) for x in others)


def test_stored_metrics_equal_a_recomputation_from_the_stored_lists(evaluated, spark):
    cfg, lake, summary = evaluated
    m = _metrics(lake, summary["eval_id"])
    split = lake.read(f"split_{cfg.evaluation.split}")
    recs = lake.read("evaluation_recommendations").filter(F.col("eval_id") == summary["eval_id"])
    split_pd = split.toPandas()
    for model in ("hybrid", "ease"):
        # Recomputed by the independent loop twin, not by the function that stored them.
        listed = recs.filter(F.col("model") == model).select("user_idx", "item_idx", "rank").toPandas()
        again = R.ranking_metrics(listed, split_pd, [10], graded=cfg.evaluation.graded)
        assert again["ndcg@10"] == pytest.approx(_value(m, model, "ndcg", 10), abs=1e-9)
        assert again["n_users"] == summary["users"]
    # Lists hold no train item of the user, and at most max(K) items each.
    train = split.filter("part = 'train'").select("user_idx", "item_idx")
    assert recs.join(train, ["user_idx", "item_idx"]).count() == 0
    assert recs.groupBy("model", "user_idx").count().agg(F.max("count")).collect()[0][0] <= 20


def test_slice_user_counts_match_an_independent_count(evaluated):
    cfg, lake, summary = evaluated
    m = _metrics(lake, summary["eval_id"])
    split = lake.read(f"split_{cfg.evaluation.split}").toPandas()
    n_train = split[split["part"] == "train"].groupby("user_idx").size()
    test_users = split[(split["part"] == "test") & split["is_positive"]]["user_idx"].unique()
    counts = pd.Series(test_users).map(n_train).fillna(0)
    cold = int((counts <= cfg.evaluation.cold_user_max_train).sum())
    got = m[(m["model"] == "hybrid") & (m["slice"] == "cold_users") & (m["metric"] == "mrr")]["n_users"]
    assert int(got.iloc[0]) == cold if cold else got.empty
    active = int((counts > 100).sum())
    got = m[(m["model"] == "hybrid") & (m["slice"] == "activity:101+") & (m["metric"] == "mrr")]["n_users"]
    assert (int(got.iloc[0]) if len(got) else 0) == active
    assert summary["users"] == len(test_users)


def test_report_and_mlflow_hold_the_same_numbers(evaluated):
    import mlflow

    from sparkrec.evaluation.report import expected_chart_ids

    _, lake, summary = evaluated
    with open(summary["report"], encoding="utf-8") as fh:
        html = fh.read()
    m = _metrics(lake, summary["eval_id"])
    for chart in expected_chart_ids(m, pd.DataFrame({"model": ["hybrid"], "epoch": [1], "metric": ["loss"],
                                                     "value": [1.0]})):
        assert f'id="chart-{chart}"' in html
    run = mlflow.get_run(summary["mlflow_run_id"])
    assert run.data.tags["kind"] == "evaluation"
    assert run.data.metrics["ease.all.ndcg_at_10"] == pytest.approx(_value(m, "ease", "ndcg", 10))


def test_the_hybrid_must_come_from_the_evaluated_split(evaluated):
    from sparkrec.evaluation.models import hybrid_candidate

    cfg, _, _ = evaluated
    with pytest.raises(LookupError, match=r"on split 'random'.*train\.split=random"):
        hybrid_candidate(cfg, "random")


@pytest.mark.slow
def test_cold_item_protocol_ranks_only_new_items(evaluated, spark):
    """On split_cold_items, lists hold only items train never saw; interaction-only models have none."""
    from sparkrec.evaluation.job import run_evaluate
    from sparkrec.model.job import run_train

    cfg, lake, _ = evaluated
    cold_cfg = cfg.model_copy(deep=True)
    cold_cfg.train.split = cold_cfg.evaluation.split = "cold_items"
    cold_cfg.train.epochs = 1
    cold_cfg.evaluation.models = ["hybrid", "content_only", "most_popular"]
    run_train(cold_cfg, spark, lake)
    summary = run_evaluate(cold_cfg, spark, lake, f"{cfg.lake.root}/../cold.html")
    shelf = {r[0] for r in cold_item_candidates(lake.read("split_cold_items")).collect()}
    recs = lake.read("evaluation_recommendations").filter(F.col("eval_id") == summary["eval_id"]).toPandas()
    assert set(recs["model"]) == {"hybrid", "content_only"}  # most-popular cannot rank a new item
    assert set(recs["item_idx"]) <= shelf
    m = _metrics(lake, summary["eval_id"])
    assert _value(m, "most_popular", "recall", 20) == 0.0
    assert _value(m, "hybrid", "recall", 20) > 0.0
