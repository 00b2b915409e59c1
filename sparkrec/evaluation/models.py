"""Every model the evaluator judges, behind the baselines' one ``Recommender`` contract.

The hybrid model is trained by the train stage and only loaded here; wrapping it as a
``Recommender`` means it is scored by the same exact top-K, the same seen-item exclusion and
the same metrics code as every baseline, so a difference in numbers is a difference in models.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Self

import numpy as np
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from ..baselines import EASE, ALSBaseline, ContentOnly, ItemKNN, MostPopular, Recommender
from ..baselines.base import distinct_users
from ..config import Config
from ..lake import Lake
from ..model.data import tower_inputs
from ..model.registry import LoadedModel, latest_run_id, load_model
from ..model.store import lake_location
from ..ranking import seen_items
from ..session import scoring_partitions
from ..text.embedding_tables import item_embeddings_table
from .metrics import train_rows


class HybridRecommender(Recommender):
    """The trained two-tower model: user tower over each user's last N train positives.

    ``fit`` does not train (the train stage did, on the same split): it observes the train
    part, building the users' model inputs exactly as the recommend stage builds them from
    current events, and ``recommend`` runs the recommend stage's scorer on them. The model is
    saved by the train stage (its MLflow run), so ``save``/``load`` here are not used.
    """

    name = "hybrid"

    def __init__(self, cfg: Config, loaded: LoadedModel) -> None:
        self.cfg, self.loaded = cfg, loaded
        self._states: DataFrame | None = None

    def fit(self, train: DataFrame) -> Self:
        return self.observe(train)

    def observe(self, events: DataFrame) -> Self:
        meta = self.loaded.meta
        n, gap_scale = int(meta.get("history", self.loaded.spec.history)), float(meta.get("gap_scale", 1.0))
        rows = train_rows(events)
        positive = rows.filter(F.coalesce(F.col("is_positive"), F.lit(False)))
        seen = seen_items(rows, offset=1)
        self.release()
        self._states = (tower_inputs(positive, n, gap_scale).join(seen, "user_idx", "left")
                        .select("user_idx", F.col("user_idx").cast("string").alias("user_id"), "hist", "gaps",
                                "seen", F.lit("history").alias("basis"), "items", "weights").cache())
        return self

    def recommend(self, users: DataFrame, k: int, exclude_seen: bool = True,
                  candidates: np.ndarray | None = None) -> DataFrame:
        from ..recommend.job import make_payload
        from ..recommend.score import score_users

        self._check_k(k)
        spec = self.loaded.spec
        eligible = np.ones(spec.n_items + 1, dtype=bool)
        eligible[0] = False
        if candidates is not None:
            allowed = np.asarray(candidates, dtype=np.int64)
            eligible[:] = False
            eligible[allowed[(allowed >= 0) & (allowed < spec.n_items)] + 1] = True
        rc = self.cfg.recommend.model_copy(update={"k": k, "exclude_seen": exclude_seen})
        payload = make_payload(self.cfg.model_copy(update={"recommend": rc}), self.loaded, eligible)
        states = distinct_users(users).join(self._fitted(self._states), "user_idx")
        spark = users.sparkSession
        parts = scoring_partitions(spark, rc.partitions)
        return score_users(spark, states, payload, parts).select(
            "user_idx", "item_idx", "rank", "score")

    def release(self) -> None:
        if self._states is not None:
            self._states.unpersist()
            self._states = None

    def _saved(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        raise NotImplementedError("the hybrid is saved by the train stage: its MLflow run is the saved model")

    @classmethod
    def _from_saved(cls, params: dict[str, Any], arrays: dict[str, np.ndarray]) -> Self:
        raise NotImplementedError("load the hybrid with sparkrec.model.registry.load_model(run_id)")


@dataclass
class Candidate:
    """A model ready to fit, and what the report says about how it was chosen."""

    name: str
    model: Recommender
    info: dict[str, Any] = field(default_factory=dict)
    train_seconds: float | None = None  # known up front for the hybrid (from its MLflow run)


def hybrid_run(cfg: Config, split: str, lake: Lake | None = None) -> str:
    ec = cfg.evaluation
    return ec.hybrid_run_id or latest_run_id(cfg.train.mlflow_uri, cfg.train.experiment, cfg.data.dataset, split,
                                             lake=lake_location(lake) if lake is not None else None)


def hybrid_candidate(cfg: Config, split: str, lake: Lake | None = None) -> Candidate:
    import mlflow

    run_id = hybrid_run(cfg, split, lake)
    loaded = load_model(run_id, cfg.train.mlflow_uri)
    trained_on = loaded.meta.get("split")
    if trained_on is not None and trained_on != split:
        raise ValueError(f"hybrid model {run_id} was trained on split {trained_on!r}, but evaluation.split is "
                         f"{split!r}: its test rows were training rows. Run `sparkrec train "
                         f"train.split={split}` first, or set evaluation.hybrid_run_id")
    run = mlflow.get_run(run_id)
    seconds = run.data.metrics.get("train_seconds")
    return Candidate("hybrid", HybridRecommender(cfg, loaded), {"run_id": run_id, "split": trained_on},
                     float(seconds) if seconds is not None else None)


def make_candidate(name: str, cfg: Config, lake: Lake, split: str) -> Candidate:
    """One named model configured from ``cfg.evaluation``; the hybrid comes from MLflow."""
    ec = cfg.evaluation
    if name == "hybrid":
        return hybrid_candidate(cfg, split, lake)
    if name == "most_popular":
        return Candidate(name, MostPopular.from_config(ec))
    if name == "als":
        return Candidate(name, ALSBaseline.from_config(ec))
    if name == "itemknn":
        return Candidate(name, ItemKNN.from_config(ec))
    if name == "ease":
        return Candidate(name, EASE.from_config(ec))
    if name == "content_only":
        if not lake.exists("item_embeddings"):
            raise ValueError("content_only needs the item_embeddings table: run `sparkrec embed` first")
        return Candidate(name, ContentOnly(lake.read(item_embeddings_table(lake, split)).select("item_idx", "vector")))
    raise ValueError(f"unknown model {name!r}")


def tuning_info(model: Recommender) -> dict[str, Any]:
    """The chosen hyper-parameters, for the report and MLflow."""
    for attr in ("best_params", "best_lambda"):
        value = getattr(model, attr, None)
        if value is not None:
            return {attr: value}
    return {}


def timed_fit(candidate: Candidate, train: DataFrame) -> float:
    """Seconds to fit (tuning included), unless the model was trained elsewhere."""
    start = time.perf_counter()
    candidate.model.fit(train)
    seconds = time.perf_counter() - start
    candidate.info.update(tuning_info(candidate.model))
    if candidate.train_seconds is None:
        candidate.train_seconds = seconds
    return seconds
