"""Prequential (online) evaluation: was each arriving event's item in its user's list when it arrived?

Offline splits judge a model on events it never saw; a stream can do better and judge the
lists users were actually shown. Before a micro-batch refreshes anyone, each of its accepted
events is looked up in two lists of its user: the live one (``recommendations`` as it stands,
i.e. as earlier batches refreshed it) and the frozen one (``recommendations`` as the last
batch ``recommend`` run wrote it: what the user would see without the stream). The ranks go
to ``stream_prequential``, in the batch's exactly-once transaction, so a replayed batch
records nothing twice. ``sparkrec evaluate --prequential`` turns them into HitRate@K and
NDCG@K (one relevant item per event: 1 / log2(1 + rank)) overall and per arrival window,
written to ``evaluation_metrics`` (split ``prequential``, models ``stream`` and ``frozen``)
and an HTML report.
"""

from __future__ import annotations

from typing import Any

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from .. import schemas
from ..lake import Lake
from ..lake.base import DATA_OPERATIONS
from .once import BatchTxn

TABLE = "stream_prequential"
LISTS = "recommendations"
SCHEMA = schemas.STREAM_PREQUENTIAL
RANKS = {"stream": "rank_live", "frozen": "rank_frozen"}


def _batch_written(history: list[dict[str, Any]]) -> int | None:
    """The newest of these commits that a batch run made with data (not a stream's, which carry
    a transaction, nor a vacuum or a compaction)."""
    versions = [int(h["version"]) for h in history
                if not h.get("sparkrec.txn_app_id") and h.get("sparkrec.operation") in DATA_OPERATIONS]
    return max(versions) if versions else None


def frozen_version(lake: Lake) -> int | None:
    """The newest ``recommendations`` version not written by a stream: the last batch
    recommend run's lists. None before any."""
    return _batch_written(lake.history(LISTS))


class FrozenLists:
    """:func:`frozen_version` for a long-running query: after the first look only the commits
    made since are read. Why: the stream adds a version of ``recommendations`` every batch,
    and reading the whole history each batch grows without bound."""

    def __init__(self) -> None:
        self._seen: int | None = None
        self._frozen: int | None = None

    def __call__(self, lake: Lake) -> int | None:
        latest = lake.version(LISTS)
        if self._seen is None or latest < self._seen:  # first look, or the table was replaced
            self._frozen = frozen_version(lake)
        elif latest > self._seen:
            newer = _batch_written(lake.history(LISTS, limit=latest - self._seen))
            self._frozen = newer if newer is not None else self._frozen
        self._seen = latest
        return self._frozen


def arrivals(lake: Lake, accepted: DataFrame, txn: BatchTxn, frozen_at: int | None) -> DataFrame:
    """``accepted`` events (event_id, user_id, item_id, event_time) with their item's rank in
    the live and the frozen list (version ``frozen_at``) of their user (null: not in it)."""

    def ranks(version: int | None, name: str) -> DataFrame:
        lists = lake.read(LISTS, version=version) if version is not None else lake.read(LISTS)
        return lists.select("user_id", "item_id", F.col("rank").cast("int").alias(name))

    events = accepted.select("event_id", "user_id", "item_id", "event_time").dropDuplicates(["event_id"])
    joined = events.join(ranks(None, "rank_live"), ["user_id", "item_id"], "left")
    if frozen_at is not None:
        joined = joined.join(ranks(frozen_at, "rank_frozen"), ["user_id", "item_id"], "left")
    else:
        joined = joined.withColumn("rank_frozen", F.lit(None).cast("int"))
    return joined.select(F.lit(txn.app_id).alias("app_id"), F.lit(txn.batch_id).cast("long").alias("batch_id"),
                         "event_id", "user_id", "item_id", "event_time", "rank_live", "rank_frozen",
                         F.lit(frozen_at).cast("long").alias("frozen_version"),
                         F.current_timestamp().alias("arrived_at"))


def _hit(rank: Column, k: int) -> Column:
    return F.coalesce(rank <= k, F.lit(False)).cast("double")


def _ndcg(rank: Column, k: int) -> Column:
    return F.when(rank <= k, 1.0 / F.log2(rank + 1.0)).otherwise(0.0)


def prequential_rows(lake: Lake, ks: list[int], windows: int) -> list[tuple[str, str, str, int, float, int]]:
    """(model, slice, metric, k, value, n_events) for the stream's and the frozen lists: over
    every recorded event (slice ``all``) and per arrival window (``window 01/10`` ...), the
    windows being equal shares of events in arrival order. One small aggregate comes back."""
    events = lake.read(TABLE).dropDuplicates(["event_id"])
    order = Window.orderBy("arrived_at", "batch_id", "event_id")  # one partition: events are few per batch
    events = events.withColumn("window", F.ntile(windows).over(order))
    aggs = [F.count(F.lit(1)).alias("n")]
    for model, col in RANKS.items():
        for k in ks:
            aggs += [F.avg(_hit(F.col(col), k)).alias(f"{model}|hitrate|{k}"),
                     F.avg(_ndcg(F.col(col), k)).alias(f"{model}|ndcg|{k}")]
    per_window = events.groupBy("window").agg(*aggs)
    overall = events.agg(*aggs).withColumn("window", F.lit(None).cast("int"))
    out = []
    for row in per_window.unionByName(overall).collect():  # windows + 1 rows
        name = "all" if row["window"] is None else f"window {row['window']:02d}/{windows:02d}"
        for key, value in row.asDict().items():
            if "|" in key and value is not None:
                model, metric, k = key.split("|")
                out.append((model, name, metric, int(k), float(value), int(row["n"])))
    return out
