"""The recommend stage: current histories -> user tower -> exact top-K -> explained rows in Delta.

A full run replaces ``recommendations`` in one atomic overwrite, so readers never see a mix of
two runs; a partial refresh (given users) MERGEs their rows by (user_id, rank) in one commit,
deleting ranks a refreshed user no longer has (a shorter list leaves nothing stale behind).
User vectors come from the users' current positive events, not from training data, so new
events change the lists without retraining.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import numpy as np
from pyspark import StorageLevel
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from .. import schemas
from ..config import Config
from ..lake import Clustering, Lake
from ..logs import get_logger, log_fields
from ..model.build import all_item_vectors
from ..model.data import tower_inputs
from ..model.registry import LoadedModel
from ..model.store import resolve_run
from ..ranking import seen_items
from ..session import scoring_partitions
from .baseline import baseline_scores
from .explain import EVIDENCE, explain, item_facts
from .llm import TEMPLATE, catalogue_vocabulary, explain_rows, rewrite_explanations
from .score import Payload, blend, pseudo_history, pseudo_states, score_users, user_vectors
from .served import load_served
from .topk import evidence, top_k

log = get_logger("recommend")

TABLE = "recommendations"
KEYS = ["user_id", "rank"]


def clustering(cfg: Config) -> Clustering:
    """The recommendations table's layout: a user's rows together, files in user_id order."""
    return Clustering(("user_id",), cfg.recommend.file_users * cfg.recommend.k)
RECOMMENDATIONS = schemas.RECOMMENDATIONS


def read_recommendations(lake: Lake, version: int | None = None) -> DataFrame:
    """``recommendations`` in the current shape: a table written before ``explanation_source``
    existed reads it as "template" (every row of such a table came from the template)."""
    df = lake.read(TABLE, version)
    if "explanation_source" not in df.columns:
        df = df.withColumn("explanation_source", F.lit(TEMPLATE))
    return df.select(*[c for c in RECOMMENDATIONS.names if c in df.columns])


def resolve_model(cfg: Config, lake: Lake) -> LoadedModel:
    """The hybrid ``recommend.model`` names; text-only scoring needs its user tower."""
    served = resolve_run(cfg, lake)
    if served.model != "hybrid":
        raise ValueError(f"recommend.model={cfg.recommend.model!r} is a {served.model} model (run {served.run_id}); "
                         "scoring interest text needs the hybrid: set recommend.model=hybrid")
    return load_served(cfg, lake, served.run_id)


def item_filter(cfg: Config) -> Column | None:
    """True for items ``recommend.filters`` exclude (ids, genres, year); None when none is set."""
    f = cfg.recommend.filters
    if not (f.exclude_item_ids or f.genres or f.min_year is not None):
        return None
    bad = F.lit(False)
    if f.exclude_item_ids:
        bad = bad | F.col("item_id").isin(f.exclude_item_ids)
    if f.genres:
        wanted = F.array(*[F.lit(g) for g in f.genres])
        bad = bad | ~F.coalesce(F.arrays_overlap(F.col("genres"), wanted), F.lit(False))
    if f.min_year is not None:
        bad = bad | F.coalesce(F.col("year") < f.min_year, F.lit(True))
    return bad


def allowed_items(cfg: Config, lake: Lake) -> np.ndarray | None:
    """item_idx a baseline may offer under ``recommend.filters``; None: every item. Cold items
    are the ones with no interaction, which interaction baselines cannot rank anyway."""
    bad = item_filter(cfg)
    if cfg.recommend.filters.exclude_cold_items:
        cold = F.coalesce(F.col("n_interactions"), F.lit(0)) == 0
        bad = cold if bad is None else bad | cold
    if bad is None:
        return None
    keep = lake.read("item_features").filter(~bad).select("item_idx")
    return np.array([r[0] for r in keep.collect()], dtype=np.int64)


def eligibility(cfg: Config, lake: Lake, loaded: LoadedModel) -> np.ndarray:
    """(n_items + 1,) bool over model rows. Computed in Spark; only excluded indices come back."""
    f = cfg.recommend.filters
    items = lake.read("item_features")
    bad = item_filter(cfg)
    eligible = np.ones(loaded.spec.n_items + 1, dtype=bool)
    eligible[0] = False
    if bad is not None:
        excluded = np.array([r[0] for r in items.filter(bad).select("item_idx").collect()], dtype=np.int64)
        eligible[excluded[excluded < loaded.spec.n_items] + 1] = False
    if f.exclude_cold_items:
        eligible &= loaded.catalog.has_id
    return eligible


def make_payload(cfg: Config, loaded: LoadedModel, eligible: np.ndarray) -> Payload:
    rc = cfg.recommend
    spec = {**loaded.spec.to_dict(), "history": int(loaded.meta.get("history", loaded.spec.history))}
    tower = {k: v.detach().cpu().numpy() for k, v in loaded.model.users.state_dict().items()}
    items = all_item_vectors(loaded.model).cpu().numpy().astype(np.float32)
    return Payload(items=items, eligible=eligible, tower=tower, spec=spec, k=rc.k, block_rows=rc.item_block_rows,
                   user_batch=rc.user_batch, explain_items=rc.explain_items, exclude_seen=rc.exclude_seen,
                   text_neighbours=rc.text_neighbours, text_weight=rc.text_weight, head=loaded.head,
                   tower_weight=loaded.tower_weight)


def current_states(lake: Lake, loaded: LoadedModel, users: DataFrame | None) -> DataFrame:
    """(user_idx, user_id, hist, gaps, seen, basis, items, weights) for every user with a positive event."""
    events = lake.read("events")
    index = lake.read("user_index").select("user_id", "user_idx")
    if users is not None:
        index = index.join(users.select("user_id").distinct(), "user_id")
        events = events.join(index.select("user_idx"), "user_idx")
    n, gap_scale = int(loaded.meta.get("history", loaded.spec.history)), float(loaded.meta.get("gap_scale", 1.0))
    states = tower_inputs(events.filter("is_positive"), n, gap_scale)
    seen = seen_items(events, offset=1)
    return (states.join(index, "user_idx").join(seen, "user_idx", "left")
            .select("user_idx", "user_id", "hist", "gaps", "seen", F.lit("history").alias("basis"), "items",
                    "weights"))


def text_only_scores(spark: SparkSession, lake: Lake, payload: Payload, loaded: LoadedModel,
                     states: DataFrame, users: DataFrame | None, partitions: int,
                     in_driver: bool = False) -> DataFrame | None:
    """Users known only by interest text: a pseudo-history of text-nearest items through the
    user tower, blended with the text cosine (see ``score.blend``); scored apart from the
    others so only their tasks carry the item text matrix."""
    if loaded.catalog.text is None or not lake.exists("user_text_embeddings"):
        return None
    texts = lake.read("user_text_embeddings").filter(F.col("vector").isNotNull())
    if users is not None:
        texts = texts.join(users.select("user_id").distinct(), "user_id")
    texts = texts.join(states.select("user_id"), "user_id", "left_anti")
    if texts.limit(1).count() == 0:
        return None
    with_text = dataclasses.replace(payload, text=loaded.catalog.text.astype(np.float16))
    pseudo = pseudo_states(spark, texts, with_text, in_driver)
    pseudo = pseudo.select("user_idx", "user_id", "hist", "gaps", F.array().cast("array<int>").alias("seen"),
                           F.lit("interests").alias("basis"), "query")
    return score_users(spark, pseudo, with_text, partitions, in_driver)


def finish(explained: DataFrame, version: str) -> DataFrame:
    return explained.select(
        "user_idx", "user_id", "rank", "item_idx", "item_id", "score", "explanation", "explanation_source",
        F.col("evidence").cast(EVIDENCE).alias("evidence"), F.lit(version).alias("model_version"),
        F.current_timestamp().alias("generated_at"))


DRIVER_SCORED_USERS = 5_000


def run_recommend(cfg: Config, spark: SparkSession, lake: Lake, users: DataFrame | None = None) -> dict[str, Any]:
    """Scores every user (or only ``users``: a DataFrame with a user_id column) and writes
    ``recommendations``; returns run id, rows written and the table version."""
    rc = cfg.recommend
    started = time.perf_counter()
    served = resolve_run(cfg, lake)
    text_scored = baseline = None
    if served.model == "hybrid":
        loaded = load_served(cfg, lake, served.run_id)
        payload = make_payload(cfg, loaded, eligibility(cfg, lake, loaded))
        states = current_states(lake, loaded, users)
        parts = scoring_partitions(spark, rc.partitions)
        # a partial refresh of a few users (a streaming batch's) is scored in this process
        in_driver = users is not None and users.count() <= DRIVER_SCORED_USERS
        scored = score_users(spark, states, payload, parts, in_driver)
        text_scored = text_only_scores(spark, lake, payload, loaded, states, users, parts, in_driver)
        if text_scored is not None:
            scored = scored.unionByName(text_scored)
    else:  # a saved baseline: users without positive events (text-only) get no list from it
        scored, baseline = baseline_scores(cfg, lake, served.run_id, users, allowed_items(cfg, lake))
    features = lake.read("item_features")
    explained = explain(scored, item_facts(features), rc.explain_attributes)
    # A partial refresh MERGEs into the table as it is: one written before explanation_source
    # existed keeps its shape until the next full run (which replaces the schema), and its
    # rows, all read as "template", stay true to that only if this refresh adds no LLM text.
    legacy = users is not None and lake.exists(TABLE) and "explanation_source" not in lake.read(TABLE).columns
    llm_cfg = cfg.explain.llm
    cached, llm_stats = None, {}
    if llm_cfg.enabled and legacy:
        log.warning("explain.llm skipped: %r has no explanation_source column yet; a full `sparkrec recommend` "
                    "adds it", TABLE)
    if llm_cfg.enabled and llm_cfg.max_rows and not legacy:
        cached = explained.persist(StorageLevel.MEMORY_AND_DISK)  # scored once: rows are picked from it
        explained, llm_stats = rewrite_explanations(cached, llm_cfg, catalogue_vocabulary(features))
    else:
        explained = explained.withColumn("explanation_source", F.lit(TEMPLATE))
    out = finish(explained, served.run_id)
    if legacy:
        out = out.drop("explanation_source")
    try:
        commit = (lake.overwrite(TABLE, out, clustering(cfg)) if users is None
                  else lake.upsert(TABLE, out, KEYS, replace_within=["user_id"]))
    finally:
        if cached is not None:
            cached.unpersist()
    if baseline is not None:
        baseline.release()
    summary = {"model": served.model, "model_run_id": served.run_id, "rows": commit.rows_written,
               "inserted": commit.inserted,
               "updated": commit.updated, "deleted": commit.deleted, "version": commit.version,
               "partial": users is not None,
               "text_only_users": text_scored is not None, **llm_stats,
               "seconds": round(time.perf_counter() - started, 1)}
    log_fields(log, "recommendations written", **summary)
    return summary


def recommend_for_text(cfg: Config, spark: SparkSession, lake: Lake, text: str, k: int | None = None
                       ) -> list[dict[str, Any]]:
    """Top-K for someone known only by a sentence, explained like every other list.

    The text is encoded by the embed stage's encoder, its nearest items by text cosine become
    a pseudo-history that the user tower maps into model space, and the final score adds the
    text cosine (``recommend.text_weight``; see ``pseudo_history`` and ``blend``).
    """
    from ..text import make_encoder

    loaded = resolve_model(cfg, lake)
    if loaded.catalog.text is None:
        raise ValueError("the model was trained without item text: run `sparkrec embed` before `sparkrec train`")
    payload = make_payload(cfg.model_copy(update={"recommend": cfg.recommend.model_copy(
        update={"k": k or cfg.recommend.k})}), loaded, eligibility(cfg, lake, loaded))
    query = make_encoder(cfg.embed, spark).encode([text]).astype(np.float32)
    n_hist = payload.spec["history"]
    hist = pseudo_history(query, loaded.catalog.text, cfg.recommend.text_neighbours, n_hist)
    u = user_vectors(payload, np.zeros(1, np.int64), hist, np.zeros((1, n_hist), np.float32))
    u, matrix = blend(dataclasses.replace(payload, text=loaded.catalog.text), u, query)
    recs, scores = top_k(u, matrix, payload.k, payload.eligible, None, payload.block_rows)
    ev = evidence(payload.items, hist, recs, payload.explain_items)
    keep = recs[0] >= 0
    rows = [(None, "text", r + 1, int(i) - 1, float(s), [int(x) - 1 for x in e if x >= 0], "interests")
            for r, (i, s, e) in enumerate(zip(recs[0][keep], scores[0][keep], ev[0][keep], strict=True))]
    from .score import SCORED

    scored = spark.createDataFrame(rows, SCORED)
    explained = explain(scored, item_facts(lake.read("item_features")), cfg.recommend.explain_attributes)
    out = finish(explained.withColumn("explanation_source", F.lit(TEMPLATE)), loaded.version).orderBy("rank")
    listed = [r.asDict(recursive=True) for r in out.drop("user_idx", "user_id").collect()]
    llm_cfg = cfg.explain.llm
    if llm_cfg.enabled:  # on the driver: a handful of rows, the first max_rank of them
        picked = [r for r in listed if r["rank"] <= llm_cfg.max_rank][:llm_cfg.max_rows]
        done = explain_rows([{**r, "basis": "interests"} for r in picked], llm_cfg,
                            catalogue_vocabulary(lake.read("item_features")))
        for r, (text, source) in zip(picked, done, strict=True):
            r["explanation"], r["explanation_source"] = text, source
    return listed
