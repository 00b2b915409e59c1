"""Baselines on a real slice of ml-latest-small, with a per-user leave-last-one split.

The slice keeps the movies with at least 20 ratings (about 1,300 movies, 68k ratings, all
610 users), which is small enough for EASE's dense inversion and a 2-core test run while
keeping the real data's popularity skew and sessions.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from sparkrec.baselines import (
    EASE,
    RECS_SCHEMA,
    ALSBaseline,
    ContentOnly,
    ItemKNN,
    MostPopular,
    NotFittedError,
    TooManyItemsError,
    ease_weights,
    holdout_validation,
)
from sparkrec.baselines.cooccurrence import user_item_values
from sparkrec.baselines.ease import dense_gram, without_held_out
from sparkrec.config import EvaluationConfig
from sparkrec.evaluation import ranking_metrics
from sparkrec.schemas import SPLIT

K = 20
RESULTS: dict[str, dict[str, float]] = {}


@pytest.fixture(scope="module")
def ml_split(spark, datasets) -> DataFrame:
    raw = spark.read.csv(str(datasets / "ml-latest-small" / "ratings.csv"), header=True,
                         schema="userId int, movieId int, rating double, timestamp long")
    popular = raw.groupBy("movieId").count().filter(F.col("count") >= 20).select("movieId")
    rows = (raw.join(popular, "movieId")
            .withColumn("user_idx", F.dense_rank().over(Window.orderBy("userId")).cast("int"))
            .withColumn("item_idx", F.dense_rank().over(Window.orderBy("movieId")).cast("int")))
    latest = Window.partitionBy("user_idx").orderBy(F.desc("timestamp"), F.desc("item_idx"))
    split = rows.select(
        "user_idx", "item_idx", F.col("rating").cast("double"), (F.col("rating") / 5.0).alias("weight"),
        F.col("timestamp").cast("timestamp").alias("event_time"), F.col("timestamp").cast("long").alias("seq"),
        (F.col("rating") >= 2.5).alias("is_positive"),
        F.when(F.row_number().over(latest) == 1, "test").otherwise("train").alias("part"))
    split = split.repartition(4, "user_idx").cache()
    assert split.filter("part = 'test'").count() == 610
    yield split
    split.unpersist()


@pytest.fixture(scope="module")
def test_users(ml_split) -> DataFrame:
    return ml_split.filter("part = 'test'").select("user_idx")


def _make(name: str):
    cfg = EvaluationConfig()
    if name == "most_popular":
        return MostPopular()
    if name == "itemknn":
        return ItemKNN(neighbours=cfg.itemknn_neighbours, shrinkage=cfg.itemknn_shrinkage)
    if name == "ease":
        return EASE.from_config(cfg, lambdas=[25.0, 100.0])
    # A reduced grid keeps the test fast; the config's default grid is the one benchmarks use.
    return ALSBaseline.from_config(cfg, ranks=[32], reg_params=[0.1], alphas=[0.3, 1.0], max_iter=10)


@pytest.fixture(scope="module")
def recommended(ml_split, test_users):
    """name -> (model, top-K recs for every test user), each model fitted once."""
    out = {}
    for name in ("most_popular", "itemknn", "ease", "als"):
        start = time.perf_counter()
        model = _make(name).fit(ml_split)
        recs = model.recommend(test_users, K).cache()
        recs.count()
        metrics = ranking_metrics(recs, ml_split, [10, 20])
        RESULTS[name] = {"ndcg@10": metrics["ndcg@10"], "recall@20": metrics["recall@20"],
                         "seconds": time.perf_counter() - start}
        out[name] = (model, recs)
    print("\nbaseline quality on the ml-latest-small slice:", RESULTS)
    yield out
    for _, recs in out.values():
        recs.unpersist()


@pytest.mark.parametrize("name", ["most_popular", "itemknn", "ease", "als"])
def test_format_k_rows_and_no_seen_items(recommended, ml_split, name):
    _, recs = recommended[name]
    assert [(f.name, f.dataType) for f in recs.schema.fields] == \
        [(f.name, f.dataType) for f in RECS_SCHEMA.fields]
    per_user = recs.groupBy("user_idx").agg(
        F.count(F.lit(1)).alias("n"), F.countDistinct("item_idx").alias("items"),
        F.sort_array(F.collect_list("rank")).alias("ranks"),
        F.max("score").alias("top"), F.min("score").alias("bottom")).collect()
    assert len(per_user) == 610
    assert all(r["n"] == K and r["items"] == K and r["ranks"] == list(range(1, K + 1)) for r in per_user)
    # scores fall with rank
    by_rank = Window.partitionBy("user_idx").orderBy("rank")
    rises = recs.withColumn("prev", F.lag("score").over(by_rank)).filter(F.col("score") > F.col("prev") + 1e-9)
    assert rises.count() == 0
    seen = ml_split.filter("part = 'train'").select("user_idx", "item_idx")
    assert recs.join(seen, ["user_idx", "item_idx"]).count() == 0


def test_personalised_baselines_beat_most_popular(recommended):
    floor = RESULTS["most_popular"]["ndcg@10"]
    assert floor > 0.01  # the slice's popularity floor is real, not zero
    for name in ("itemknn", "ease", "als"):
        assert RESULTS[name]["ndcg@10"] > floor, (name, RESULTS)
        assert RESULTS[name]["recall@20"] > RESULTS["most_popular"]["recall@20"], (name, RESULTS)


def test_tuning_is_recorded(recommended):
    ease, _ = recommended["ease"]
    assert ease.best_lambda in (25.0, 100.0) and len(ease.tuning_results) == 2
    als, _ = recommended["als"]
    assert als.best_params is not None and als.best_params["alpha"] in (0.3, 1.0)
    assert [r["params"] for r in als.tuning_results] == [
        {"rank": 32, "reg_param": 0.1, "alpha": 0.3}, {"rank": 32, "reg_param": 0.1, "alpha": 1.0}]


def test_exclude_seen_false_keeps_the_global_ranking(recommended, ml_split, test_users):
    model, _ = recommended["most_popular"]
    lists = model.recommend(test_users.limit(3), 5, exclude_seen=False).groupBy("user_idx").agg(
        F.sort_array(F.collect_list(F.struct("rank", "item_idx"))).alias("l")).collect()
    orders = {tuple(x["item_idx"] for x in r["l"]) for r in lists}
    assert len(orders) == 1  # the same top-5 for everyone, seen or not
    top5 = (ml_split.filter("part = 'train' and is_positive").groupBy("item_idx").count()
            .orderBy(F.desc("count"), "item_idx").limit(5).collect())
    assert orders.pop() == tuple(r["item_idx"] for r in top5)


def test_holdout_validation_takes_one_latest_positive_per_user(ml_split):
    fit_part, val = holdout_validation(ml_split)
    latest = ml_split.filter("part = 'train' and is_positive").groupBy("user_idx").agg(F.max("seq").alias("m"))
    held = val.join(latest, "user_idx").collect()
    assert len(held) == len({r["user_idx"] for r in held}) > 600  # one per user
    assert all(r["is_positive"] and r["part"] == "test" and r["seq"] == r["m"] for r in held)
    assert fit_part.join(val, ["user_idx", "item_idx"]).count() == 0


# --------------------------------------------------------------------------- tiny exact cases
def _interactions(spark, rows: list[tuple[int, int]], weight: float = 1.0) -> DataFrame:
    data = [(u, i, None, weight, None, n, True, "train") for n, (u, i) in enumerate(rows)]
    return spark.createDataFrame(data, SPLIT)


def test_ease_matches_dense_numpy(spark):
    rows = [(0, 0), (0, 1), (0, 3), (1, 1), (1, 2), (2, 0), (2, 2), (2, 3), (2, 4), (3, 4), (3, 1),
            (4, 0), (4, 4)]
    x = np.zeros((5, 5))
    for u, i in rows:
        x[u, i] = 1.0
    lam = 2.0
    p = np.linalg.inv(x.T @ x + lam * np.eye(5))
    expected = np.eye(5) - p / np.diag(p)  # B = I - P diag(1/diag(P))
    np.testing.assert_allclose(np.diag(expected), 0.0, atol=1e-12)
    np.testing.assert_allclose(ease_weights(x.T @ x, lam), expected, atol=1e-12)

    model = EASE([lam]).fit(_interactions(spark, rows))
    np.testing.assert_allclose(model.weights_matrix, expected, rtol=1e-5, atol=1e-6)
    recs = model.recommend(spark.createDataFrame([(1,)], "user_idx int"), 3).orderBy("rank").collect()
    scores = x[1] @ expected
    unseen = [i for i in np.argsort(-scores, kind="stable") if x[1, i] == 0]
    assert [r["item_idx"] for r in recs] == unseen[:3]
    np.testing.assert_allclose([r["score"] for r in recs], scores[unseen[:3]], rtol=1e-5)


def test_ease_gram_on_the_driver_equals_the_executors_one(spark):
    """Below ``driver_entries`` X comes to the driver and is multiplied out there; above, the
    co-occurrence job sums it on executors: the same items and matrix either way, a user's
    repeated item counted as the sum of its values."""
    rng = np.random.default_rng(3)
    rows = [(int(u), int(i), float(rng.integers(1, 6))) for u, i in zip(rng.integers(0, 30, 400),
                                                                        rng.integers(5, 80, 400), strict=True)]
    x = spark.createDataFrame(rows, "user_idx int, item_idx int, value double")
    driver_space, on_driver = dense_gram(x, 100)
    spark_space, on_executors = dense_gram(x, 100, driver_entries=0)
    assert np.array_equal(driver_space.item_ids, spark_space.item_ids)
    assert np.allclose(on_driver, on_executors)
    dense = np.zeros((30, len(driver_space)))
    for u, i, v in rows:
        dense[u, driver_space.columns(np.array([i]))[0][0]] += v
    assert np.allclose(on_driver, dense.T @ dense)


def test_ease_tuning_gram_equals_a_direct_one(spark):
    # Held-out cells are subtracted from the full Gram matrix instead of recomputing it.
    rows = [(0, 0), (0, 1), (0, 3), (1, 1), (1, 2), (1, 0), (2, 0), (2, 2), (2, 3), (2, 4), (3, 4), (3, 1)]
    train = spark.createDataFrame(
        [(u, i, None, 0.5 + 0.1 * i, None, n, True, "train") for n, (u, i) in enumerate(rows)], SPLIT)
    x = user_item_values(train, binary=False)  # weighted: the general case of the identity
    space, full = dense_gram(x, 100)
    # one held-out row per user ("last"), and several per user (a random half of each user's rows)
    for how, fraction, held in (("last", 0.2, 4), ("random", 0.5, 7)):  # 3, 3, 4 and 2 rows: 2 + 2 + 2 + 1
        fit_part, val = holdout_validation(train, how, fraction=fraction)
        assert val.count() == held
        got = without_held_out(full, space, x, val)
        direct_space, direct = dense_gram(user_item_values(fit_part, binary=False), 100)
        cols, known = space.columns(direct_space.item_ids)
        assert known.all()
        expected = np.zeros_like(full)
        expected[np.ix_(cols, cols)] = direct
        np.testing.assert_allclose(got, expected, atol=1e-12)


def test_ease_refuses_a_catalogue_too_large_for_the_driver(spark):
    train = _interactions(spark, [(0, i) for i in range(6)] + [(1, 0)])
    with pytest.raises(TooManyItemsError, match="max_items=5"):
        EASE([1.0], max_items=5).fit(train)


def test_content_only_ranks_the_matching_item_first(spark):
    vectors = spark.createDataFrame(
        [(0, [1.0, 0.0, 0.0]), (1, [0.0, 1.0, 0.0]), (2, [0.0, 0.0, 1.0]),
         (7, [0.6, 0.8, 0.0]),  # between 0 and 1
         (9, [0.99, 0.0, 0.141])],  # a cold item (no interactions) pointing like item 0
        T.StructType([T.StructField("item_idx", T.IntegerType()),
                      T.StructField("vector", T.ArrayType(T.FloatType()))]))
    train = _interactions(spark, [(0, 0), (1, 2), (2, 0), (2, 1), (3, 5)])
    model = ContentOnly(vectors).fit(train)
    recs = model.recommend(spark.createDataFrame([(0,), (1,), (2,), (3,), (4,)], "user_idx int"), 2)
    got = {(r["user_idx"], r["rank"]): r["item_idx"] for r in recs.collect()}
    assert got[(0, 1)] == 9 and got[(0, 2)] == 7  # cosine 0.99, then 0.6
    assert got[(1, 1)] == 9  # history is item 2: the cold item's 0.141 beats 0 for the rest
    assert got[(2, 1)] == 7  # history 0 + 1: the item halfway between them
    assert not any(u in (3, 4) for u, _ in got)  # no vectored history / unknown user: no rows
    assert 0 not in {got[(0, 1)], got[(0, 2)]}  # seen item excluded


def test_recommend_before_fit_is_a_clear_error(spark):
    users = spark.createDataFrame([(1,)], "user_idx int")
    for model in (MostPopular(), ItemKNN(), EASE(), ALSBaseline()):
        with pytest.raises(NotFittedError):
            model.recommend(users, 5)
