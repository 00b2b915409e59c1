"""Metrics: hand-worked tiny cases, then random data checked against the numpy reference."""

from __future__ import annotations

import math
from math import log2, sqrt

import metrics_reference as R
import numpy as np
import pandas as pd
import pytest
from pyspark.sql import types as T

from sparkrec.evaluation import metrics as M
from sparkrec.schemas import SPLIT

RECS = T.StructType([T.StructField("user_idx", T.IntegerType()), T.StructField("item_idx", T.IntegerType()),
                     T.StructField("rank", T.IntegerType()), T.StructField("score", T.DoubleType())])
VECTORS = T.StructType([T.StructField("item_idx", T.IntegerType()),
                        T.StructField("vector", T.ArrayType(T.FloatType()))])
PRED = T.StructType([T.StructField("user_idx", T.IntegerType()), T.StructField("item_idx", T.IntegerType()),
                     T.StructField("prediction", T.DoubleType())])


def split_row(user, item, rating, positive, part, weight=1.0):
    return (user, item, rating, weight, None, 0, positive, part)


# Test part:
#   user 1: relevant 20 (rating 5), 40 (rating 3), 50 (rating 4); 30 rated 1.0 is not positive
#   user 2: relevant 60, no rating, weight 0.5
#   user 3: relevant 80 but gets no recommendations -> scores 0 everywhere, still averaged
#   user 4: only a non-positive test row -> not evaluated
# Train part (4 users): item 10 by users 1,2,3,4 (user 1 twice); 20 by 1,2; 30 by 3; 60 by 2,4;
#   70 by 1; 90 by 4.
SPLIT_ROWS = [
    split_row(1, 20, 5.0, True, "test"), split_row(1, 40, 3.0, True, "test"),
    split_row(1, 50, 4.0, True, "test"), split_row(1, 30, 1.0, False, "test"),
    split_row(2, 60, None, True, "test", weight=0.5),
    split_row(3, 80, 4.0, True, "test"),
    split_row(4, 90, 2.0, False, "test"),
    split_row(1, 10, 4.0, True, "train"), split_row(1, 10, 4.5, True, "train"),
    split_row(2, 10, 4.0, True, "train"), split_row(3, 10, 4.0, True, "train"),
    split_row(4, 10, 4.0, True, "train"), split_row(1, 20, 4.0, True, "train"),
    split_row(2, 20, 4.0, True, "train"), split_row(3, 30, 4.0, True, "train"),
    split_row(2, 60, 4.0, True, "train"), split_row(4, 60, 4.0, True, "train"),
    split_row(1, 70, 4.0, True, "train"), split_row(4, 90, 4.0, True, "train"),
]
REC_ROWS = [(1, 10, 1, 0.9), (1, 20, 2, 0.8), (1, 30, 3, 0.7), (1, 40, 4, 0.6),
            (2, 60, 1, 0.9), (2, 70, 2, 0.8),
            (4, 90, 1, 0.9), (4, 10, 2, 0.8),
            (5, 10, 1, 0.9)]


@pytest.fixture(scope="module")
def tiny(spark):
    return spark.createDataFrame(SPLIT_ROWS, SPLIT), spark.createDataFrame(REC_ROWS, RECS)


def test_ranking_metrics_by_hand(tiny):
    split, recs = tiny
    got = M.ranking_metrics(recs, split, [2, 4])
    # user 1 @2: one hit (20, rank 2, gain 5). DCG = 5/log2(3) = 3.1546;
    #   IDCG@2 = 5/1 + 4/log2(3) = 7.5237 -> NDCG 0.41929; AP@2 = (1/2) / min(3, 2) = 0.25
    # user 1 @4: hits 20 (rank 2) and 40 (rank 4, gain 3). DCG = 3.1546 + 3/log2(5) = 4.4467;
    #   IDCG@4 = 5 + 4/log2(3) + 3/log2(4) = 9.0237 -> NDCG 0.49278; AP@4 = (1/2 + 2/4) / 3 = 1/3
    # user 2: 60 at rank 1 -> NDCG 1, AP 1, recall 1 at both K; precision 1/2 and 1/4
    # user 3: zeros. MRR = (1/2 + 1 + 0) / 3 = 0.5
    ndcg1_2 = (5 / log2(3)) / (5 + 4 / log2(3))
    ndcg1_4 = (5 / log2(3) + 3 / log2(5)) / (5 + 4 / log2(3) + 3 / 2)
    expected = {
        "n_users": 3.0, "mrr": 0.5,
        "precision@2": (1 / 2 + 1 / 2 + 0) / 3, "recall@2": (1 / 3 + 1 + 0) / 3,
        "ndcg@2": (ndcg1_2 + 1) / 3, "map@2": (0.25 + 1) / 3, "hitrate@2": 2 / 3,
        "precision@4": (2 / 4 + 1 / 4 + 0) / 3, "recall@4": (2 / 3 + 1 + 0) / 3,
        "ndcg@4": (ndcg1_4 + 1) / 3, "map@4": (1 / 3 + 1) / 3, "hitrate@4": 2 / 3,
    }
    assert got.keys() == expected.keys()
    for name, value in expected.items():
        assert got[name] == pytest.approx(value, abs=1e-12), name
    assert expected["ndcg@2"] == pytest.approx(0.473097, abs=1e-6)


def test_ndcg_binary_and_exponential_gains(tiny):
    split, recs = tiny
    binary = M.ranking_metrics(recs, split, [2], graded=False)
    # user 1: DCG = 1/log2(3) = 0.63093, IDCG = 1 + 1/log2(3) = 1.63093 -> 0.38685
    assert binary["ndcg@2"] == pytest.approx(((1 / log2(3)) / (1 + 1 / log2(3)) + 1) / 3, abs=1e-12)
    expo = M.ranking_metrics(recs, split, [2], gain="exponential")
    # user 1 gains 2^5-1 = 31, 2^4-1 = 15: DCG = 31/log2(3), IDCG = 31 + 15/log2(3) -> 0.46223
    assert expo["ndcg@2"] == pytest.approx(((31 / log2(3)) / (31 + 15 / log2(3)) + 1) / 3, abs=1e-12)
    # Graded or not, hits do not change.
    assert binary["recall@2"] == expo["recall@2"] == pytest.approx(4 / 9)


def test_duplicates_count_once_at_best_rank(spark, tiny):
    split, _ = tiny
    recs = spark.createDataFrame([(2, 70, 1, 1.0), (2, 60, 2, 0.9), (2, 60, 3, 0.8)], RECS)
    got = M.ranking_metrics(recs, split, [3])
    # Only user 2 has a hit (60 at rank 2): precision counts one hit, not two.
    assert got["precision@3"] == pytest.approx((1 / 3) / 3)
    assert got["mrr"] == pytest.approx((1 / 2) / 3)


def test_beyond_accuracy_by_hand(spark, tiny):
    split, recs = tiny
    # coverage: top-2 items {10, 20, 60, 70, 90} of 10 -> 0.5; top-4 adds 30, 40 -> 0.7
    assert M.catalog_coverage(recs, 10, 2) == pytest.approx(0.5)
    assert M.catalog_coverage(recs, 10, 4) == pytest.approx(0.7)
    # novelty: 4 train users; -log2 share: 10 -> 0, 20 -> 1, 30 -> 2, 60 -> 1, 70 -> 2,
    # 90 -> 2, 40 (never in train, counted as one user) -> 2.
    # @2 per user: u1 (0+1)/2, u2 (1+2)/2, u4 (2+0)/2, u5 0 -> (0.5+1.5+1+0)/4 = 0.75
    # @4: u1 (0+1+2+2)/4 = 1.25 -> (1.25+1.5+1+0)/4 = 0.9375
    assert M.novelty(recs, split, 2) == pytest.approx(0.75)
    assert M.novelty(recs, split, 4) == pytest.approx(0.9375)
    # popularity: 10 -> 4, 20 -> 2, 30 -> 1, 60 -> 2, 70 -> 1, 90 -> 1 users; catalogue mean 11/6.
    # ARP@2 = (3 + 1.5 + 2.5 + 4) / 4 = 2.75 -> 2.75 / (11/6) = 1.5
    assert M.popularity_bias(recs, split, 2) == pytest.approx(1.5)


def test_intra_list_diversity_by_hand(spark, tiny):
    _, recs = tiny
    vectors = spark.createDataFrame(
        [(10, [1.0, 0.0]), (20, [0.0, 1.0]), (30, [1.0, 1.0]), (60, [2.0, 0.0]), (70, [1.0, 0.0]),
         (90, [0.0, 0.0])], VECTORS)
    # u1 top-3 (10, 20, 30): distances 1, 1 - 1/sqrt(2), 1 - 1/sqrt(2) -> (3 - sqrt(2)) / 3
    # u2 (60, 70): same direction -> 0;  u4 (90, 10): zero vector -> distance 1;  u5: no pair
    assert M.intra_list_diversity(recs, vectors, 3) == pytest.approx(((3 - sqrt(2)) / 3 + 0 + 1) / 3)
    # @4 u1's item 40 has no vector and is skipped: same lists as @3
    assert M.intra_list_diversity(recs, vectors, 4) == pytest.approx(((3 - sqrt(2)) / 3 + 0 + 1) / 3)
    # @2: u1 (10, 20) -> 1, u2 -> 0, u4 -> 1
    assert M.intra_list_diversity(recs, vectors, 2) == pytest.approx(2 / 3)


def test_rating_errors_by_hand(spark, tiny):
    split, _ = tiny
    pred = spark.createDataFrame([(1, 20, 4.0), (1, 40, 3.5), (1, 50, 4.0), (2, 60, 3.0), (9, 9, 1.0)], PRED)
    # errors -1, +0.5, 0 (user 2's test row has no rating, (9, 9) is not in the test part)
    got = M.rating_errors(pred, split)
    assert got == pytest.approx({"rmse": sqrt((1 + 0.25 + 0) / 3), "mae": 0.5, "n": 3.0})


def test_evaluate_all_is_flat_and_consistent(spark, tiny):
    split, recs = tiny
    vectors = spark.createDataFrame([(10, [1.0, 0.0]), (20, [0.0, 1.0])], VECTORS)
    got = M.evaluate_all(recs, split, [2, 4], item_vectors=vectors, n_items=10)
    assert got["ndcg@2"] == pytest.approx(M.ranking_metrics(recs, split, [2])["ndcg@2"])
    assert got["coverage@4"] == pytest.approx(0.7)
    assert got["novelty@2"] == pytest.approx(0.75)
    assert got["popularity_bias@2"] == pytest.approx(1.5)
    assert {"ild@2", "ild@4", "mrr", "map@4", "hitrate@2"} <= got.keys()
    assert all(isinstance(v, float) for v in got.values())


def test_rejects_bad_arguments(tiny):
    split, recs = tiny
    with pytest.raises(ValueError, match="ks"):
        M.ranking_metrics(recs, split, [0])
    with pytest.raises(ValueError, match="gain"):
        M.ranking_metrics(recs, split, [5], gain="quadratic")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- random vs reference
def _random_case(seed: int) -> tuple[list, list, list]:
    """Rows as plain tuples: pandas would turn a missing rating into NaN, which Spark keeps."""
    rng = np.random.default_rng(seed)
    n_users, n_items = 120, 40
    truth = []
    for user in range(n_users):
        items = rng.choice(n_items, size=rng.integers(1, 12), replace=False)
        for item in items:
            rating = None if rng.random() < 0.2 else float(rng.integers(0, 11) / 2)
            truth.append((user, int(item), rating, float(rng.random()), None, 0,
                          bool(rng.random() < 0.7), "test" if rng.random() < 0.5 else "train"))
    recs = []
    for user in range(n_users + 5):  # a few users without truth
        if rng.random() < 0.1:
            continue  # a few evaluated users without recommendations
        items = rng.choice(n_items, size=rng.integers(1, 25), replace=False)
        recs += [(user, int(item), rank + 1, 1.0 / (rank + 1)) for rank, item in enumerate(items)]
    vectors = [(i, rng.normal(size=8).astype(np.float32).tolist()) for i in range(n_items) if i % 7]
    return truth, recs, vectors


@pytest.mark.parametrize("seed", [0])
def test_random_data_matches_reference(spark, seed):
    truth_rows, rec_rows, vector_rows = _random_case(seed)
    truth, recs, vectors = (spark.createDataFrame(truth_rows, SPLIT), spark.createDataFrame(rec_rows, RECS),
                            spark.createDataFrame(vector_rows, VECTORS))
    truth_pd = pd.DataFrame(truth_rows, columns=SPLIT.fieldNames())
    recs_pd = pd.DataFrame(rec_rows, columns=RECS.fieldNames())
    vectors_pd = pd.DataFrame(vector_rows, columns=VECTORS.fieldNames())
    ks = [1, 5, 10]
    for graded, gain in [(True, "linear"), (True, "exponential"), (False, "linear")]:
        got = M.ranking_metrics(recs, truth, ks, graded=graded, gain=gain)
        want = R.ranking_metrics(recs_pd, truth_pd, ks, graded=graded, gain=gain)
        assert got.keys() == want.keys()
        np.testing.assert_allclose([got[n] for n in want], list(want.values()), rtol=1e-9, atol=1e-12)
    # The multi-K variants are what evaluate_all uses; the single-K ones are thin wrappers.
    popularity = M.popularity_metrics(recs, truth, ks)
    novelty, bias = popularity["novelty"], popularity["popularity_bias"]
    diversity = M.intra_list_diversity_at(recs, vectors, ks)
    for k in ks:
        np.testing.assert_allclose(novelty[k], R.novelty(recs_pd, truth_pd, k), rtol=1e-9)
        np.testing.assert_allclose(bias[k], R.popularity_bias(recs_pd, truth_pd, k), rtol=1e-9)
        np.testing.assert_allclose(diversity[k], R.intra_list_diversity(recs_pd, vectors_pd, k), rtol=1e-5)
        np.testing.assert_allclose(M.catalog_coverage(recs, 40, k), R.catalog_coverage(recs_pd, 40, k))
    pred_pd = truth_pd[["user_idx", "item_idx"]].assign(prediction=np.linspace(0, 5, len(truth_pd)))
    pred = spark.createDataFrame([tuple(r) for r in pred_pd.itertuples(index=False)], PRED)
    got, want = M.rating_errors(pred, truth), R.rating_errors(pred_pd, truth_pd)
    assert not math.isnan(want["rmse"])
    np.testing.assert_allclose([got[n] for n in want], list(want.values()), rtol=1e-9)


def test_binary_metrics_match_spark_mllib_ranking_metrics(spark):
    """An oracle nobody here wrote: Spark MLlib's RankingMetrics, on the same random lists.

    MLlib's definitions are the binary-relevance ones of PROTOCOL (precision over K, AP over
    min(|relevant|, K), IDCG truncated at K), averaged over the users it is given: every user
    with a relevant test item, an empty list for those without recommendations."""
    from pyspark.mllib.evaluation import RankingMetrics

    truth_rows, rec_rows, _ = _random_case(1)
    relevant: dict[int, list[int]] = {}
    for user, item, _r, _w, _t, _s, positive, part in truth_rows:
        if positive and part == "test" and item not in relevant.setdefault(user, []):
            relevant[user].append(item)
    relevant = {u: items for u, items in relevant.items() if items}
    lists: dict[int, list[int]] = {}
    for user, item, _rank, _score in sorted(rec_rows, key=lambda r: (r[0], r[2])):
        lists.setdefault(user, []).append(item)
    pairs = [(lists.get(u, []), items) for u, items in sorted(relevant.items())]
    oracle = RankingMetrics(spark.sparkContext.parallelize(pairs, 2))
    got = M.ranking_metrics(spark.createDataFrame(rec_rows, RECS), spark.createDataFrame(truth_rows, SPLIT),
                            [1, 5, 10], graded=False)
    assert got["n_users"] == len(pairs)
    for k in (1, 5, 10):
        np.testing.assert_allclose(got[f"precision@{k}"], oracle.precisionAt(k), rtol=1e-9)
        np.testing.assert_allclose(got[f"recall@{k}"], oracle.recallAt(k), rtol=1e-9)
        np.testing.assert_allclose(got[f"ndcg@{k}"], oracle.ndcgAt(k), rtol=1e-9)
        np.testing.assert_allclose(got[f"map@{k}"], oracle.meanAveragePrecisionAt(k), rtol=1e-9)


def test_training_validation_metrics_equal_the_evaluators(spark):
    """The trainer's numpy Recall/NDCG (early stopping, the blend search) and the Spark
    evaluator judge the same lists the same way."""
    from sparkrec.model.validation import ValSet, ranking_quality
    from sparkrec.ragged import csr
    from sparkrec.selection import best_k

    rng = np.random.default_rng(5)
    n_users, n_items, k = 40, 30, 10
    targets = [rng.choice(np.arange(1, n_items + 1), size=rng.integers(1, 15), replace=False) for _ in range(n_users)]
    seen = [rng.choice(np.setdiff1d(np.arange(1, n_items + 1), t), size=rng.integers(0, 8), replace=False)
            for t in targets]
    t_ptr, t_flat = csr(targets)
    s_ptr, s_flat = csr(seen)
    val = ValSet(np.arange(1, n_users + 1), np.zeros((n_users, 2), np.int64), np.zeros((n_users, 2), np.float32),
                 t_ptr, t_flat, s_ptr, s_flat, s_ptr, s_flat, np.ones(len(s_flat), np.float32))
    scores = rng.normal(size=(n_users, n_items + 1))
    recall, ndcg = ranking_quality(scores, val, 0, k)

    masked = scores.copy()
    masked[:, 0] = -np.inf
    for u, s in enumerate(seen):
        masked[u, s] = -np.inf
    top, _ = best_k(masked, k)
    recs = spark.createDataFrame([(u, int(c) - 1, r + 1, 0.0) for u in range(n_users) for r, c in enumerate(top[u])],
                                 RECS)
    truth = spark.createDataFrame([split_row(u, int(t) - 1, None, True, "test") for u in range(n_users)
                                   for t in targets[u]], SPLIT)
    want = M.ranking_metrics(recs, truth, [k], graded=False)
    np.testing.assert_allclose([recall.mean(), ndcg.mean()], [want[f"recall@{k}"], want[f"ndcg@{k}"]], rtol=1e-9)
