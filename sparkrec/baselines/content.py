"""Content-only recommendations from item embeddings: the cold-item baseline.

It never looks at who else liked an item, so an item added yesterday with no interactions
competes on equal terms; that is the number a hybrid model has to beat on cold items.
"""

from __future__ import annotations

from typing import Any, Self

import numpy as np
import pyarrow as pa
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from .base import Held, SharedMatrix, scoring_inputs
from .matrix import MatrixScored
from .scoring import ItemSpace, ScoreBlock, history_matrix


def unit_rows(matrix: np.ndarray) -> np.ndarray:
    """Rows scaled to length 1; zero rows stay zero (they then score 0 against everything)."""
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return np.divide(matrix, norms, out=np.zeros_like(matrix), where=norms > 0)


class _ProfileScorer:
    def __init__(self, vectors: Held, space: ItemSpace, weighted: bool) -> None:
        self.vectors, self.space, self.weighted = vectors, space, weighted

    def __call__(self, batch: pa.RecordBatch) -> np.ndarray:
        vectors = self.vectors.value
        # The weighted mean and the weighted sum point the same way; cosine needs only that.
        profiles = history_matrix(batch, self.space, binary=not self.weighted) @ vectors
        scores = unit_rows(profiles) @ vectors.T
        scores[~np.any(profiles != 0, axis=1)] = -np.inf  # no vectored history: nothing to say
        return scores


class ContentOnly(MatrixScored):
    """score(u, i) = cos(weighted mean of u's history vectors, v_i) over every vectored item.

    ``item_vectors`` is (item_idx int, vector array<float>), e.g. the text-embedding stage's
    output; vectors are re-normalised here so unnormalised input cannot skew the ranking.
    The vector table is broadcast (items x dim float32). Users whose history has no vectored
    item get no rows. A loaded model carries its vectors, so ``item_vectors`` may be None.
    """

    name = "content_only"

    def __init__(self, item_vectors: DataFrame | None, weighted: bool = True) -> None:
        self.item_vectors, self.weighted = item_vectors, weighted
        self.space: ItemSpace | None = None
        self._vectors: SharedMatrix | None = None
        self._state: DataFrame | None = None

    def fit(self, train: DataFrame) -> Self:
        if self.item_vectors is None:
            raise ValueError("ContentOnly.fit needs item_vectors")
        table = (self.item_vectors.select(F.col("item_idx").cast("int"), "vector")
                 .filter(F.size("vector") > 0).dropDuplicates(["item_idx"]).toPandas()
                 .sort_values("item_idx"))
        if table.empty:
            raise ValueError("ContentOnly needs at least one item vector")
        dims = table["vector"].map(len).unique()
        if len(dims) != 1:
            raise ValueError(f"item vectors must all have one length, got {sorted(dims)}")
        matrix = unit_rows(np.stack(table["vector"].to_numpy()).astype(np.float32))
        self.release()
        self.space = ItemSpace(table["item_idx"].to_numpy())
        self._vectors = SharedMatrix(matrix)
        return self.observe(train)

    def observe(self, events: DataFrame) -> Self:
        """The item vectors stay; user profiles are rebuilt from the histories in ``events``."""
        if self._state is not None:
            self._state.unpersist()
        self._state = scoring_inputs(events).filter(F.size("hist_items") > 0).cache()
        return self

    def _matrix(self) -> SharedMatrix | None:
        return self._vectors

    def _scorer(self, matrix: Held, space: ItemSpace) -> ScoreBlock:
        return _ProfileScorer(matrix, space, self.weighted)

    def release(self) -> None:
        """Drop the broadcast vectors and the cached user state; the vectors stay on the driver."""
        if self._vectors is not None:
            self._vectors.release()
        if self._state is not None:
            self._state.unpersist()
            self._state = None

    def _saved(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        return {"weighted": self.weighted}, {"item_ids": self._fitted(self.space).item_ids,
                                             "vectors": self._fitted(self._vectors).matrix}

    @classmethod
    def _from_saved(cls, params: dict[str, Any], arrays: dict[str, np.ndarray]) -> Self:
        model = cls(None, params["weighted"])
        model.space, model._vectors = ItemSpace(arrays["item_ids"]), SharedMatrix(arrays["vectors"])
        return model
