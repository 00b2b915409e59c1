"""MostPopular: the floor every personalised model has to clear."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Self

import numpy as np
import pyarrow as pa
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from .base import Recommender, distinct_users, positives, seen_items
from .scoring import ItemSpace, ScoreBlock, top_k_per_user

if TYPE_CHECKING:
    from ..config import EvaluationConfig


class _Tiled:
    def __init__(self, scores: np.ndarray) -> None:
        self.scores = scores

    def __call__(self, batch: pa.RecordBatch) -> np.ndarray:
        return np.tile(self.scores, (batch.num_rows, 1))


class MostPopular(Recommender):
    """Items ranked by how many train users liked them, optionally favouring recent likes.

    With ``half_life`` set, a positive counts ``0.5 ** ((latest_seq - seq) / half_life)``,
    ``seq`` being epoch seconds for timestamped data: it tracks what is popular now, which
    on temporal splits is a much stronger floor than all-time counts. Every user, known or
    not, gets the same list minus what they have seen.
    """

    name = "most_popular"

    def __init__(self, half_life: float | None = None) -> None:
        if half_life is not None and half_life <= 0:
            raise ValueError(f"half_life must be positive, got {half_life}")
        self.half_life = half_life
        self.space: ItemSpace | None = None
        self.scores: np.ndarray | None = None
        self._seen: DataFrame | None = None

    @classmethod
    def from_config(cls, cfg: EvaluationConfig, **overrides: Any) -> MostPopular:
        return cls(**{"half_life": cfg.popularity_half_life, **overrides})

    def fit(self, train: DataFrame) -> Self:
        pos = positives(train)
        if self.half_life is None:
            value = F.lit(1.0)
        else:
            latest = pos.agg(F.max("seq")).collect()[0][0] or 0
            value = F.pow(F.lit(0.5), (F.lit(latest) - F.col("seq")).cast("double") / self.half_life)
        # One score per item, so the driver holds a vector as long as the catalogue: small.
        pop = pos.groupBy("item_idx").agg(F.sum(value).alias("score")).toPandas()
        order = np.argsort(pop["item_idx"].to_numpy())
        self.space = ItemSpace(pop["item_idx"].to_numpy()[order])
        self.scores = pop["score"].to_numpy(dtype=np.float64)[order]
        return self.observe(train)

    def observe(self, events: DataFrame) -> Self:
        """The scores stay; only what each user has seen (and must not be offered) changes."""
        self.release()
        self._seen = seen_items(events).cache()
        return self

    def recommend(self, users: DataFrame, k: int, exclude_seen: bool = True,
                  candidates: np.ndarray | None = None) -> DataFrame:
        self._check_k(k)
        space = self._fitted(self.space)
        state = distinct_users(users).join(self._fitted(self._seen), "user_idx", "left")
        return top_k_per_user(state, _Tiled(self._fitted(self.scores)), space, k, exclude_seen,
                              space.mask(candidates))

    def local_scorer(self) -> tuple[ScoreBlock, ItemSpace]:
        """The scorer ``recommend`` broadcasts, over the driver-side item scores: one request in the HTTP service."""
        return _Tiled(self._fitted(self.scores)), self._fitted(self.space)

    def release(self) -> None:
        if self._seen is not None:
            self._seen.unpersist()
            self._seen = None

    def _saved(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        return {"half_life": self.half_life}, {"item_ids": self._fitted(self.space).item_ids,
                                               "scores": self._fitted(self.scores)}

    @classmethod
    def _from_saved(cls, params: dict[str, Any], arrays: dict[str, np.ndarray]) -> Self:
        model = cls(params["half_life"])
        model.space, model.scores = ItemSpace(arrays["item_ids"]), arrays["scores"]
        return model
