"""The scoring half shared by the baselines whose scores are one driver-side matrix applied to a
user's history (EASE's item-item weights, ALS's item factors, content-only's item vectors).

Batch recommendations broadcast the matrix to the executors and the HTTP service scores in its
own process over the same matrix, so both paths run one scorer class: a model says which matrix
and which scorer, and this class wires them to Spark and to the service the same way.
"""

from __future__ import annotations

import abc

import numpy as np
from pyspark.sql import DataFrame

from .base import Held, Recommender, SharedMatrix, distinct_users
from .scoring import ItemSpace, ScoreBlock, top_k_per_user


class MatrixScored(Recommender):
    """A model scored by ``_scorer(matrix, space)`` over the users in ``_state`` (rows of
    :func:`~.base.scoring_inputs`, users with a history only)."""

    space: ItemSpace | None
    _state: DataFrame | None

    @abc.abstractmethod
    def _matrix(self) -> SharedMatrix | None:
        """The driver-side matrix the scorer reads (None before ``fit``)."""

    @abc.abstractmethod
    def _scorer(self, matrix: Held, space: ItemSpace) -> ScoreBlock:
        """The block scorer over ``matrix``: a broadcast on executors, the matrix itself in process."""

    def recommend(self, users: DataFrame, k: int, exclude_seen: bool = True,
                  candidates: np.ndarray | None = None) -> DataFrame:
        self._check_k(k)
        space = self._fitted(self.space)
        state = distinct_users(users).join(self._fitted(self._state), "user_idx")
        scorer = self._scorer(self._fitted(self._matrix()).broadcast(users.sparkSession), space)
        return top_k_per_user(state, scorer, space, k, exclude_seen, space.mask(candidates))

    def local_scorer(self) -> tuple[ScoreBlock, ItemSpace]:
        """The scorer ``recommend`` broadcasts, over the driver-side matrix: one request in the HTTP service."""
        space = self._fitted(self.space)
        return self._scorer(self._fitted(self._matrix()), space), space
