"""What every baseline shares: the per-user state it needs, on top of the model contract.

The contract itself (:class:`Recommender`: fit / observe / recommend / save / load / release)
lives in :mod:`sparkrec.model.recommender`, beside the hybrid; it is re-exported here so
existing imports keep working. Baselines take the split table (or its train part, or the
``events`` table) as it is stored, so that a baseline and the model it is compared with see
exactly the same rows.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import numpy as np
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from ..model.recommender import RECS_SCHEMA as RECS_SCHEMA
from ..model.recommender import NotFittedError as NotFittedError
from ..model.recommender import Recommender as Recommender
from ..ranking import seen_items as ranking_seen_items
from ..ranking import train_rows

if TYPE_CHECKING:
    from pyspark import Broadcast


class Held(Protocol):
    """Where a scorer reads its matrix: a Spark broadcast on an executor, or the
    :class:`SharedMatrix` itself in the driver's process (the HTTP service), so one scorer
    class serves both paths."""

    @property
    def value(self) -> np.ndarray: ...


class SharedMatrix:
    """A driver-side array and its broadcast, made on first use.

    A loaded model is plain numpy until it meets Spark (``observe``/``recommend``), and
    ``release`` frees the executors' copy while the array stays on the driver, so a model can
    still be saved after its lists were computed.
    """

    def __init__(self, matrix: np.ndarray) -> None:
        self.matrix = matrix
        self._broadcast: Broadcast | None = None

    @property
    def value(self) -> np.ndarray:
        """The local array, read as a broadcast's ``value`` is: scoring in this process."""
        return self.matrix

    def broadcast(self, spark: SparkSession) -> Broadcast:
        if self._broadcast is None:
            self._broadcast = spark.sparkContext.broadcast(self.matrix)
        return self._broadcast

    def release(self) -> None:
        if self._broadcast is not None:
            self._broadcast.destroy()
            self._broadcast = None


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
    return ranking_seen_items(train_rows(train))


def scoring_inputs(train: DataFrame) -> DataFrame:
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
