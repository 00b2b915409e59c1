"""``sparkrec stream``: the Structured Streaming query whose micro-batches :mod:`.batch` folds in.

The checkpoint (``stream.checkpoint``) records which input each batch took; the Delta commits
record which batches they hold (:mod:`.once`). Together: a query killed at any point and
restarted on the same checkpoint commits every event once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pyspark.sql import DataFrame, SparkSession

from ..config import Config
from ..lake import Lake
from ..logs import get_logger, log_fields
from . import catalogue, prequential
from .batch import BATCHES, BatchReport, process_batch
from .driver import KnownItems, Refresher
from .once import BatchTxn
from .source import batch_files, read_stream

log = get_logger("stream")

# every table a micro-batch commits to
STREAM_TABLES = ("interactions", "quarantine", "user_index", "item_index", "events", "user_histories",
                 "recommendations", prequential.TABLE, BATCHES, *catalogue.TABLES[1:])


# stream.interpreted_sql: no generated code to compile for a micro-batch's small queries
INTERPRETED = {"spark.sql.codegen.wholeStage": "false", "spark.sql.codegen.factoryMode": "NO_CODEGEN"}


@contextmanager
def session_conf(spark: SparkSession, settings: dict[str, str]) -> Iterator[None]:
    """``settings`` on the session while the block runs, the previous values back after it, so
    a notebook or test session that ran the stream keeps compiling its own queries."""
    before = {key: spark.conf.get(key, None) for key in settings}
    for key, value in settings.items():
        spark.conf.set(key, value)
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                spark.conf.unset(key)
            else:
                spark.conf.set(key, value)


def checkpoint_location(cfg: Config) -> str:
    return cfg.stream.checkpoint or f"{cfg.train.workdir.rstrip('/')}/stream/{cfg.namespace}/checkpoint"


def serves_a_model(cfg: Config, lake: Lake) -> bool:
    """Whether a model is there to refresh lists with; without one, events are still folded in."""
    from ..model.store import resolve_run

    try:
        resolve_run(cfg, lake)
        return True
    except Exception as exc:  # no training run yet, or one this lake no longer matches
        log_fields(log, "no servable model: events are folded in, recommendations are not refreshed",
                   reason=str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        return False


def run_stream(cfg: Config, spark: SparkSession, lake: Lake) -> dict[str, Any]:
    """Runs the query until it is stopped (or, with ``stream.available_now``, until what has
    landed is processed); returns this run's batch count and totals."""
    checkpoint = checkpoint_location(cfg)
    refresh = serves_a_model(cfg, lake)
    query_id: dict[str, str] = {}
    started = threading.Event()
    reports: list[BatchReport] = []
    refresher = Refresher(cfg, lake)  # the served model, loaded once for the driver's batches
    frozen = prequential.FrozenLists()  # the lists' version at training, read incrementally
    known = KnownItems()  # the catalogue's ids, for the driver's batches' validation
    if refresh and cfg.stream.driver_max_bytes:
        refresher.prepare()

    def each(batch: DataFrame, batch_id: int) -> None:
        started.wait()  # foreachBatch may be called before start() has returned the query
        landed = batch_files(cfg, batch, batch_id, f"{checkpoint}/staging")
        if not landed:
            return
        txn = BatchTxn(f"sparkrec-stream-{query_id['id']}", batch_id)
        reports.append(process_batch(cfg, spark, lake, landed.files, landed.format, txn, refresh, refresher, frozen,
                                     landed.item_files, known))
        every = cfg.stream.compact_every
        if every and (batch_id + 1) % every == 0:
            compact_tables(lake, cfg)

    writer = read_stream(cfg, spark).writeStream.foreachBatch(each).option("checkpointLocation", checkpoint)
    if cfg.stream.available_now:
        writer = writer.trigger(availableNow=True)
    else:
        writer = writer.trigger(processingTime=f"{cfg.stream.trigger_seconds} seconds")
    with session_conf(spark, INTERPRETED if cfg.stream.interpreted_sql else {}):
        query = writer.queryName(f"sparkrec_stream_{cfg.namespace}").start()
        query_id["id"] = str(query.id)
        started.set()
        log_fields(log, "stream started", query_id=query_id["id"], checkpoint=checkpoint, source=cfg.stream.source,
                   path=cfg.stream.path, refresh=refresh, interpreted_sql=cfg.stream.interpreted_sql)
        try:
            query.awaitTermination()
        finally:
            if query.isActive:
                query.stop()
    return {"query_id": query_id["id"], "batches": len(reports), "read": sum(r.read for r in reports),
            "accepted": sum(r.accepted for r in reports), "quarantined": sum(r.quarantined for r in reports),
            "catalogue_rows": sum(r.catalogue.read for r in reports if r.catalogue),
            "new_items": sum(r.catalogue.new for r in reports if r.catalogue),
            "batches_in_driver": sum(r.in_driver for r in reports), "mean_step_seconds": _mean_steps(reports)}


def compact_tables(lake: Lake, cfg: Config) -> dict[str, int]:
    """Compacts every table a micro-batch writes that has at least ``stream.compact_min_files``
    files (recommendations keeping their user order); returns the files each one lost. Between
    batches, so no batch's MERGE races it (a batch job writing meanwhile replans on the
    compacted version, as after any concurrent commit)."""
    from ..recommend.job import TABLE, clustering

    started = time.perf_counter()
    removed = {t: lake.compact(t, cfg.stream.compact_min_files, clustering(cfg) if t == TABLE else None)
               for t in STREAM_TABLES}
    log_fields(log, "stream tables compacted", seconds=round(time.perf_counter() - started, 3),
               **{t: n for t, n in removed.items() if n})
    return removed


def _mean_steps(reports: list[BatchReport]) -> dict[str, float]:
    """Each step's mean seconds over the batches that ran it: where the latency goes."""
    steps = sorted({s for r in reports for s in r.steps})
    return {s: round(sum(r.steps[s] for r in reports if s in r.steps) / sum(s in r.steps for r in reports), 3)
            for s in steps}
