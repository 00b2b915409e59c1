"""What every baseline shares: the fit/recommend contract and the per-user state it needs.

Baselines take the split table (or its train part) as it is stored, so that a baseline and
the model it is compared with see exactly the same rows.
"""

from __future__ import annotations

import abc
from typing import Self, TypeVar

import numpy as np
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from ..evaluation.metrics import train_rows

RECS_SCHEMA = T.StructType([T.StructField("user_idx", T.IntegerType()),
                            T.StructField("item_idx", T.IntegerType()),
                            T.StructField("rank", T.IntegerType()),
                            T.StructField("score", T.DoubleType())])


V = TypeVar("V")


class NotFittedError(RuntimeError):
    pass


def positives(train: DataFrame) -> DataFrame:
    """(user_idx, item_idx, weight, seq): the train rows a model learns from, one per pair.

    Only positives teach a model what to recommend; a re-rated pair keeps its strongest
    weight and latest position so it is not counted twice.
    """
    rows = train_rows(train)
    if "is_positive" in rows.columns:
        rows = rows.filter(F.coalesce(F.col("is_positive"), F.lit(False)))
    weight = F.coalesce(F.col("weight").cast("double"), F.lit(1.0)) if "weight" in rows.columns else F.lit(1.0)
    seq = F.col("seq").cast("long") if "seq" in rows.columns else F.lit(0).cast("long")
    return (rows.select("user_idx", "item_idx", weight.alias("weight"), seq.alias("seq"))
            .groupBy("user_idx", "item_idx").agg(F.max("weight").alias("weight"), F.max("seq").alias("seq")))


def seen_items(train: DataFrame) -> DataFrame:
    """(user_idx, seen array<int>): every train item, positive or not, since a user who rated
    a film badly has still seen it and must not be offered it again."""
    return (train_rows(train).groupBy("user_idx")
            .agg(F.array_distinct(F.collect_list(F.col("item_idx").cast("int"))).alias("seen")))


def user_state(train: DataFrame) -> DataFrame:
    """(user_idx, hist_items, hist_weights, seen): one row per train user, the input of the
    blocked scorers. Users with no positives get empty histories."""
    # One list of structs, split afterwards, keeps items and weights aligned by construction.
    pairs = F.struct(F.col("item_idx").cast("int").alias("i"), F.col("weight").cast("float").alias("w"))
    hist = (positives(train).groupBy("user_idx").agg(F.collect_list(pairs).alias("h"))
            .select("user_idx", F.col("h.i").alias("hist_items"), F.col("h.w").alias("hist_weights")))
    empty_i = F.array().cast(T.ArrayType(T.IntegerType()))
    empty_f = F.array().cast(T.ArrayType(T.FloatType()))
    return (seen_items(train).join(hist, "user_idx", "left")
            .select("user_idx", F.coalesce("hist_items", empty_i).alias("hist_items"),
                    F.coalesce("hist_weights", empty_f).alias("hist_weights"), "seen"))


def distinct_users(users: DataFrame) -> DataFrame:
    return users.select(F.col("user_idx").cast("int").alias("user_idx")).distinct()


class Recommender(abc.ABC):
    """fit(train) then recommend(users, k): (user_idx, item_idx, rank, score) with rank 1..k.

    ``recommend`` returns at most ``k`` rows per user; a user the model cannot score (no
    history, no factors) gets no rows, so the evaluation counts that as a miss rather than
    hiding it behind another model's fallback.
    """

    name: str = "recommender"

    @abc.abstractmethod
    def fit(self, train: DataFrame) -> Self: ...

    @abc.abstractmethod
    def recommend(self, users: DataFrame, k: int, exclude_seen: bool = True,
                  candidates: np.ndarray | None = None) -> DataFrame:
        """``candidates`` (item_idx values) restricts the lists to those items, e.g. the
        cold-item protocol ranks only items absent from train."""

    def _fitted(self, value: V | None) -> V:
        """A state attribute, or a clear error when ``recommend`` comes before ``fit``."""
        if value is None:
            raise NotFittedError(f"{type(self).__name__}: call fit before recommend")
        return value

    @staticmethod
    def _check_k(k: int) -> None:
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
