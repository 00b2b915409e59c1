"""Ranking metrics and the row selectors they rest on, below every package that ranks.

Baselines tune on these metrics and the evaluator judges with them; living here, outside
``sparkrec.evaluation`` (which imports every model), they let ``sparkrec.baselines`` use them
without a package cycle. ``sparkrec.evaluation.metrics`` re-exports them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

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


def _within(k: int):
    # A factory, not ``lambda x, k=k``: PySpark reads a 2-argument lambda as (element, index).
    return lambda x: x["rank"] <= k


def _sum(values: Column) -> Column:
    return F.aggregate(values, F.lit(0.0), lambda acc, v: acc + v)


def ranking_metrics(recs: DataFrame, truth: DataFrame, ks: Sequence[int], graded: bool = True,
                    gain: Gain = "linear") -> dict[str, float]:
    """Precision/Recall/NDCG/MAP/HitRate at each K and MRR; see :data:`PROTOCOL`.

    Recommendations and relevant items meet in ONE shuffle by user: each user's list and
    truth become two arrays, and every metric is array arithmetic on them. A join on
    (user, item) followed by windows would shuffle the recommendations three times.
    Returns ``{"precision@10": ..., "mrr": ..., "n_users": ...}``.
    """
    by = "__all"
    return ranking_metrics_by(recs, truth.withColumn(by, F.lit("all")), ks, by, graded, gain).get(
        "all", _empty_ranking(check_ks(ks)))


def _empty_ranking(ks: list[int]) -> dict[str, float]:
    names = ["n_users", "mrr"] + [f"{m}@{k}" for k in ks for m in ("precision", "recall", "ndcg", "map", "hitrate")]
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
    steps = steps.select(
        "grp", "n_rel", "gain_of", F.transform("ideal", lambda g, i: g / F.log2(i + 2.0)).alias("ideal"),
        F.filter("ranked", lambda x: F.element_at(F.col("gain_of"), x["item"]).isNotNull()).alias("hits"))
    stats = steps.select(
        "grp", "n_rel", "ideal", F.transform("hits", lambda x, i: F.struct(
            x["rank"].alias("rank"), F.element_at(F.col("gain_of"), x["item"]).alias("gain"),
            (i + 1).alias("no"))).alias("hits"))

    h, zero = F.col("hits"), F.lit(0.0)
    per_metric: list[Column] = [
        F.count(F.lit(1)).alias("n_users"),
        F.avg(F.when(F.size(h) > 0, 1.0 / F.element_at(h, 1)["rank"]).otherwise(zero)).alias("mrr")]
    for k in ks:
        in_k = F.filter(h, _within(k))
        n_hits = F.size(in_k).cast("double")
        dcg = _sum(F.transform(in_k, lambda x: x["gain"] / F.log2(x["rank"] + 1.0)))
        idcg = _sum(F.slice("ideal", 1, k))
        ap = _sum(F.transform(in_k, lambda x: x["no"] / x["rank"]))
        per_metric += [
            F.avg(n_hits / k).alias(f"precision@{k}"),
            F.avg(n_hits / F.col("n_rel")).alias(f"recall@{k}"),
            F.avg(F.when(idcg > 0, dcg / idcg).otherwise(zero)).alias(f"ndcg@{k}"),
            F.avg(ap / F.least(F.col("n_rel"), F.lit(k))).alias(f"map@{k}"),
            F.avg(F.when(n_hits > 0, 1.0).otherwise(zero)).alias(f"hitrate@{k}"),
        ]
    out: dict[str, dict[str, float]] = {}
    for row in stats.groupBy("grp").agg(*per_metric).collect():  # one row per group
        values = row.asDict()
        group = values.pop("grp")
        out[group] = {name: float(value) if value is not None else 0.0 for name, value in values.items()}
    return out
