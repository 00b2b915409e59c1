"""Ranking metrics and the row selectors they rest on, below every package that ranks.

Baselines tune on these metrics and the evaluator judges with them; living here, outside
``sparkrec.evaluation`` (which imports every model), they let ``sparkrec.baselines`` use them
without a package cycle. ``sparkrec.evaluation.metrics`` re-exports them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import pyarrow as pa
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from .listmetrics import METRICS, list_metrics
from .ragged import arrow_csr

Gain = Literal["linear", "exponential"]

PROTOCOL = """\
Ranking protocol (sparkrec.ranking.ranking_metrics)

* Truth is the split table's test part (rows with part == 'test' when a part column is
  present). An item is relevant to a user when its test row has is_positive = true.
* Users evaluated: every user with at least one relevant test item. A user without
  recommendations scores 0 on every metric; recommendations for users without relevant
  items are ignored. Metrics are the unweighted mean over evaluated users.
* Recommendations: (user_idx, item_idx, rank) with rank 1 the best; an item listed twice for
  a user counts once, at its best rank. @K metrics read ranks <= K; MRR reads the whole list.
* Precision@K = hits@K / K (a short list is not rewarded). Recall@K = hits@K / |relevant|.
  HitRate@K = 1 when hits@K > 0. MRR = 1 / rank of the first relevant item (0 if none).
* MAP@K: AP@K = sum over relevant ranks r <= K of precision@r, divided by min(|relevant|, K),
  so a perfect list scores 1 even when the user has more than K relevant items.
* NDCG@K: DCG = sum gain / log2(rank + 1); IDCG is the DCG of the user's relevant items sorted
  by gain, truncated at K. Graded gain = the test rating when it is > 0, else the row's weight
  (a rating of 0 or null means "no grade", e.g. Book-Crossing's implicit reads), else 1;
  'exponential' uses 2^gain - 1. With graded=False every relevant item has gain 1.
"""


# --------------------------------------------------------------------------- inputs
def truth_rows(truth: DataFrame) -> DataFrame:
    """Accept either the whole split table or its test part, so callers cannot mix them up."""
    return truth.filter(F.col("part") == "test") if "part" in truth.columns else truth


def train_rows(train: DataFrame) -> DataFrame:
    return train.filter(F.col("part") == "train") if "part" in train.columns else train


def _grade(graded: bool, gain: Gain) -> Column:
    if not graded:
        return F.lit(1.0)
    rating = F.col("rating").cast("double")
    raw = F.when(rating > 0, rating).otherwise(F.coalesce(F.col("weight").cast("double"), F.lit(1.0)))
    return F.pow(F.lit(2.0), raw) - 1.0 if gain == "exponential" else raw


def seen_items(rows: DataFrame, offset: int = 0) -> DataFrame:
    """(user_idx, seen array<int>): every item of ``rows`` per user, positive or not (a user who
    rated a film badly has still seen it and must not be offered it again). ``offset`` 1 gives
    the towers' model rows (item_idx + 1, row 0 being padding)."""
    item = (F.col("item_idx") + offset) if offset else F.col("item_idx")
    return rows.groupBy("user_idx").agg(F.collect_set(item.cast("int")).alias("seen"))


def check_ks(ks: Sequence[int]) -> list[int]:
    ks = sorted(set(int(k) for k in ks))
    if not ks or ks[0] < 1:
        raise ValueError(f"ks must be positive integers, got {ks}")
    return ks


# --------------------------------------------------------------------------- accuracy
def _first_per_item(structs: Column) -> Column:
    """Keeps the first element of each run of equal ``item``s in an array sorted by item."""
    return F.filter(structs, lambda x, i: (i == 0) | (F.element_at(structs, i)["item"] != x["item"]))


def _per_user_metrics(ks: list[int], names: list[str]):
    """mapInArrow function: each user's hits and ideal gains through :func:`list_metrics`."""
    def run(batches):
        for batch in batches:
            hit_ptr, hit_rank = arrow_csr(batch.column("hit_rank"))
            _, hit_gain = arrow_csr(batch.column("hit_gain"), np.float64)
            ideal_ptr, ideal = arrow_csr(batch.column("ideal"), np.float64)
            n_rel = batch.column("n_rel").to_numpy(zero_copy_only=False)
            values = list_metrics(n_rel, hit_ptr, hit_rank, hit_gain, ideal_ptr, ideal, ks)
            yield pa.RecordBatch.from_arrays([batch.column("grp")] + [pa.array(values[n]) for n in names],
                                             ["grp", *names])
    return run


def ranking_metrics(recs: DataFrame, truth: DataFrame, ks: Sequence[int], graded: bool = True,
                    gain: Gain = "linear") -> dict[str, float]:
    """Precision/Recall/NDCG/MAP/HitRate at each K and MRR; see :data:`PROTOCOL`.

    Recommendations and relevant items meet in ONE shuffle by user: each user's list and
    truth become arrays, and :func:`sparkrec.listmetrics.list_metrics` (the formulas the
    trainer's validation uses too) computes every metric per user in numpy. A join on
    (user, item) followed by windows would shuffle the recommendations three times.
    Returns ``{"precision@10": ..., "mrr": ..., "n_users": ...}``.
    """
    by = "__all"
    return ranking_metrics_by(recs, truth.withColumn(by, F.lit("all")), ks, by, graded, gain).get(
        "all", _empty_ranking(check_ks(ks)))


def _empty_ranking(ks: list[int]) -> dict[str, float]:
    names = ["n_users", "mrr"] + [f"{m}@{k}" for k in ks for m in METRICS]
    return dict.fromkeys(names, 0.0)


def ranking_metrics_by(recs: DataFrame, truth: DataFrame, ks: Sequence[int], by: str, graded: bool = True,
                       gain: Gain = "linear") -> dict[str, dict[str, float]]:
    """:func:`ranking_metrics` per group of ``truth[by]`` (e.g. evaluation slices), in one job.

    A user's list is judged once per group the user has relevant items in, against only that
    group's items: slicing by item (cold items) and by user (activity) both fall out of this.
    Groups without relevant items are absent from the result.
    """
    ks = check_ks(ks)
    if gain not in ("linear", "exponential"):
        raise ValueError(f"gain must be 'linear' or 'exponential', got {gain!r}")
    rel_rows = truth_rows(truth).filter(F.col("is_positive")).select(
        F.col(by).cast("string").alias("grp"), "user_idx", F.col("item_idx").cast("int").alias("item_idx"),
        F.lit(None).cast("int").alias("rank"), _grade(graded, gain).cast("double").alias("gain"))
    groups = rel_rows.select("grp", "user_idx").distinct()
    rec_rows = recs.select("user_idx", F.col("item_idx").cast("int").alias("item_idx"),
                           F.col("rank").cast("int").alias("rank"), F.lit(None).cast("double").alias("gain"))
    rows = rec_rows.join(groups, "user_idx").unionByName(rel_rows)
    # collect_list skips nulls, so each list takes only its own kind of row.
    per_user = rows.groupBy("grp", "user_idx").agg(
        F.collect_list(F.when(F.col("gain").isNotNull(),
                              F.struct(F.col("item_idx").alias("item"), (-F.col("gain")).alias("neg"))))
        .alias("rel"),
        F.collect_list(F.when(F.col("rank").isNotNull(),
                              F.struct(F.col("item_idx").alias("item"), F.col("rank").alias("rank"))))
        .alias("recs"))
    # Each step is its own projection over named columns: an array referenced inside a
    # lambda is then read per element, not recomputed per element.
    steps = per_user.filter(F.size("rel") > 0).select(
        "grp", F.sort_array("rel").alias("rel"), F.sort_array("recs").alias("recs"))
    # One entry per item: the relevant item's best gain, the listed item's best rank.
    steps = steps.select("grp", _first_per_item(F.col("rel")).alias("rel"),
                         _first_per_item(F.col("recs")).alias("recs"))
    steps = steps.select(
        "grp", F.size("rel").alias("n_rel"),
        F.map_from_entries(F.transform("rel", lambda x: F.struct(x["item"], -x["neg"]))).alias("gain_of"),
        F.sort_array(F.transform("rel", lambda x: -x["neg"]), asc=False).alias("ideal"),
        F.sort_array(F.transform("recs", lambda x: F.struct(x["rank"].alias("rank"), x["item"].alias("item"))))
        .alias("ranked"))
    hits = F.filter("ranked", lambda x: F.element_at(F.col("gain_of"), x["item"]).isNotNull())
    lists = steps.select("grp", "n_rel", "gain_of", "ideal", hits.alias("hits")).select(
        "grp", "n_rel", "ideal", F.transform("hits", lambda x: x["rank"]).alias("hit_rank"),
        F.transform("hits", lambda x: F.element_at(F.col("gain_of"), x["item"])).alias("hit_gain"))
    names = ["mrr"] + [f"{m}@{k}" for k in ks for m in METRICS]
    schema = T.StructType([T.StructField("grp", T.StringType())]
                          + [T.StructField(name, T.DoubleType()) for name in names])
    per_user = lists.mapInArrow(_per_user_metrics(ks, names), schema)
    per_metric = [F.count(F.lit(1)).alias("n_users")] + [F.avg(F.col(f"`{n}`")).alias(n) for n in names]
    stats = per_user.groupBy("grp").agg(*per_metric)
    out: dict[str, dict[str, float]] = {}
    for row in stats.collect():  # one row per group
        values = row.asDict()
        group = values.pop("grp")
        out[group] = {name: float(value) if value is not None else 0.0 for name, value in values.items()}
    return out
