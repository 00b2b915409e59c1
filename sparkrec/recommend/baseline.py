"""Serving a saved baseline: load it, observe the users' current events, recommend, cite evidence.

The output has the hybrid scorer's shape (``score.SCORED``), so the same explanation code and
the same Delta write follow: a baseline is served like the hybrid, not beside it. Baselines
have no item space of their own to cite evidence from (most-popular has none at all), so
:func:`item_similarity` picks one space for every baseline: the item text embeddings when
they exist, else co-occurrence among the users' positive events.
"""

from __future__ import annotations

import numpy as np
from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from ..baselines.saved import load_recommender
from ..config import Config
from ..lake import Lake
from ..model.recommender import Recommender
from .score import SCORED


def _dot(a: Column, b: Column) -> Column:
    return F.aggregate(F.zip_with(a, b, lambda x, y: x * y), F.lit(0.0), lambda acc, v: acc + v)


def item_similarity(pairs: DataFrame, lake: Lake) -> DataFrame:
    """(i, j, sim) for the (i, j) item pairs given: the space a baseline's evidence is chosen in.

    Text cosine (``item_embeddings``) when the embed stage ran, so the cited items are the
    ones whose descriptions are nearest; otherwise the number of users with a positive event
    on both, the signal every interaction baseline ranks by. Pairs with no similarity (no
    vector, never together) are absent.
    """
    if lake.exists("item_embeddings"):
        vectors = lake.read("item_embeddings").select("item_idx", "vector").filter(F.size("vector") > 0)
        vectors = vectors.select("item_idx", "vector", F.sqrt(_dot(F.col("vector"), F.col("vector"))).alias("norm"))
        vi = vectors.select(F.col("item_idx").alias("i"), F.col("vector").alias("vi"), F.col("norm").alias("ni"))
        vj = vectors.select(F.col("item_idx").alias("j"), F.col("vector").alias("vj"), F.col("norm").alias("nj"))
        return pairs.join(vi, "i").join(vj, "j").select(
            "i", "j", (_dot(F.col("vi"), F.col("vj")) / (F.col("ni") * F.col("nj"))).alias("sim"))
    pos = lake.read("events").filter("is_positive").select("user_idx", "item_idx").distinct()
    return (pairs.join(pos.select("user_idx", F.col("item_idx").alias("i")), "i")
            .join(pos.select("user_idx", F.col("item_idx").alias("j")), ["user_idx", "j"])
            .groupBy("i", "j").agg(F.count(F.lit(1)).cast("double").alias("sim")))


def recent_positives(events: DataFrame, n: int) -> DataFrame:
    """(user_idx, i): each user's ``n`` latest positive items, the history evidence is cited from."""
    latest = Window.partitionBy("user_idx").orderBy(F.desc("seq"), F.desc("item_idx"))
    pos = events.filter("is_positive").groupBy("user_idx", "item_idx").agg(F.max("seq").alias("seq"))
    return (pos.withColumn("__r", F.row_number().over(latest)).filter(F.col("__r") <= n)
            .select("user_idx", F.col("item_idx").alias("i")))


def with_evidence(recs: DataFrame, history: DataFrame, lake: Lake, n: int) -> DataFrame:
    """``recs`` plus ``evidence_idx``: per recommended item, the ``n`` history items most similar
    to it (never the item itself), most similar first; empty when none is similar at all."""
    cand = (recs.select("user_idx", F.col("item_idx").alias("j")).join(history, "user_idx")
            .filter(F.col("i") != F.col("j")))
    sims = item_similarity(cand.select("i", "j").distinct(), lake)
    best = Window.partitionBy("user_idx", "j").orderBy(F.desc("sim"), "i")
    ev = (cand.join(sims, ["i", "j"]).withColumn("__r", F.row_number().over(best)).filter(F.col("__r") <= n)
          .groupBy("user_idx", "j").agg(F.sort_array(F.collect_list(F.struct("__r", "i"))).alias("ev"))
          .select("user_idx", F.col("j").alias("item_idx"), F.col("ev.i").alias("evidence_idx")))
    empty = F.array().cast("array<int>")
    return recs.join(ev, ["user_idx", "item_idx"], "left").withColumn(
        "evidence_idx", F.coalesce(F.col("evidence_idx"), empty))


def baseline_scores(cfg: Config, lake: Lake, run_id: str, users: DataFrame | None,
                    allowed: np.ndarray | None) -> tuple[DataFrame, Recommender]:
    """SCORED rows from the baseline saved in ``run_id`` for every user with a positive event
    (or only ``users``, a DataFrame with user_id), from the ``events`` table as it is now; and
    the model, to ``release`` once the rows are written."""
    rc = cfg.recommend
    events = lake.read("events")
    index = lake.read("user_index").select("user_id", "user_idx")
    if users is not None:
        index = index.join(users.select("user_id").distinct(), "user_id")
        events = events.join(index.select("user_idx"), "user_idx")
    model = load_recommender(run_id, cfg.train.mlflow_uri).observe(events)
    targets = events.filter("is_positive").select("user_idx").distinct()
    recs = model.recommend(targets, rc.k, rc.exclude_seen, allowed)
    scored = with_evidence(recs, recent_positives(events, cfg.model.history), lake, rc.explain_items)
    return scored.join(index, "user_idx").select(
        *[c for c in SCORED.names if c != "basis"], F.lit("history").alias("basis")), model
