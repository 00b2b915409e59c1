"""The features stage: canonical tables -> indices, events, feature tables and splits."""

from __future__ import annotations

import logging
import time
from typing import Any

from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession

from ..config import Config
from ..ingest.presets import resolve_source
from ..lake import Lake
from ..logs import get_logger, log_fields
from .builders import item_features, item_features_table, split_item_features, user_features, user_histories
from .consistency import check_all_from, mixed_runs, output_tables, runs_of
from .events import build_events, has_timestamps
from .indexing import extend_index
from .splits import TIME_ORDERED, enabled_splits

log = get_logger("features")


def _optional(lake: Lake, table: str) -> DataFrame | None:
    return lake.read(table) if lake.exists(table) else None


def run_features(cfg: Config, spark: SparkSession, lake: Lake) -> dict[str, Any]:
    src = resolve_source(cfg.data)
    fc = cfg.features
    interactions = lake.read("interactions")
    items, users, tags = lake.read("items"), _optional(lake, "users"), _optional(lake, "tags")
    summary: dict[str, Any] = {}
    mixed = mixed_runs(runs_of(lake, output_tables(fc)))
    if mixed:  # a killed (or concurrent) run: every table is recomputed below, which repairs it
        log_fields(log, "feature tables come from different runs: recomputing all of them", level=logging.WARNING,
                   runs={run: sorted(tables) for run, tables in mixed.items()})
        summary["repaired_mixed_runs"] = sorted(mixed)
    written: list[str] = []

    def write(table: str, df: DataFrame) -> None:
        started = time.perf_counter()
        result = lake.overwrite(table, df)
        written.append(table)
        summary[table] = result.rows_written
        log_fields(log, "table written", table=table, rows=result.rows_written, version=result.version,
                   seconds=round(time.perf_counter() - started, 3))

    user_ids = interactions.select("user_id")
    if users is not None:
        user_ids = user_ids.unionByName(users.select("user_id"))
    for table, ids, id_col, idx_col in (
        ("user_index", user_ids, "user_id", "user_idx"),
        ("item_index", items.select("item_id").unionByName(interactions.select("item_id")), "item_id", "item_idx"),
    ):
        result = extend_index(lake, table, ids, id_col, idx_col)
        summary[table] = {"new_ids": result.inserted}
        log_fields(log, "index extended", table=table, new_ids=result.inserted)
    user_index, item_index = lake.read("user_index"), lake.read("item_index")

    events = build_events(interactions, user_index, item_index, fc.weights, src)
    events = events.persist(StorageLevel.MEMORY_AND_DISK_DESER)
    try:
        write("events", events)
        write("item_features", item_features(items, item_index, events, tags))
        write("user_features", user_features(user_index, events, users))
        write("user_histories", user_histories(events, fc.history_length))
        has_time = has_timestamps(events)
        for name, split in enabled_splits(fc.splits, has_time).items():
            write(f"split_{name}", split(events, fc.splits))
            # Leak-free item text input and stats for models evaluated on this split (read back
            # from Delta: the split is not recomputed, and global_time's quantile is not redrawn).
            write(item_features_table(name), split_item_features(
                items, item_index, user_index, lake.read(f"split_{name}"), tags, has_time and name in TIME_ORDERED))
        if not has_time and fc.splits.global_time_cut_quantile is not None:
            log_fields(log, "split skipped: the source has no timestamps", split="global_time")
    finally:
        events.unpersist()
    check_all_from(lake, written, lake.context.run_id)
    return summary
