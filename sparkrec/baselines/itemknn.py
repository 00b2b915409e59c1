"""Item-based nearest neighbours, end to end in Spark SQL.

Unlike the broadcast-matrix baselines this one never materialises an items x items matrix:
similarities live in a (item, neighbour, sim) table of at most ``neighbours`` rows per item,
and scoring is a join of user histories with that table, so it scales with the data rather
than with the square of the catalogue.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Self

import numpy as np
import pandas as pd
import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from ..cooccurrence import gram
from ..ranking import train_rows
from .base import Recommender, distinct_users, positives
from .cooccurrence import user_item_values
from .scoring import ItemSpace, ScoreBlock, list_entries

if TYPE_CHECKING:
    from ..config import EvaluationConfig


class _NeighbourScorer:
    """score(u, j) = sum of sim(i, j) over u's distinct positive items i, as the Spark join sums
    it; items no history item has as a neighbour get no score (-inf), as they get no row there."""

    def __init__(self, space: ItemSpace, pairs: dict[str, np.ndarray]) -> None:
        self.space = space
        rows, _ = space.columns(pairs["i"])
        order = np.argsort(rows, kind="stable")
        self.indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=len(space)))])
        self.neighbours = space.columns(pairs["j"])[0][order]
        self.sims = pairs["sim"].astype(np.float64)[order]

    def __call__(self, batch: pa.RecordBatch) -> np.ndarray:
        rows, items = list_entries(batch, "hist_items")
        cols, known = self.space.columns(items)
        pairs = np.unique(np.stack([rows[known], cols[known]]), axis=1)  # a re-rated item counts once
        starts, lens = self.indptr[pairs[1]], np.diff(self.indptr)[pairs[1]]
        flat = np.repeat(starts - np.cumsum(lens) + lens, lens) + np.arange(lens.sum())
        users, targets = np.repeat(pairs[0], lens), self.neighbours[flat]
        scores = np.zeros((batch.num_rows, len(self.space)), dtype=np.float64)
        np.add.at(scores, (users, targets), self.sims[flat])
        reached = np.zeros(scores.shape, dtype=bool)
        reached[users, targets] = True
        scores[~reached] = -np.inf
        return scores


class ItemKNN(Recommender):
    """Cosine item-item similarity with shrinkage, top-N neighbours per item.

    sim(i, j) = <x_i, x_j> / (|x_i| |x_j| + shrinkage), x_i the item's column of the (binary
    by default) user-item matrix; shrinkage damps similarities supported by few co-raters.
    score(u, j) = sum of sim(i, j) over the user's positive items i that have j among their
    ``neighbours`` nearest. ``max_user_history`` bounds the similarity self-join's cost
    (see :mod:`.cooccurrence`); scoring always uses the whole history. The (i, j, sim) table
    is what a saved model stores (items x ``neighbours`` rows at most).
    """

    name = "itemknn"

    def __init__(self, neighbours: int = 100, shrinkage: float = 10.0, binary: bool = True,
                 max_user_history: int | None = None) -> None:
        if neighbours < 1 or shrinkage < 0:
            raise ValueError(f"need neighbours >= 1 and shrinkage >= 0, got {neighbours}, {shrinkage}")
        self.neighbours, self.shrinkage = neighbours, shrinkage
        self.binary, self.max_user_history = binary, max_user_history
        self.similarities: DataFrame | None = None
        self._loaded: pd.DataFrame | None = None  # the saved (i, j, sim) rows, until observe
        self._history: DataFrame | None = None
        self._seen: DataFrame | None = None

    @classmethod
    def from_config(cls, cfg: EvaluationConfig, **overrides: Any) -> ItemKNN:
        params = {"neighbours": cfg.itemknn_neighbours, "shrinkage": cfg.itemknn_shrinkage}
        return cls(**{**params, **overrides})

    def fit(self, train: DataFrame) -> Self:
        x = user_item_values(train, self.binary, self.max_user_history)
        norms = x.groupBy("item_idx").agg(F.sqrt(F.sum(F.col("value") ** 2)).alias("norm"))
        ni = norms.select(F.col("item_idx").alias("i"), F.col("norm").alias("ni"))
        nj = norms.select(F.col("item_idx").alias("j"), F.col("norm").alias("nj"))
        # Norms are one number per item: broadcast, so the pair table is not shuffled again.
        sims = (gram(x, include_diagonal=False).join(F.broadcast(ni), "i").join(F.broadcast(nj), "j")
                .select("i", "j", (F.col("value") / (F.col("ni") * F.col("nj") + self.shrinkage)).alias("sim")))
        nearest = Window.partitionBy("i").orderBy(F.desc("sim"), "j")
        self.release()
        self._loaded = None
        self.similarities = (sims.withColumn("__r", F.row_number().over(nearest))
                             .filter(F.col("__r") <= self.neighbours).drop("__r").cache())
        self.similarities.count()  # materialise now, so fit time is fit time
        return self.observe(train)

    def observe(self, events: DataFrame) -> Self:
        """The similarity table stays; histories and seen pairs are rebuilt from ``events``."""
        self._similarities(events.sparkSession)
        for table in (self._history, self._seen):
            if table is not None:
                table.unpersist()
        self._history = positives(events).select("user_idx", F.col("item_idx").alias("i")).cache()
        self._seen = train_rows(events).select("user_idx", F.col("item_idx").alias("j")).distinct().cache()
        return self

    def _similarities(self, spark: SparkSession) -> DataFrame:
        if self.similarities is None and self._loaded is not None:
            self.similarities = spark.createDataFrame(self._loaded, "i int, j int, sim double").cache()
        return self._fitted(self.similarities)

    def recommend(self, users: DataFrame, k: int, exclude_seen: bool = True,
                  candidates: np.ndarray | None = None) -> DataFrame:
        self._check_k(k)
        history = distinct_users(users).join(self._fitted(self._history), "user_idx")
        sims = self._fitted(self.similarities)  # observe built it
        if candidates is not None:  # a list of item ids, small next to the pair table
            allowed = history.sparkSession.createDataFrame([(int(i),) for i in candidates], "j int")
            sims = sims.join(F.broadcast(allowed), "j")
        scores = history.join(sims, "i").groupBy("user_idx", "j").agg(F.sum("sim").alias("score"))
        if exclude_seen:
            scores = scores.join(self._fitted(self._seen), ["user_idx", "j"], "left_anti")
        best = Window.partitionBy("user_idx").orderBy(F.desc("score"), "j")
        return (scores.withColumn("rank", F.row_number().over(best)).filter(F.col("rank") <= k)
                .select("user_idx", F.col("j").cast("int").alias("item_idx"), F.col("rank").cast("int"),
                        F.col("score").cast("double")))

    def local_scorer(self) -> tuple[ScoreBlock, ItemSpace]:
        """The Spark join's sums, over the (i, j, sim) table in numpy: one request in the HTTP service."""
        _, pairs = self._saved()
        space = ItemSpace(np.concatenate([pairs["i"], pairs["j"]]))
        return _NeighbourScorer(space, pairs), space

    def release(self) -> None:
        """Drop the cached similarity, history and seen tables. The similarity table's plan
        stays, so the model can still be saved (at the cost of recomputing it)."""
        for table in (self.similarities, self._history, self._seen):
            if table is not None:
                table.unpersist()
        self._history = self._seen = None

    def _saved(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        pairs = self._loaded if self._loaded is not None else self._fitted(self.similarities).toPandas()
        pairs = pairs.sort_values(["i", "j"])
        params = {"neighbours": self.neighbours, "shrinkage": self.shrinkage, "binary": self.binary,
                  "max_user_history": self.max_user_history}
        return params, {"i": pairs["i"].to_numpy(np.int32), "j": pairs["j"].to_numpy(np.int32),
                        "sim": pairs["sim"].to_numpy(np.float64)}

    @classmethod
    def _from_saved(cls, params: dict[str, Any], arrays: dict[str, np.ndarray]) -> Self:
        model = cls(params["neighbours"], params["shrinkage"], params["binary"], params["max_user_history"])
        model._loaded = pd.DataFrame({"i": arrays["i"], "j": arrays["j"], "sim": arrays["sim"]})
        return model
