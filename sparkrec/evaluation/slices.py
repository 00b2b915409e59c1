"""Evaluation slices: which test rows each question about a model is asked of.

One overall number hides where a recommender fails. A model can lead on active users and be
useless for the new ones, or never surface an item it has not seen interactions for. Each
slice is a subset of the test rows, tagged with its name, so all slices are judged in one
Spark job (:func:`sparkrec.evaluation.metrics.ranking_metrics_by`) against the same lists.
"""

from __future__ import annotations

from collections.abc import Sequence

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from .metrics import train_rows, truth_rows

SLICE_DOCS = """\
Slices (sparkrec.evaluation.slices). Every slice uses the same top-K lists; only the truth changes.
* all: every relevant test row.
* warm: test rows whose item has train interactions, of users with more than {cold} train interactions.
* cold_items: test rows whose item has no train interaction at all (a model must rank it from content).
* cold_users: test rows of users with at most {cold} train interactions (0 = known only at test time).
* activity:A-B: users by their number of train interactions, so trends with history length show.
"""


def bucket_names(bounds: Sequence[int]) -> list[str]:
    """[5, 20, 100] -> ["activity:1-5", "activity:6-20", "activity:21-100", "activity:101+"].

    A user with no train interaction gets "activity:0".
    """
    edges = sorted(set(int(b) for b in bounds if b > 0))
    names, low = [], 1
    for high in edges:
        names.append(f"activity:{low}-{high}" if high > low else f"activity:{low}")
        low = high + 1
    return [*names, f"activity:{low}+"]


def _bucket(n_train: Column, bounds: Sequence[int]) -> Column:
    edges = sorted(set(int(b) for b in bounds if b > 0))
    names = bucket_names(edges)
    expr = F.when(n_train <= 0, F.lit("activity:0"))
    for high, name in zip(edges, names, strict=False):
        expr = expr.when(n_train <= high, F.lit(name))
    return expr.otherwise(F.lit(names[-1]))


def sliced_truth(split: DataFrame, cold_user_max_train: int, activity_buckets: Sequence[int]) -> DataFrame:
    """The test rows once per slice they belong to, with a ``slice`` column.

    Users and items are characterised by the TRAIN part only: what the model could know.
    """
    train, test = train_rows(split), truth_rows(split)
    n_train = train.groupBy("user_idx").agg(F.count(F.lit(1)).alias("n_train"))
    warm_items = train.select("item_idx").distinct().withColumn("warm_item", F.lit(True))
    rows = (test.join(n_train, "user_idx", "left").join(F.broadcast(warm_items), "item_idx", "left")
            .withColumn("n_train", F.coalesce("n_train", F.lit(0)))
            .withColumn("warm_item", F.coalesce("warm_item", F.lit(False))))
    cold_user = F.col("n_train") <= cold_user_max_train
    tags = F.array_compact(F.array(
        F.lit("all"),
        F.when(F.col("warm_item") & ~cold_user, F.lit("warm")),
        F.when(~F.col("warm_item"), F.lit("cold_items")),
        F.when(cold_user, F.lit("cold_users")),
        _bucket(F.col("n_train"), activity_buckets)))
    return rows.withColumn("slice", F.explode(tags)).drop("n_train", "warm_item")


def cold_item_candidates(split: DataFrame) -> DataFrame:
    """Items of the test part that train never saw: the shelf the cold-item protocol ranks.

    Ranking these alone (instead of the whole catalogue) is the standard item cold-start
    protocol: it asks "which new item will this user take?", which a full ranking dominated
    by warm items cannot answer for any model.
    """
    train_items = train_rows(split).select("item_idx").distinct()
    return truth_rows(split).select("item_idx").distinct().join(train_items, "item_idx", "left_anti")
