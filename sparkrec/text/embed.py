"""The embed stage: keeps ``item_embeddings`` / ``user_text_embeddings`` in step with their text.

Embedding is the expensive part (milliseconds per text, against microseconds for anything
else), so a run embeds only what it must. Each source row's text is hashed in Spark and
compared with the table by key:

* ``new`` / ``changed`` (text hash or model fingerprint differ): embedded, then upserted;
* ``reindexed`` (same text and model, new dense index): the stored vector is kept and the row
  rewritten with the new index, without embedding;
* ``unchanged``: left alone, ``updated_at`` included;
* ``reused`` (new or changed here, but a ``reuse`` table holds a vector for the same key, text
  and model): that vector is copied, without embedding. A split's leak-free text
  (``item_embeddings_<split>``) differs from the all-data text only for items whose tags
  changed, so only those are encoded;
* ``removed`` (key no longer in the source): deleted, so the table mirrors the current
  catalogue and consumers never recommend an item that left it. The Lake has no DELETE, so a
  run with removals rewrites the table in one ``overwrite`` commit that carries the valid rows
  over untouched; runs without removals are a single ``upsert`` of the changed rows, and a run
  with nothing to do makes no commit at all.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from ..config import Config
from ..features.builders import item_features_table
from ..lake.base import Lake, LakeError
from ..logs import get_logger, log_fields, timed_stage
from ..session import scoring_partitions
from .assemble import item_text, read_user_text, text_hash
from .embedding_tables import (
    ITEM_EMBEDDINGS,
    ITEM_EMBEDDINGS_TABLE,
    USER_INDEX_TABLE,
    USER_TEXT_EMBEDDINGS,
    USER_TEXT_EMBEDDINGS_TABLE,
    split_embeddings_table,
)
from .encoders import TextEncoder, make_encoder

log = get_logger("text.embed")

_TO_EMBED = ("new", "changed")


@dataclass
class SyncStats:
    """What one table's sync did; ``seen`` counts source rows, ``removed`` table rows."""

    table: str
    seen: int = 0
    embedded: int = 0
    unchanged: int = 0
    reindexed: int = 0
    removed: int = 0
    reused: int = 0  # copied from the reuse table instead of embedded
    version: int | None = None  # the table's version after the run (None: no table)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _conform(df: DataFrame, schema: T.StructType) -> DataFrame:
    """Exactly the table's columns, order and types (delta-rs would cast silently otherwise)."""
    return df.select(*[F.col(f.name).cast(f.dataType).alias(f.name) for f in schema.fields])


def _donor(reuse: DataFrame, key: str, fingerprint: str) -> DataFrame:
    """The reuse table's rows made by this model: ``key``, ``text_hash``, ``vector``."""
    return reuse.where(F.col("model_fingerprint") == fingerprint).select(key, "text_hash", "vector")


def _plan(source: DataFrame, existing: DataFrame, key: str, idx: str, fingerprint: str,
          reuse: DataFrame | None = None, complete: bool = True) -> DataFrame:
    """Source rows and table keys side by side, each with its ``__status``; ``complete``:
    the source is the whole catalogue, so table keys it lacks are ``removed``."""
    old = existing.select(key, F.col(idx).alias("__old_idx"), F.col("text_hash").alias("__old_hash"),
                          F.col("model_fingerprint").alias("__old_fp"), F.lit(True).alias("__in_old"))
    joined = source.withColumn("__in_src", F.lit(True)).join(old, on=key, how="full_outer" if complete else "left")
    status = (F.when(F.col("__in_src").isNull(), "removed")
              .when(F.col("__in_old").isNull(), "new")
              .when(~F.col("__old_hash").eqNullSafe(F.col("text_hash"))
                    | ~F.col("__old_fp").eqNullSafe(F.lit(fingerprint)), "changed")
              .when(~F.col(idx).eqNullSafe(F.col("__old_idx")), "reindexed")
              .otherwise("unchanged"))
    if reuse is not None:  # only the hash here: vectors are joined in for the reused rows alone
        donor = _donor(reuse, key, fingerprint).select(key, F.col("text_hash").alias("__donor_hash"))
        joined = joined.join(donor, on=key, how="left")
        status = F.when(status.isin(*_TO_EMBED) & F.col("__donor_hash").eqNullSafe(F.col("text_hash")),
                        "reused").otherwise(status)
    return joined.withColumn("__status", status)


def _count(plan: DataFrame, key: str, table: str) -> dict[str, int]:
    """Rows per status in one small job; also refuses a source with duplicate keys."""
    rows = plan.groupBy("__status").agg(F.count(F.lit(1)).alias("n"),
                                        F.countDistinct(key).alias("keys")).collect()
    counts = {r["__status"]: int(r["n"]) for r in rows}
    dup = [r["__status"] for r in rows if r["__status"] != "removed" and r["n"] != r["keys"]]
    if dup:
        raise LakeError(f"embedding {table!r}: the source has several rows for one {key}; "
                        f"one text per {key} is expected")
    return counts


def sync_embeddings(lake: Lake, table: str, source: DataFrame, key: str, idx: str,
                    encoder: TextEncoder, schema: T.StructType, partitions: int,
                    batch_size: int, reuse: DataFrame | None = None, complete: bool = True) -> SyncStats:
    """Bring ``table`` in step with ``source`` (columns ``idx``, ``key``, ``text``).

    ``reuse``: a table of the same schema whose vectors may be copied for rows with the same
    key, text hash and model fingerprint (the all-data table, for a split's table).
    ``complete=False``: ``source`` is a part of the catalogue (a streamed batch of items), so
    nothing is removed.

    The rows to embed are spread evenly over ``partitions`` (after a join, adaptive execution
    may leave them in one partition, i.e. on one core) and sorted by length inside each, so a
    batch pads its texts to similar lengths.
    """
    spark: SparkSession = lake.spark
    fingerprint = encoder.fingerprint()
    src = (source.where(F.col(key).isNotNull())
           .select(F.col(idx).cast("int").alias(idx), F.col(key).cast("string").alias(key),
                   F.coalesce(F.col("text"), F.lit("")).alias("text"))
           .withColumn("text_hash", text_hash(F.col("text"))))
    exists = lake.exists(table)
    existing = lake.read(table) if exists else spark.createDataFrame([], schema)
    plan = _plan(src, existing, key, idx, fingerprint, reuse, complete).persist()
    try:
        counts = _count(plan, key, table)
        stats = SyncStats(table, seen=sum(n for s, n in counts.items() if s != "removed"),
                          embedded=sum(counts.get(s, 0) for s in _TO_EMBED),
                          unchanged=counts.get("unchanged", 0), reindexed=counts.get("reindexed", 0),
                          removed=counts.get("removed", 0), reused=counts.get("reused", 0))
        log_fields(log, "embedding plan", table=table, fingerprint=fingerprint, **counts)
        if not (stats.embedded or stats.reindexed or stats.removed or stats.reused):
            stats.version = lake.version(table) if exists else None
            return stats

        now = F.current_timestamp()
        to_embed = plan.where(F.col("__status").isin(*_TO_EMBED)).select(idx, key, "text", "text_hash")
        parts = max(1, min(partitions, math.ceil(stats.embedded / batch_size)))
        spread = to_embed.repartition(parts).sortWithinPartitions(F.length("text"))
        embedded = encoder.embed_column(spread, "text", "vector")
        remapped = (existing.drop(idx)
                    .join(plan.where(F.col("__status") == "reindexed").select(key, idx), on=key)
                    .withColumn("updated_at", now))
        changes = _conform(_stamp(embedded, encoder, fingerprint), schema).unionByName(_conform(remapped, schema))
        if stats.reused and reuse is not None:
            copied = plan.where(F.col("__status") == "reused").select(idx, key, "text_hash").join(
                _donor(reuse, key, fingerprint), on=[key, "text_hash"])
            changes = changes.unionByName(_conform(_stamp(copied, encoder, fingerprint), schema))
        if stats.removed:
            kept = existing.join(plan.where(F.col("__status") == "unchanged").select(key), on=key,
                                 how="left_semi")
            result = lake.overwrite(table, _conform(kept, schema).unionByName(changes))
        else:
            result = lake.upsert(table, changes, keys=[key])
        stats.version = result.version
        return stats
    finally:
        plan.unpersist()


def _stamp(vectors: DataFrame, encoder: TextEncoder, fingerprint: str) -> DataFrame:
    """A new or copied vector's provenance columns; ``updated_at`` is now."""
    return vectors.withColumns({"model": F.lit(encoder.model_name), "model_fingerprint": F.lit(fingerprint),
                                "dim": F.size("vector"), "updated_at": F.current_timestamp()})


def item_source(lake: Lake, template: str, split: str | None = None) -> DataFrame:
    """``(item_idx, item_id, text)`` from ``item_features`` or, for an evaluation split, from
    its leak-free ``item_features_<split>``; the template is checked before any job."""
    features = item_features_table(split)
    if not lake.exists(features):
        raise LakeError(f"embed needs table {features!r} at {lake.location(features)}: "
                        "run the features stage first")
    items = lake.read(features)
    return items.select("item_idx", "item_id", item_text(items, template).alias("text"))


def user_source(lake: Lake, path: str) -> DataFrame:
    """``(user_idx, user_id, text)``; ``user_idx`` is null for users the index does not know."""
    users = read_user_text(lake.spark, path)
    if lake.exists(USER_INDEX_TABLE):
        index = lake.read(USER_INDEX_TABLE).select("user_id", "user_idx")
        return users.join(index, on="user_id", how="left").select("user_idx", "user_id", "text")
    return users.select(F.lit(None).cast("int").alias("user_idx"), "user_id", "text")


def embed_splits(cfg: Config) -> list[str]:
    """``embed.splits`` plus the splits evaluation and training use, in order, without "none"."""
    names = [*cfg.embed.splits, cfg.evaluation.split, cfg.train.split]
    return [s for s in dict.fromkeys(names) if s and s != "none"]


def run_embed(cfg: Config, spark: SparkSession, lake: Lake) -> dict[str, Any]:
    """The embed stage: item text always, user interests when ``embed.user_text_path`` is set,
    and each split of :func:`embed_splits` whose ``item_features_<split>`` the features stage wrote.

    The all-data ``item_embeddings`` is synced first: a split's text equals it for every item
    whose tags the split did not filter, and those vectors are copied rather than embedded.
    Returns totals over all tables (``rows_seen``, ``embedded``, ``reused``, ``unchanged``,
    ``reindexed``, ``removed``, ``seconds``) and per-table figures under ``tables``.
    """
    ecfg = cfg.embed
    with timed_stage(log, "embed", encoder=ecfg.encoder, model=ecfg.model) as info:
        encoder = make_encoder(ecfg, spark)
        parts = scoring_partitions(spark, ecfg.partitions)
        jobs = [(ITEM_EMBEDDINGS_TABLE, item_source(lake, ecfg.item_template), "item_id", "item_idx",
                 ITEM_EMBEDDINGS)]
        if ecfg.user_text_path:
            jobs.append((USER_TEXT_EMBEDDINGS_TABLE, user_source(lake, ecfg.user_text_path), "user_id",
                         "user_idx", USER_TEXT_EMBEDDINGS))
        results = [sync_embeddings(lake, table, source, key, idx, encoder, schema, parts, ecfg.batch_size)
                   for table, source, key, idx, schema in jobs]
        for split in embed_splits(cfg):
            if not lake.exists(item_features_table(split)):
                log_fields(log, "split skipped: the features stage wrote no item features for it", split=split)
                continue
            results.append(sync_embeddings(
                lake, split_embeddings_table(split), item_source(lake, ecfg.item_template, split), "item_id",
                "item_idx", encoder, ITEM_EMBEDDINGS, parts, ecfg.batch_size,
                reuse=lake.read(ITEM_EMBEDDINGS_TABLE)))
        for name in ("seen", "embedded", "reused", "unchanged", "reindexed", "removed"):
            info["rows_seen" if name == "seen" else name] = sum(getattr(r, name) for r in results)
        info["tables"] = {r.table: r.as_dict() for r in results}
    return info
