"""Implicit-feedback ALS (Spark ML), tuned on a validation item per user.

An untuned ALS is the classic strawman: its quality swings by a factor of two or more over
rank, regularisation and confidence scaling. So ``fit`` searches a small grid on a holdout
carved from train and refits the winner, and the grid lives in ``EvaluationConfig``.

Users are scored by *folding in*: their factors are solved from their positives against the
fixed item factors with the same least-squares step Spark's implicit ALS ends on (its last
half-iteration updates users from the final item factors), so folded-in factors equal Spark's
up to float rounding. The model therefore keeps only item factors, a saved model serves users
from their current events, and users with events after the fit need no refit.
"""


from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Self

import numpy as np
import pyarrow as pa
from pyspark.ml.recommendation import ALS
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from ..logs import get_logger, log_fields
from ..model.factors import fold_in
from .base import Held, SharedMatrix, positives, scoring_inputs
from .matrix import MatrixScored
from .scoring import ItemSpace, ScoreBlock, list_entries
from .tuning import Holdout, expand_grid, holdout_validation, select_by_validation

if TYPE_CHECKING:
    from ..config import EvaluationConfig

log = get_logger("baselines.als")


class _FoldInScorer:
    """Scores a block of users as U @ V^T, U folded in from the users' histories."""

    def __init__(self, items: Held, space: ItemSpace, alpha: float, reg_param: float) -> None:
        self.items, self.space, self.alpha, self.reg_param = items, space, alpha, reg_param

    def __call__(self, batch: pa.RecordBatch) -> np.ndarray:
        v = self.items.value
        rows, items = list_entries(batch, "hist_items")  # entries come grouped by row
        _, weights = list_entries(batch, "hist_weights")
        cols, known = self.space.columns(items)
        keep = known & (weights > 0)
        indptr = np.zeros(batch.num_rows + 1, np.int64)
        np.cumsum(np.bincount(rows[keep], minlength=batch.num_rows), out=indptr[1:])
        return fold_in(v, indptr, cols[keep], weights[keep], self.reg_param, self.alpha) @ v.T


class ALSBaseline(MatrixScored):
    """``pyspark.ml.recommendation.ALS`` with ``implicitPrefs=True`` on the train positives.

    The confidence of a positive is ``1 + alpha * weight``. With more than one grid point,
    ``fit`` holds out one positive per user (see :func:`holdout_validation`), fits every
    (rank, reg_param, alpha), keeps the best NDCG@10 and refits it on the whole train;
    ``best_params`` and ``tuning_results`` record the search. Scoring is exact over the
    catalogue with broadcast item factors (:func:`top_k_per_user`), users folded in from
    their observed positives (:func:`sparkrec.model.factors.fold_in`); users without positives get no rows.
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
        self._items: SharedMatrix | None = None
        self._state: DataFrame | None = None

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
        return self.observe(train)

    def observe(self, events: DataFrame) -> Self:
        """Item factors stay; users are folded in from their positives in ``events``."""
        if self._state is not None:
            self._state.unpersist()
        self._state = scoring_inputs(events).filter(F.size("hist_items") > 0).cache()
        return self

    def _candidate(self, params: dict[str, Any]) -> ALSBaseline:
        model = ALSBaseline([params["rank"]], [params["reg_param"]], [params["alpha"]], self.max_iter,
                            self.holdout, self.seed, self.num_blocks)
        model.best_params = dict(params)
        return model

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
        self._items = SharedMatrix(matrix)

    def _matrix(self) -> SharedMatrix | None:
        return self._items

    def _scorer(self, matrix: Held, space: ItemSpace) -> ScoreBlock:
        """Each user folded in from the history in their block (in the HTTP service: the request's)."""
        params = self._fitted(self.best_params)
        return _FoldInScorer(matrix, space, params["alpha"], params["reg_param"])

    def release(self) -> None:
        """Drop the cached user histories and the broadcast item factors (kept on the driver)."""
        if self._items is not None:
            self._items.release()
        if self._state is not None:
            self._state.unpersist()
            self._state = None

    def _saved(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        params = {"grid": self.grid, "best_params": self._fitted(self.best_params), "max_iter": self.max_iter,
                  "holdout": self.holdout, "seed": self.seed, "num_blocks": self.num_blocks}
        return params, {"item_ids": self._fitted(self.space).item_ids, "item_factors": self._fitted(self._items).matrix}

    @classmethod
    def _from_saved(cls, params: dict[str, Any], arrays: dict[str, np.ndarray]) -> Self:
        best = params["best_params"]
        model = cls([best["rank"]], [best["reg_param"]], [best["alpha"]], params["max_iter"], params["holdout"],
                    params["seed"], params["num_blocks"])
        model.grid, model.best_params = params["grid"], best
        model.space, model._items = ItemSpace(arrays["item_ids"]), SharedMatrix(arrays["item_factors"])
        return model
