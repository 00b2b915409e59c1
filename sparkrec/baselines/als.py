"""Implicit-feedback ALS (Spark ML), tuned on a validation item per user.

An untuned ALS is the classic strawman: its quality swings by a factor of two or more over
rank, regularisation and confidence scaling. So ``fit`` searches a small grid on a holdout
carved from train and refits the winner, and the grid lives in ``EvaluationConfig``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Self

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.ml.recommendation import ALS
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from ..logs import get_logger, log_fields
from .base import Recommender, distinct_users, positives, seen_items
from .scoring import ItemSpace, top_k_per_user
from .tuning import Holdout, expand_grid, holdout_validation, select_by_validation

if TYPE_CHECKING:
    from pyspark import Broadcast

    from ..config import EvaluationConfig

log = get_logger("baselines.als")


class _FactorScorer:
    """Scores a block of users as U @ V^T against the broadcast item factors."""

    def __init__(self, items: Broadcast, rank: int) -> None:
        self.items, self.rank = items, rank

    def __call__(self, batch: pa.RecordBatch) -> np.ndarray:
        flat = pc.list_flatten(batch.column("features")).to_numpy(zero_copy_only=False)
        users = flat.astype(np.float32).reshape(batch.num_rows, self.rank)
        return users @ self.items.value.T


class ALSBaseline(Recommender):
    """``pyspark.ml.recommendation.ALS`` with ``implicitPrefs=True`` on the train positives.

    The confidence of a positive is ``1 + alpha * weight``. With more than one grid point,
    ``fit`` holds out one positive per user (see :func:`holdout_validation`), fits every
    (rank, reg_param, alpha), keeps the best NDCG@10 and refits it on the whole train;
    ``best_params`` and ``tuning_results`` record the search. Scoring is exact over the
    catalogue with broadcast item factors (:func:`top_k_per_user`); users without factors
    (not in train) get no rows.
    """

    name = "als"

    def __init__(self, ranks: Sequence[int] = (64,), reg_params: Sequence[float] = (0.1,),
                 alphas: Sequence[float] = (10.0,), max_iter: int = 15, holdout: Holdout = "last",
                 seed: int = 42, num_blocks: int | None = None) -> None:
        self.grid = expand_grid({"rank": list(ranks), "reg_param": list(reg_params), "alpha": list(alphas)})
        self.max_iter, self.holdout, self.seed, self.num_blocks = max_iter, holdout, seed, num_blocks
        self.best_params: dict[str, Any] | None = None
        self.tuning_results: list[dict[str, Any]] = []
        self.space: ItemSpace | None = None
        self._items: Broadcast | None = None
        self._users: DataFrame | None = None
        self._rank = 0

    @classmethod
    def from_config(cls, cfg: EvaluationConfig, **overrides: Any) -> ALSBaseline:
        params: dict[str, Any] = {"ranks": cfg.als_ranks, "reg_params": cfg.als_reg_params,
                                  "alphas": cfg.als_alphas, "max_iter": cfg.als_max_iter,
                                  "holdout": cfg.baseline_holdout}
        return cls(**{**params, **overrides})

    def fit(self, train: DataFrame) -> Self:
        best = self.grid[0]
        if len(self.grid) > 1:
            fit_part, val_truth = holdout_validation(train, self.holdout, self.seed)
            fit_part, val_truth = fit_part.cache(), val_truth.cache()
            try:
                best, self.tuning_results = select_by_validation(
                    self.grid, lambda p: self._candidate(p).fit(fit_part), val_truth, model=self.name)
            finally:
                fit_part.unpersist()
                val_truth.unpersist()
            log_fields(log, "als selected", **best)
        self.best_params = best
        self._fit_once(train, **best)
        return self

    def _candidate(self, params: dict[str, Any]) -> ALSBaseline:
        return ALSBaseline([params["rank"]], [params["reg_param"]], [params["alpha"]], self.max_iter,
                           self.holdout, self.seed, self.num_blocks)

    def _fit_once(self, train: DataFrame, rank: int, reg_param: float, alpha: float) -> None:
        spark = train.sparkSession
        blocks = self.num_blocks or max(2, spark.sparkContext.defaultParallelism)
        als = ALS(rank=rank, maxIter=self.max_iter, regParam=reg_param, alpha=alpha, implicitPrefs=True,
                  userCol="user_idx", itemCol="item_idx", ratingCol="weight", seed=self.seed,
                  numUserBlocks=blocks, numItemBlocks=blocks, coldStartStrategy="drop")
        model = als.fit(positives(train))
        # Item factors are (items x rank) floats: small enough to broadcast for exact scoring.
        items = model.itemFactors.toPandas().sort_values("id")
        matrix = (np.stack(items["features"].to_numpy()).astype(np.float32) if len(items)
                  else np.zeros((0, rank), dtype=np.float32))
        self.release()
        self.space = ItemSpace(items["id"].to_numpy())
        self._items = spark.sparkContext.broadcast(matrix)
        self._rank = rank
        self._users = (model.userFactors.select(F.col("id").alias("user_idx"), "features")
                       .join(seen_items(train), "user_idx", "left").cache())

    def recommend(self, users: DataFrame, k: int, exclude_seen: bool = True,
                  candidates: np.ndarray | None = None) -> DataFrame:
        self._check_k(k)
        space = self._fitted(self.space)
        state = distinct_users(users).join(self._fitted(self._users), "user_idx")
        scorer = _FactorScorer(self._fitted(self._items), self._rank)
        return top_k_per_user(state, scorer, space, k, exclude_seen, space.mask(candidates))

    def release(self) -> None:
        """Drop the cached user factors and the broadcast item factors."""
        if self._items is not None:
            self._items.destroy()
            self._items = None
        if self._users is not None:
            self._users.unpersist()
            self._users = None
