"""EASE (Steck, 2019): a closed-form item-item model, often the strongest simple baseline.

The Gram matrix is multiplied out on the driver from X's entries (summed on executors for a
user base too large to collect), the inversion is on the driver in numpy (an items x items
dense problem, hence the ``max_items`` guard), and users are scored on executors against the
broadcast weight matrix, a block of users per BLAS product.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Self

import numpy as np
import pandas as pd
import pyarrow as pa
import scipy.sparse as sp
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from ..cooccurrence import driver_gram, gram
from ..linalg import spd_inverse
from ..logs import get_logger, log_fields
from .base import Held, SharedMatrix, scoring_inputs
from .cooccurrence import user_item_values
from .matrix import MatrixScored
from .scoring import ItemSpace, ScoreBlock, history_matrix
from .tuning import Holdout, holdout_validation, select_by_validation

if TYPE_CHECKING:
    from ..config import EvaluationConfig

log = get_logger("baselines.ease")


# X's rows collected for a driver-side Gram (~16 bytes each as pandas): 50M is ~800 MB, more than
# all of Book-Crossing's or ml-20m's ratings; a larger user base is summed on the executors.
DRIVER_ENTRIES = 50_000_000


class TooManyItemsError(ValueError):
    """The catalogue is too large for a dense driver-side inversion."""


def ease_weights(gram_matrix: np.ndarray, lam: float) -> np.ndarray:
    """B = I - P diag(1/diag(P)), P = (G + lam I)^-1: the zero-diagonal least-squares solution."""
    if lam <= 0:
        raise ValueError(f"EASE needs lambda > 0, got {lam}")
    system = gram_matrix.copy()  # G + lam I without an m x m identity (3.2 GB at 20,000 items)
    system[np.diag_indices_from(system)] += lam
    b = spd_inverse(system)
    del system
    b /= -np.diag(b)[None, :]  # in place: P is not needed after B
    np.fill_diagonal(b, 0.0)
    return b


def _scatter(entries: pd.DataFrame, space: ItemSpace, matrix: np.ndarray) -> None:
    rows, _ = space.columns(entries["i"].to_numpy())
    cols, _ = space.columns(entries["j"].to_numpy())
    np.add.at(matrix, (rows, cols), entries["value"].to_numpy(dtype=np.float64))


def dense_gram(x: DataFrame, max_items: int, driver_entries: int = DRIVER_ENTRIES) -> tuple[ItemSpace, np.ndarray]:
    """X^T X over the items of ``x`` (user_idx, item_idx, value), densified on the driver:
    multiplied out there when ``x`` has at most ``driver_entries`` rows (what comes over is
    smaller than the Gram's entries would be), else summed on executors by the co-occurrence
    job, which spreads a large user base's pairs over the cluster."""
    sizes = x.agg(F.countDistinct("item_idx").alias("items"), F.count("*").alias("entries")).first()
    n_items, n_entries = int(sizes["items"]), int(sizes["entries"])
    if n_items > max_items:
        gib = 5 * 8 * n_items**2 / 2**30  # Gram, its tuning copy, inverse and weights at peak
        raise TooManyItemsError(
            f"EASE inverts a dense {n_items} x {n_items} matrix on the driver (~{gib:.1f} GiB); "
            f"that is above max_items={max_items}. Raise max_items if the driver can hold it, "
            "filter the catalogue, or use ItemKNN, which has no such limit.")
    if n_entries <= driver_entries:
        pdf = x.select("user_idx", "item_idx", "value").toPandas()
        space = ItemSpace(pdf["item_idx"].to_numpy())
        cols, _ = space.columns(pdf["item_idx"].to_numpy())
        users, user_ids = pd.factorize(pdf["user_idx"])
        matrix = sp.csr_matrix((pdf["value"].to_numpy(np.float64), (users, cols)), shape=(len(user_ids), len(space)))
        return space, driver_gram(matrix)
    entries = gram(x).toPandas()
    space = ItemSpace(entries["i"].to_numpy())
    matrix = np.zeros((len(space), len(space)), dtype=np.float64)
    _scatter(entries, space, matrix)
    return space, matrix


def without_held_out(full: np.ndarray, space: ItemSpace, x: DataFrame, held: DataFrame) -> np.ndarray:
    """The Gram matrix of ``x`` minus the held-out (user_idx, item_idx) cells, from the full one.

    With H the held-out cells and X = F + H, F^T F = X^T X - (H^T X + X^T H) + H^T H: the fit
    part's Gram costs one pass over the validation users' rows instead of a second full
    self-join. H^T H has off-diagonal terms whenever a user gives up several items (a random
    share, not one), so it is computed as pairs, not squares.
    """
    held_x = x.join(held.select("user_idx", "item_idx").distinct(), ["user_idx", "item_idx"]).select(
        "user_idx", F.col("item_idx").alias("v"), F.col("value").alias("a"))
    cross = (held_x.join(x, "user_idx").groupBy(F.col("v").alias("i"), F.col("item_idx").alias("j"))
             .agg(F.sum(F.col("a") * F.col("value")).alias("value")).toPandas())
    other = held_x.select("user_idx", F.col("v").alias("w"), F.col("a").alias("b"))
    pairs = (held_x.join(other, "user_idx").groupBy(F.col("v").alias("i"), F.col("w").alias("j"))
             .agg(F.sum(F.col("a") * F.col("b")).alias("value")).toPandas())
    delta = np.zeros_like(full)
    _scatter(cross, space, delta)
    delta += delta.T
    _scatter(pairs.assign(value=-pairs["value"]), space, delta)
    return full - delta


class _DenseScorer:
    def __init__(self, weights: Held, space: ItemSpace, binary: bool) -> None:
        self.weights, self.space, self.binary = weights, space, binary

    def __call__(self, batch: pa.RecordBatch) -> np.ndarray:
        return history_matrix(batch, self.space, self.binary) @ self.weights.value


class EASE(MatrixScored):
    """score(u) = x_u B over the user's positives; ``lambdas`` is searched on validation.

    The Gram matrix is computed once, on the full train; with several ``lambdas`` the
    validation fit part's matrix is derived from it (:func:`without_held_out`) and inverted per
    lambda, and the best NDCG@10 lambda is solved on the full train (``best_lambda``,
    ``tuning_results``). Users without positives in train get no rows.
    """

    name = "ease"

    def __init__(self, lambdas: Sequence[float] = (250.0,), max_items: int = 20_000, binary: bool = True,
                 holdout: Holdout = "last", seed: int = 42) -> None:
        if not lambdas:
            raise ValueError("EASE needs at least one lambda")
        self.lambdas, self.max_items, self.binary = [float(v) for v in lambdas], max_items, binary
        self.holdout, self.seed = holdout, seed
        self.best_lambda: float | None = None
        self.tuning_results: list[dict[str, Any]] = []
        self.space: ItemSpace | None = None
        self._weights: SharedMatrix | None = None
        self._state: DataFrame | None = None
        self._cached: DataFrame | None = None
        self.weights_matrix: np.ndarray | None = None  # B, float32, for inspection

    @classmethod
    def from_config(cls, cfg: EvaluationConfig, **overrides: Any) -> EASE:
        params: dict[str, Any] = {"lambdas": cfg.ease_lambdas, "max_items": cfg.ease_max_items,
                                  "holdout": cfg.baseline_holdout}
        return cls(**{**params, **overrides})

    def fit(self, train: DataFrame) -> Self:
        x = user_item_values(train, self.binary).cache()
        try:
            space, full = dense_gram(x, self.max_items)
            best = self.lambdas[0] if len(self.lambdas) == 1 else self._tune(train, x, space, full)
        finally:
            x.unpersist()
        self.best_lambda = best
        return self._solved(space, ease_weights(full, best)).observe(train)

    def observe(self, events: DataFrame) -> Self:
        """B stays; the users' histories (x_u) are rebuilt from ``events``."""
        return self._with_state(scoring_inputs(events).cache())

    def _tune(self, train: DataFrame, x: DataFrame, space: ItemSpace, full: np.ndarray) -> float:
        fit_part, val_truth = holdout_validation(train, self.holdout, self.seed)
        val_truth = val_truth.cache()
        state = scoring_inputs(fit_part).cache()
        matrix = without_held_out(full, space, x, val_truth)

        def candidate(params: dict[str, Any]) -> EASE:
            model = EASE([params["lam"]], self.max_items, self.binary)
            return model._solved(space, ease_weights(matrix, params["lam"]))._with_state(state, owns_state=False)

        try:
            params, self.tuning_results = select_by_validation(
                [{"lam": lam} for lam in self.lambdas], candidate, val_truth, model=self.name)
        finally:
            state.unpersist()
            val_truth.unpersist()
        log_fields(log, "ease selected", lam=params["lam"])
        return float(params["lam"])

    def _solved(self, space: ItemSpace, weights: np.ndarray) -> Self:
        self.release()
        self.space = space
        self.weights_matrix = matrix = weights.astype(np.float32)
        self._weights = SharedMatrix(matrix)
        return self

    def _with_state(self, state: DataFrame, owns_state: bool = True) -> Self:
        """Scores the users of ``state``; a state shared between tuning candidates is not
        unpersisted by any of them (``owns_state=False``)."""
        if self._cached is not None:
            self._cached.unpersist()
        self._cached = state if owns_state else None
        self._state = state.filter(F.size("hist_items") > 0)
        return self

    def _matrix(self) -> SharedMatrix | None:
        return self._weights

    def _scorer(self, matrix: Held, space: ItemSpace) -> ScoreBlock:
        return _DenseScorer(matrix, space, self.binary)

    def release(self) -> None:
        """Drop the broadcast weights (and the cached user state this model owns); B stays."""
        if self._weights is not None:
            self._weights.release()
        if self._cached is not None:
            self._cached.unpersist()
        self._state = self._cached = None

    def _saved(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        params = {"lambdas": self.lambdas, "best_lambda": self.best_lambda, "max_items": self.max_items,
                  "binary": self.binary, "holdout": self.holdout, "seed": self.seed}
        return params, {"item_ids": self._fitted(self.space).item_ids,
                        "weights": self._fitted(self.weights_matrix)}

    @classmethod
    def _from_saved(cls, params: dict[str, Any], arrays: dict[str, np.ndarray]) -> Self:
        model = cls(params["lambdas"], params["max_items"], params["binary"], params["holdout"], params["seed"])
        model.best_lambda = params["best_lambda"]
        return model._solved(ItemSpace(arrays["item_ids"]), arrays["weights"])
