"""Interactions with dense indices, an implicit weight and an ordering key."""

from __future__ import annotations

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from ..config import GenericSource, WeightConfig


def implicit_weight(rating: Column, cfg: WeightConfig, src: GenericSource) -> Column:
    """Weight of an interaction as a positive example.

    A missing rating, or the source's "no rating" value (Book-Crossing's 0), is an implicit
    interaction and gets ``implicit_value``; otherwise the mode maps the rating.
    """
    is_implicit = rating.isNull()
    if src.implicit_rating is not None:
        is_implicit = is_implicit | (rating == F.lit(src.implicit_rating))
    scale = cfg.rating_scale or src.rating_max or 1.0
    explicit = {
        "rating": rating / F.lit(scale),
        "binary": F.lit(1.0),
        "log1p": 1.0 + F.log1p(rating),
    }[cfg.mode]
    return F.when(is_implicit, F.lit(cfg.implicit_value)).otherwise(explicit).cast("double")


def is_positive(rating: Column, cfg: WeightConfig, src: GenericSource) -> Column:
    if cfg.positive_min_rating is None:
        return F.lit(True)
    implicit = rating.isNull()
    if src.implicit_rating is not None:
        implicit = implicit | (rating == F.lit(src.implicit_rating))
    return implicit | (rating >= F.lit(cfg.positive_min_rating))


def has_timestamps(events: DataFrame) -> bool:
    """Whether seq is time (epoch seconds) or only a position in the source file."""
    return events.filter(F.col("event_time").isNotNull()).limit(1).count() > 0


def build_events(interactions: DataFrame, user_index: DataFrame, item_index: DataFrame,
                 cfg: WeightConfig, src: GenericSource) -> DataFrame:
    """seq orders a user's events: epoch seconds where there are timestamps, else the
    event's line in its source file (the order the source recorded them in) or, where that
    order is a sort key rather than time (``file_order="arbitrary"``), a fixed pseudo-random
    order: a sequence model or a leave-last-out split must not learn "next ISBN" as "next"."""
    fallback = F.col("source_line")
    if src.file_order == "arbitrary":  # positions 1..n per user, so history gaps stay "steps"
        shuffled = Window.partitionBy("user_id").orderBy(F.xxhash64(F.lit("sparkrec-order"), "user_id", "item_id"),
                                                         "item_id")
        fallback = F.row_number().over(shuffled)
    seq = F.coalesce(F.unix_timestamp("event_time"), fallback, F.lit(0)).cast("long")
    return (interactions.join(user_index, "user_id").join(item_index, "item_id")
            .select("user_idx", "item_idx", "rating",
                    implicit_weight(F.col("rating"), cfg, src).alias("weight"),
                    "event_time", seq.alias("seq"),
                    is_positive(F.col("rating"), cfg, src).alias("is_positive")))


def in_arrival_order(interactions: DataFrame) -> DataFrame:
    """``source_line`` renumbered 1..n over the rows' files and lines (a stream's files are
    named in landing order): the position :func:`build_events` orders a source without time by."""
    return interactions.withColumn("source_line", F.row_number().over(
        Window.orderBy("source_file", "source_line")).cast("long"))


def continue_sequences(events: DataFrame, existing: DataFrame) -> DataFrame:
    """``seq`` for events of a source without time that arrive after ``existing`` (a stream's
    batch, numbered by arrival): a (user, item) pair the user already has keeps its seq (the
    event is that pair's, updated, as a re-ingest of the source would), a new pair comes after
    the user's latest event, in arrival order. Without it a streamed event's position would
    be its line in the landing file, before most of the user's history."""
    mine = existing.join(events.select("user_idx").distinct(), "user_idx")
    pairs = mine.groupBy("user_idx", "item_idx").agg(F.min("seq").alias("_old_seq"))
    latest = mine.groupBy("user_idx").agg(F.max("seq").alias("_latest"))
    out = events.join(pairs, ["user_idx", "item_idx"], "left").join(latest, "user_idx", "left")
    new = F.col("_old_seq").isNull()
    rank = F.row_number().over(Window.partitionBy("user_idx", new).orderBy("seq", "item_idx"))
    seq = F.when(new, F.coalesce(F.col("_latest"), F.lit(0)) + rank).otherwise(F.col("_old_seq")).cast("long")
    return out.withColumn("seq", seq).select(*events.columns)
