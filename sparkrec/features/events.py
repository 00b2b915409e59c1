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
