"""One micro-batch: validate as ingest does, MERGE the events, refresh the affected users.

Each step reuses the batch stage that owns it (ingest's reader, rules, quarantine and
MERGE; features' index, event and history builders; recommend's partial refresh), so a
streamed event ends up exactly as a batch ``ingest`` + ``features`` + ``recommend --users``
would have written it. The served model is not retrained: the user tower reads the users'
new histories, which is what moves their lists.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from functools import reduce
from typing import Any

import numpy as np
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from .. import schemas
from ..config import Config, GenericSource
from ..features.builders import user_histories
from ..features.events import build_events, continue_sequences, in_arrival_order
from ..features.indexing import extend_index
from ..ingest.canonical import validate_interactions
from ..ingest.job import TableReport, _write
from ..ingest.presets import resolve_source
from ..ingest.provenance import keep_first_provenance
from ..ingest.reader import FILE_TIME, read_input
from ..ingest.validate import Validated
from ..lake import Lake
from ..logs import get_logger, log_fields
from . import driver, prequential
from .catalogue import CatalogueReport, fold_in_items
from .once import BatchTxn, timed_write
from .source import input_bytes
from .unreadable import persisted, quarantine_rows, read_counted

log = get_logger("stream")

EVENT_KEYS = ["user_idx", "item_idx", "seq"]  # an event of the features stage: (user, item, time)
BATCHES = "stream_batches"
BATCHES_SCHEMA = schemas.STREAM_BATCHES


@dataclass
class BatchReport:
    batch_id: int
    files: int
    read: int = 0
    accepted: int = 0
    quarantined: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    users_refreshed: int = 0
    skipped: list[str] = field(default_factory=list)  # tables this (replayed) batch had committed
    seconds: float = 0.0
    lag_seconds: float | None = None  # the oldest file's landing -> the batch's last commit
    in_driver: bool = False  # folded in by the driver process (stream.driver_max_bytes), not Spark jobs
    # seconds per step (each table's commit, and "read" for reading and validating the files):
    # where a batch's latency goes, in the structured log
    steps: dict[str, float] = field(default_factory=dict)
    catalogue: CatalogueReport | None = None  # the batch's catalogue rows (stream.items_path)


def process_batch(cfg: Config, spark: SparkSession, lake: Lake, files: list[str], fmt: str, txn: BatchTxn,
                  refresh: bool = True, refresher: driver.Refresher | None = None,
                  frozen: prequential.FrozenLists | None = None, item_files: list[str] | None = None,
                  known: driver.KnownItems | None = None) -> BatchReport:
    """Folds the events in ``files`` into the lake; ``refresh``: and rescores their users.
    A file that cannot be read is quarantined whole (see :mod:`.unreadable`). A batch of at
    most ``stream.driver_max_bytes`` is folded in by this process (:mod:`.driver`);
    ``refresher`` keeps the served model loaded from one such batch to the next, ``frozen`` the
    version of the lists frozen at training, ``known`` the catalogue's ids for a small batch's
    validation, all three for a long-running query. ``item_files``: catalogue rows
    (:mod:`.catalogue`), folded in first, so the events may name their items."""
    frozen = frozen or prequential.FrozenLists()
    started = time.perf_counter()
    catalogue = fold_in_items(cfg, spark, lake, item_files, txn) if item_files else None
    if not files:
        report = BatchReport(txn.batch_id, 0, catalogue=catalogue, seconds=round(time.perf_counter() - started, 3))
        return _record(spark, lake, txn, report, small=True)
    src = resolve_source(cfg.data)
    small = in_driver(cfg, files)
    # a long-running query's small batches test membership in a set it keeps; else the join
    membership = known(spark, lake) if small and known is not None else None
    known_items = membership or (lake.read("items").select("item_id") if lake.exists("items") else None)

    def read(paths: list[str]) -> tuple[Validated, TableReport]:
        raw = read_input(spark, paths, fmt, src.interactions.csv, small)  # type: ignore[arg-type]  # Spark takes lists
        v = validate_interactions(raw, src, cfg.ingest, known_items)
        source = f"{len(paths)} files from {paths[0]}"
        return driver.collect(v, source) if small else persisted(v, source)

    v, counts, unreadable = read_counted(files, "interactions", read)
    read_seconds = time.perf_counter() - started
    report = BatchReport(txn.batch_id, len(files), counts.read, counts.accepted, counts.quarantined, counts.reasons,
                         catalogue=catalogue)
    report.steps["read"] = round(read_seconds, 3)
    report.in_driver = small
    landed = None
    try:
        rejected = [quarantine_rows(spark, unreadable, "interactions")] if unreadable else []
        if v is not None:
            landed = (driver.landed(v) if isinstance(v, driver.Collected)
                      else v.rows.agg(F.min(FILE_TIME)).collect()[0][0])
            if counts.quarantined > len(unreadable):  # a clean batch skips the MERGE: a commit's cost
                if isinstance(v, driver.Collected) and not rejected:
                    _commit(txn, lake, "quarantine", report, lambda lk: driver.write_quarantine(lk, v))
                else:
                    rejected.append(v.quarantine())
        if rejected:
            every = reduce(DataFrame.unionByName, rejected)
            _commit(txn, lake, "quarantine", report, lambda lk: _quarantine(lk, every))
        if isinstance(v, driver.Collected):
            _commit(txn, lake, "interactions", report,
                    lambda lk: driver.write_interactions(lk, v, counts, cfg.data.dataset, started))
            if counts.accepted:
                _fold_in_driver(cfg, spark, lake, txn, v, report, refresh, refresher or driver.Refresher(cfg, lake),
                                frozen)
        elif v is not None:
            _commit(txn, lake, "interactions", report,
                    lambda lk: _write(lk, v, counts, cfg.data.dataset, started))
            if counts.accepted:
                _fold_in_spark(cfg, spark, lake, txn, v, report, refresh, frozen)
    finally:
        if v is not None and not small:
            v.rows.unpersist()
    report.seconds = round(time.perf_counter() - started, 3)
    if landed is not None:
        report.lag_seconds = round(time.time() - landed.timestamp(), 3)
    return _record(spark, lake, txn, report, small)


def arrival_source(cfg: Config) -> tuple[GenericSource, bool]:
    """The source as a batch's events are numbered by, and whether it has no time. Streamed
    events of a source without time are ordered by arrival (their files and lines), whatever
    its ``file_order`` says of its own file, and continue each user's sequence
    (``continue_sequences``)."""
    src = resolve_source(cfg.data)
    timeless = src.interactions.columns.timestamp is None
    return (src.model_copy(update={"file_order": "chronological"}) if timeless else src), timeless


def in_driver(cfg: Config, files: list[str]) -> bool:
    """Whether this batch's files are small enough (``stream.driver_max_bytes``) for :mod:`.driver`."""
    limit = cfg.stream.driver_max_bytes
    if not limit:
        return False
    size = input_bytes(files)
    return size is not None and size <= limit


def _fold_in_spark(cfg: Config, spark: SparkSession, lake: Lake, txn: BatchTxn, v: Validated, report: BatchReport,
                   refresh: bool, frozen: prequential.FrozenLists) -> None:
    users = _fold_events(cfg, lake, txn, v.accepted(), report)
    if refresh and lake.exists(prequential.LISTS):
        if cfg.stream.prequential:  # ranks at arrival: before this batch refreshes anyone
            _commit(txn, lake, prequential.TABLE, report,
                    lambda lk: lk.append(prequential.TABLE, prequential.arrivals(lk, v.accepted(), txn, frozen(lk))))
        _commit(txn, lake, "recommendations", report, lambda lk: _refresh(cfg, spark, lk, users))
    report.users_refreshed = users.count()


def _fold_in_driver(cfg: Config, spark: SparkSession, lake: Lake, txn: BatchTxn, v: driver.Collected,
                    report: BatchReport, refresh: bool, refresher: driver.Refresher,
                    frozen: prequential.FrozenLists) -> None:
    """:func:`_fold_in_spark`'s steps, each by its :mod:`.driver` mirror."""
    started = time.perf_counter()
    accepted = v.accepted_arrow()
    for table, id_col, idx_col in (("user_index", "user_id", "user_idx"), ("item_index", "item_id", "item_idx")):
        driver.extend_index(lake, table, accepted.column(id_col), id_col, idx_col)  # idempotent: only new ids
    report.steps["indexes"] = round(time.perf_counter() - started, 3)
    index = lake.read_arrow("user_index", ["user_id", "user_idx"], where={"user_id": accepted.column("user_id")})
    src, timeless = arrival_source(cfg)
    events = driver.build_events(driver.in_arrival_order(accepted) if timeless else accepted, index, lake,
                                 cfg.features.weights, src)
    if timeless:
        events = driver.continue_sequences(events, lake)
    _commit(txn, lake, "events", report,
            lambda lk: lk.upsert_arrow("events", events, EVENT_KEYS, schema=schemas.EVENTS))
    user_ids = dict(zip(index.column("user_idx").to_pylist(), index.column("user_id").to_pylist(), strict=True))
    mine = driver.UserEvents.read(lake, np.fromiter(user_ids, np.int64))
    histories = driver.user_histories(mine, cfg.features.history_length)
    _commit(txn, lake, "user_histories", report,
            lambda lk: lk.upsert_arrow("user_histories", histories, ["user_idx"], schema=schemas.USER_HISTORIES))
    if refresh and lake.exists(prequential.LISTS):
        if cfg.stream.prequential:
            _commit(txn, lake, prequential.TABLE, report,
                    lambda lk: lk.append_arrow(prequential.TABLE, driver.arrivals(
                        lk, accepted, txn.app_id, txn.batch_id, frozen(lk)), prequential.SCHEMA))

        def write_lists(lk: Lake) -> Any:
            from ..recommend.job import KEYS, TABLE

            lists = refresher.lists(mine, user_ids)
            if lists is None:
                users = spark.createDataFrame([(u,) for u in user_ids.values()], "user_id string")
                return _refresh(cfg, spark, lk, users)
            return lk.upsert_arrow(TABLE, lists, KEYS, replace_within=["user_id"])

        _commit(txn, lake, "recommendations", report, write_lists)
    report.users_refreshed = len(user_ids)


def _commit(txn: BatchTxn, lake: Lake, table: str, report: BatchReport, write: Any) -> None:
    timed_write(txn, lake, table, report, write)


def _record(spark: SparkSession, lake: Lake, txn: BatchTxn, report: BatchReport, small: bool) -> BatchReport:
    """The batch's ``stream_batches`` row (written by this process for a small batch) and log line."""
    if small:
        _commit(txn, lake, BATCHES, report,
                lambda lk: lk.append_arrow(BATCHES, driver.metrics_row(_metrics_values(txn, report)), BATCHES_SCHEMA))
    else:
        _commit(txn, lake, BATCHES, report, lambda lk: lk.append(BATCHES, _metrics_row(spark, txn, report)))
    log_fields(log, "micro-batch committed", **{k: v_ for k, v_ in report.__dict__.items()})
    return report


def _quarantine(lake: Lake, rejected: DataFrame) -> Any:
    keys = schemas.KEYS["quarantine"]
    return lake.upsert("quarantine", keep_first_provenance(lake, "quarantine", rejected, keys), keys)


def _fold_events(cfg: Config, lake: Lake, txn: BatchTxn, accepted: DataFrame, report: BatchReport) -> DataFrame:
    """Indices for new users and items, the events MERGEd by (user, item, time), and the
    affected users' histories; returns the affected (user_id) rows."""
    started = time.perf_counter()
    for table, id_col, idx_col in (("user_index", "user_id", "user_idx"), ("item_index", "item_id", "item_idx")):
        extend_index(lake, table, accepted.select(id_col), id_col, idx_col)  # idempotent: only new ids
    report.steps["indexes"] = round(time.perf_counter() - started, 3)
    user_index = lake.read("user_index")
    src, timeless = arrival_source(cfg)
    events = build_events(in_arrival_order(accepted) if timeless else accepted, user_index, lake.read("item_index"),
                          cfg.features.weights, src).dropDuplicates(EVENT_KEYS)
    if timeless:
        events = continue_sequences(events, lake.read("events"))
    _commit(txn, lake, "events", report, lambda lk: lk.upsert("events", events, EVENT_KEYS))
    affected = accepted.select("user_id").distinct().join(user_index, "user_id")
    mine = lake.read("events").join(affected.select("user_idx"), "user_idx")
    histories = user_histories(mine, cfg.features.history_length)
    _commit(txn, lake, "user_histories", report, lambda lk: lk.upsert("user_histories", histories, ["user_idx"]))
    return affected.select("user_id")


def _refresh(cfg: Config, spark: SparkSession, lake: Lake, users: DataFrame) -> Any:
    """The recommend stage's partial refresh: only these users, MERGEd by (user_id, rank)."""
    from ..recommend import run_recommend

    return run_recommend(cfg, spark, lake, users)


def _metrics_values(txn: BatchTxn, r: BatchReport) -> tuple[Any, ...]:
    """``stream_batches``' columns but the commit time."""
    return (txn.app_id, txn.batch_id, r.files, r.read, r.accepted, r.quarantined, json.dumps(r.reasons, sort_keys=True),
            r.users_refreshed, r.seconds, r.lag_seconds)


def _metrics_row(spark: SparkSession, txn: BatchTxn, r: BatchReport) -> DataFrame:
    without_time = T.StructType(BATCHES_SCHEMA.fields[:-1])
    return spark.createDataFrame([_metrics_values(txn, r)], without_time).withColumn("committed_at",
                                                                                    F.current_timestamp())
