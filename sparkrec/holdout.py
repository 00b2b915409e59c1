"""Validation holdouts carved out of training rows, one implementation for every model.

The hybrid's early stopping and blend search and every baseline's grid search judge on the
same kind of held-out rows, built the same deterministic way (hashes of seed and ids, never
``rand()``: Spark may recompute a partition, and a holdout that changes between the fit part
and the truth leaks). On a temporal split the question is "what comes next?" (each user's
last positive); on a random split, or a source without time, "what else is in this set?" (a
random share of each user's positives).
"""

from __future__ import annotations

from typing import Literal

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from .features.splits import unit_hash

Holdout = Literal["last", "random"]
TIME_ORDERED_SPLITS = frozenset({"temporal_loo", "global_time"})


def holdout_for(split: str, setting: str, has_time: bool) -> Holdout:
    """``train.holdout`` resolved: "auto" follows the split's nature (time-ordered splits and
    production training on timestamped data hold out the latest event; random splits and
    sources without time hold out a random share)."""
    if setting in ("last", "random"):
        return setting  # type: ignore[return-value]
    if split in TIME_ORDERED_SPLITS or (split == "none" and has_time):
        return "last"
    return "random"


def split_validation(train_pos: DataFrame, max_users: int | None, seed: int, how: Holdout = "last",
                     fraction: float = 0.2) -> tuple[DataFrame, DataFrame]:
    """(fit part, validation targets) of the positive train rows.

    A deterministic hash sample of at most ``max_users`` users (None: all) with two or more positives each
    gives up their latest positive ("last") or a ``fraction`` of them, at least one and never
    all ("random"); everyone else's rows stay whole in the fit part.
    """
    w = Window.partitionBy("user_idx")
    order = [F.desc("seq"), F.desc("item_idx")] if how == "last" else [unit_hash(seed, "user_idx", "item_idx", "seq")]
    ranked = train_pos.withColumns({"_r": F.row_number().over(w.orderBy(*order)), "_n": F.count(F.lit(1)).over(w)})
    eligible = ranked.filter((F.col("_n") >= 2) & (F.col("_r") == 1)).select("user_idx")
    if max_users is not None:
        eligible = eligible.withColumn("_h", F.xxhash64(F.lit(seed), "user_idx")).orderBy("_h").limit(max_users)
    chosen = eligible.select("user_idx").withColumn("_val", F.lit(True))
    marked = ranked.join(chosen, "user_idx", "left")
    share = F.greatest(F.lit(1), F.round(F.col("_n") * fraction))
    n_val = F.lit(1) if how == "last" else F.least(F.col("_n") - 1, share)
    is_val = F.coalesce(F.col("_val"), F.lit(False)) & (F.col("_r") <= n_val)
    cols = train_pos.columns
    return marked.filter(~is_val).select(*cols), marked.filter(is_val).select(*cols)
