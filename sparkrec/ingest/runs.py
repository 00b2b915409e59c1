"""The ``ingest_runs`` table: one row per (run, table) for every ingest commit that landed.

Why rebuilt from the commits: each ingest MERGE carries its table's counts in its commit
metadata, and ``ingest_runs`` is made from those, for every ingest commit it does not have
yet. So a run killed after some of its commits (before it could write its summary) is
recorded by the next run instead of vanishing, and two runs recording at once cannot
duplicate a row: the table is MERGEd by (run_id, target_table).
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from pyspark.sql import SparkSession

from .. import schemas
from ..lake import Lake

TABLE = "ingest_runs"
KEYS = ["run_id", "target_table"]
SCHEMA = schemas.INGEST_RUNS
_PREFIX = "sparkrec.ingest."


def commit_metadata(dataset: str, source: str, read: int, accepted: int, quarantined: int,
                    reasons: dict[str, int], cleaned: dict[str, int], seconds: float) -> dict[str, str]:
    """What a table's ingest commit carries so that its ``ingest_runs`` row can be rebuilt."""
    fields: dict[str, Any] = {"dataset": dataset, "source": source, "read": read, "accepted": accepted,
                              "quarantined": quarantined, "reasons": json.dumps(reasons),
                              "cleaned": json.dumps(cleaned), "seconds": seconds}
    return {f"{_PREFIX}{k}": str(v) for k, v in fields.items()}


def record_runs(spark: SparkSession, lake: Lake, tables: list[str]) -> int:
    """Adds the ``ingest_runs`` rows missing for any ingest commit of ``tables``; returns how many."""
    recorded: set[tuple[str, str]] = set()
    if lake.exists(TABLE):  # one row per run and table: small
        recorded = {(r["run_id"], r["target_table"]) for r in lake.read(TABLE).select(*KEYS).distinct().collect()}
    rows = [_row(table, h) for table in tables if lake.exists(table) for h in lake.history(table)
            if f"{_PREFIX}read" in h and (h["sparkrec.run_id"], table) not in recorded]
    if rows:
        lake.upsert(TABLE, spark.createDataFrame(rows, SCHEMA), KEYS)
    return len(rows)


def _row(table: str, h: dict[str, Any]) -> tuple[Any, ...]:
    def n(key: str) -> int:
        return int(h.get(f"sparkrec.{key}") or 0)

    inserted = int(h.get("sparkrec.inserted") or h.get("sparkrec.rows") or 0)  # a first write creates the table
    stamp = h["timestamp"]  # delta-rs: epoch milliseconds; Spark Delta: a datetime
    run_at = stamp if isinstance(stamp, dt.datetime) else dt.datetime.fromtimestamp(int(stamp) / 1000, dt.UTC)
    return (h["sparkrec.run_id"], run_at, h[f"{_PREFIX}dataset"], table, h[f"{_PREFIX}source"],
            int(h[f"{_PREFIX}read"]), int(h[f"{_PREFIX}accepted"]), int(h[f"{_PREFIX}quarantined"]),
            h[f"{_PREFIX}reasons"], h[f"{_PREFIX}cleaned"], inserted, n("updated"), n("unchanged"),
            float(h[f"{_PREFIX}seconds"]))
