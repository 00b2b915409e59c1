"""Train/test splits written as Delta tables, so every model is judged on the same rows.

Randomness comes from hashes of (seed, ids) rather than ``rand()``: Spark may recompute a
partition, and a split must not change when it does.
"""

from __future__ import annotations

from collections.abc import Callable

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from .. import schemas
from ..config import SplitConfig

# Protocols that model time: a test event is the future for its user, so anything the user
# wrote at or after their first test event (a tag) is unknown at training time.
TIME_ORDERED = frozenset({"temporal_loo", "global_time", "cold_users"})


def _unit_hash(seed: int, *cols: str) -> Column:
    """Deterministic pseudo-random number in [0, 1) per row."""
    return (F.abs(F.xxhash64(F.lit(seed), *[F.col(c) for c in cols])) % 1_000_000) / 1_000_000.0


unit_hash = _unit_hash  # the same hash for other packages (training-example sampling)


def _with_part(events: DataFrame, is_test: Column) -> DataFrame:
    out = events.withColumn("part", F.when(is_test, F.lit("test")).otherwise(F.lit("train")))
    return out.select(*schemas.SPLIT.names)


def temporal_leave_last_n(events: DataFrame, cfg: SplitConfig) -> DataFrame:
    """Each user's last n events are test; users with too few events stay in train."""
    n = cfg.temporal_leave_last_n
    by_user = Window.partitionBy("user_idx")
    latest = by_user.orderBy(F.desc("seq"), F.desc("item_idx"))
    ranked = events.withColumns({"_r": F.row_number().over(latest), "_n": F.count(F.lit(1)).over(by_user)})
    enough = F.col("_n") >= F.greatest(F.lit(n + 1), F.lit(cfg.min_user_interactions))
    return _with_part(ranked, enough & (F.col("_r") <= n))


def global_time_cut(events: DataFrame, cfg: SplitConfig) -> DataFrame:
    """Events after the global quantile of time are test: no training on the future."""
    assert cfg.global_time_cut_quantile is not None
    cut = events.approxQuantile("seq", [cfg.global_time_cut_quantile], 0.0005)[0]
    return _with_part(events, F.col("seq") > F.lit(cut))


def per_user_ratio(events: DataFrame, cfg: SplitConfig, ratio: float) -> DataFrame:
    """Per user, a seeded random ``ratio`` share of events (rounded, at least one) in train.

    This is how MS Recommenders' ``python_stratified_split`` cuts each user's shuffled rows;
    users with fewer than ``min_user_interactions`` events stay entirely in train.
    """
    by_user = Window.partitionBy("user_idx")
    ranked = events.withColumns({
        "_r": F.row_number().over(by_user.orderBy(_unit_hash(cfg.seed, "user_idx", "item_idx", "seq"))),
        "_n": F.count(F.lit(1)).over(by_user)})
    n_train = F.greatest(F.round(F.col("_n") * ratio), F.lit(1))
    return _with_part(ranked, (F.col("_n") >= cfg.min_user_interactions) & (F.col("_r") > n_train))


def random_stratified(events: DataFrame, cfg: SplitConfig) -> DataFrame:
    """Per user, a ``random_ratio`` share of events in train (80/20 by default)."""
    assert cfg.random_ratio is not None
    return per_user_ratio(events, cfg, cfg.random_ratio)


def stratified(events: DataFrame, cfg: SplitConfig) -> DataFrame:
    """The MS Recommenders protocol: per user, a ``stratified_ratio`` share (75%) in train.

    Kept beside ``random`` (80/20) so results compare directly with MS Recommenders' benchmarks.
    """
    assert cfg.stratified_ratio is not None
    return per_user_ratio(events, cfg, cfg.stratified_ratio)


def cold_items(events: DataFrame, cfg: SplitConfig) -> DataFrame:
    """A random share of items is held out entirely: all their events are test."""
    assert cfg.cold_items_fraction is not None
    return _with_part(events, _unit_hash(cfg.seed, "item_idx") < cfg.cold_items_fraction)


def cold_users(events: DataFrame, cfg: SplitConfig) -> DataFrame:
    """A random share of users is held out: all their events are test, except their first
    ``cold_user_max_train`` (0 by default), which model a user who has just arrived."""
    assert cfg.cold_users_fraction is not None
    held_out = _unit_hash(cfg.seed + 1, "user_idx") < cfg.cold_users_fraction
    first = F.row_number().over(Window.partitionBy("user_idx").orderBy("seq", "item_idx"))
    return _with_part(events.withColumn("_r", first), held_out & (F.col("_r") > cfg.cold_user_max_train))


def enabled_splits(cfg: SplitConfig, has_timestamps: bool) -> dict[str, Callable[[DataFrame, SplitConfig], DataFrame]]:
    """The protocols this config asks for; a time cut needs real timestamps."""
    out: dict[str, Callable[[DataFrame, SplitConfig], DataFrame]] = {}
    if cfg.temporal_leave_last_n:
        out["temporal_loo"] = temporal_leave_last_n
    if cfg.global_time_cut_quantile is not None and has_timestamps:
        out["global_time"] = global_time_cut
    if cfg.random_ratio is not None:
        out["random"] = random_stratified
    if cfg.stratified_ratio is not None:
        out["stratified"] = stratified
    if cfg.cold_items_fraction is not None:
        out["cold_items"] = cold_items
    if cfg.cold_users_fraction is not None:
        out["cold_users"] = cold_users
    return out
