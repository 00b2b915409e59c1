"""Delta tables without JVM jars: Spark executors write parquet, delta-rs commits.

Why this shape: the Delta Lake Spark connector needs the ``io.delta`` jars, which a plain
``pip install pyspark`` does not have (and Maven may be out of reach). delta-rs is a full
Delta protocol implementation in Rust, but it writes from one process. So the data path
stays distributed: each Spark task writes its own parquet file through ``mapInArrow`` and
returns only the file's metadata; the driver turns those into Delta ``add`` (and, for
MERGE, ``remove``) actions and commits them as ONE transaction. Readers see either all of a
job's output or none of it.

Reads go back through Spark over the table's active files (``file_uris()``), valid while
the table uses no deletion vectors or column mapping, which tables written here never do.

Concurrency is Delta's optimistic protocol, made explicit because delta-rs' own retry would
re-commit a stale plan: every commit is made on the snapshot the write read, with delta-rs'
retries off, so a writer that lost the race gets a conflict instead of silently stacking
its (possibly duplicate) rows on the winner's. A MERGE then starts over on the new version
unless the winner changed no data; overwrites and appends, which read nothing of the
table, go on top. Every file a write attempt creates is named by the attempt's id, so a
failed attempt deletes exactly its own files.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from deltalake import DeltaTable, Transaction
from deltalake import Schema as DeltaSchema
from deltalake.exceptions import DeltaError, TableNotFoundError
from deltalake.transaction import AddAction, CommitProperties, RemoveAction, create_table_with_add_actions
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T
from pyspark.sql.pandas.types import to_arrow_schema

from ..arrowframes import collect_arrow, to_dataframe
from ..logs import get_logger
from . import arrowmerge, storage
from .base import (
    NO_TABLE,
    Clustering,
    CommitResult,
    ConcurrentWriteError,
    Lake,
    LakeError,
    RunContext,
    check_schema,
    check_unique_keys,
    conform,
)

log = get_logger("lake.delta-rs")

# MERGEs of sources up to this many rows, into files holding up to this many rows that may
# match them, are planned and written on the driver (see :mod:`.arrowmerge`).
DRIVER_MERGE_ROWS = 100_000
DRIVER_MERGE_TARGET_ROWS = 2_000_000
KEY_PASS_MAX_FILES = 64  # see _holding
STRING_STAT_CHARS = 32  # Spark's Delta writer truncates string statistics at this length
_FOOTER_ROWS: dict[tuple[str, str], int] = {}  # (table location, file) -> rows: see DeltaRsLake._footer_rows

_FILE_META = T.StructType([
    T.StructField("path", T.StringType()),
    T.StructField("size", T.LongType()),
    T.StructField("num_records", T.LongType()),
    T.StructField("stats", T.StringType()),
])
_ARROW_FILE_META = pa.schema([("path", pa.string()), ("size", pa.int64()),
                              ("num_records", pa.int64()), ("stats", pa.string())])


# --------------------------------------------------------------------------- executor side
class _Stats:
    """Per-file Delta statistics: record count, null counts, min/max of numeric columns and
    of short strings (enough for data skipping on ids, string keys such as ``user_id`` and
    scores). A string column's bounds are written only when both fit in
    :data:`STRING_STAT_CHARS` characters: exact bounds are always valid statistics, and longer
    ones (explanations) would only bloat the log; Delta's truncation rules are not needed.
    Timestamps are left out."""

    def __init__(self, schema: pa.Schema) -> None:
        self.rows = 0
        # Flat columns only: Delta wants a nested column's null counts nested per field, and one
        # flat count for a struct (an explanation's evidence) made delta-rs drop the whole file's
        # statistics, record count and min/max included, so no MERGE could prune or size it.
        self.nulls = {f.name: 0 for f in schema if not pa.types.is_nested(f.type)}
        self.bounded = [f.name for f in schema if arrowmerge.has_bounds(f.type)]
        self.mins: dict[str, Any] = {}
        self.maxs: dict[str, Any] = {}

    def update(self, batch: pa.RecordBatch) -> None:
        self.rows += batch.num_rows
        for name in self.nulls:
            self.nulls[name] += batch.column(name).null_count
        for name in self.bounded:
            mm = pc.min_max(batch.column(name)).as_py()
            lo, hi = mm["min"], mm["max"]
            if lo is None or lo != lo or hi != hi:  # all null, or NaN present
                continue
            self.mins[name] = lo if name not in self.mins else min(self.mins[name], lo)
            self.maxs[name] = hi if name not in self.maxs else max(self.maxs[name], hi)

    def to_json(self) -> str:
        short = {n for n in self.mins if not isinstance(self.mins[n], str)
                 or max(len(self.mins[n]), len(self.maxs[n])) <= STRING_STAT_CHARS}
        return json.dumps({"numRecords": self.rows, "nullCount": self.nulls,
                           "minValues": {n: v for n, v in self.mins.items() if n in short},
                           "maxValues": {n: v for n, v in self.maxs.items() if n in short}})



def _file_prefix(write_id: str) -> str:
    return f"part-{write_id}-"


def _write_parquet_files(table_uri: str, max_rows: int, storage_options: dict[str, str], write_id: str,
                         batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """Runs in each Spark task: writes the task's rows into parquet files under the table
    root and yields one metadata row per file. Nothing else leaves the executor."""
    filesystem = storage.table_filesystem(table_uri, storage_options, create=True)
    written: list[dict[str, Any]] = []
    writer: pq.ParquetWriter | None = None
    stats: _Stats | None = None
    name = ""

    def close() -> None:
        nonlocal writer
        if writer is None or stats is None:
            return
        writer.close()
        size = filesystem.get_file_info(name).size
        written.append({"path": name, "size": size, "num_records": stats.rows,
                        "stats": stats.to_json()})
        writer = None

    for whole in batches:
        start = 0
        while start < whole.num_rows:  # a file ends at exactly max_rows (a clustered table's ranges)
            if writer is None:
                name = f"{_file_prefix(write_id)}{uuid.uuid4().hex}-c000.zstd.parquet"
                # The writer opens (and on close() finishes) the file: an object store upload
                # completes only when its stream is closed.
                writer = pq.ParquetWriter(name, whole.schema, filesystem=filesystem, compression="zstd")
                stats = _Stats(whole.schema)
            assert stats is not None
            batch = whole.slice(start, max_rows - stats.rows)
            start += batch.num_rows
            writer.write_batch(batch)
            stats.update(batch)
            if stats.rows >= max_rows:
                close()
    close()
    yield pa.RecordBatch.from_pylist(written, schema=_ARROW_FILE_META)


# --------------------------------------------------------------------------- driver side
class DeltaRsLake(Lake):
    engine = "delta-rs"

    def __init__(self, spark: SparkSession, root: str, namespace: str, catalog: str | None = None,
                 context: RunContext | None = None, target_file_rows: int = 1_000_000,
                 storage_options: dict[str, str] | None = None) -> None:
        if catalog:
            raise LakeError("catalog tables (catalog.schema.table) need the spark-delta engine; "
                            "the delta-rs engine stores tables under lake.root")
        if root.startswith("dbfs:"):
            raise LakeError(f"lake.root {root!r}: dbfs paths need the spark-delta engine (Databricks)")
        super().__init__(spark, storage.delta_uri(root), namespace, None, context)
        self.target_file_rows = target_file_rows
        self.storage_options = storage.storage_options(self.root, storage_options)

    def location(self, table: str) -> str:
        return f"{self.root}/{self.namespace}/{table}"

    def _open(self, table: str, version: int | None = None) -> DeltaTable:
        try:
            return DeltaTable(self.location(table), version=version,
                              storage_options=self.storage_options or None)
        except TableNotFoundError as exc:
            raise LakeError(f"table {table!r} does not exist at {self.location(table)}") from exc
        except Exception as exc:  # delta-rs raises plain exceptions for a missing version
            raise LakeError(f"table {table!r} at version {version}: {exc}") from exc

    # -- reads -----------------------------------------------------------------------------
    def exists(self, table: str) -> bool:
        return DeltaTable.is_deltatable(self.location(table), self.storage_options or None)

    @staticmethod
    def _spark_schema(dt: DeltaTable) -> T.StructType:
        # Delta's schema JSON is Spark's own StructType JSON.
        return T.StructType.fromJson(json.loads(dt.schema().to_json()))

    def read(self, table: str, version: int | None = None) -> DataFrame:
        dt = self._open(table, version)
        schema = self._spark_schema(dt)
        files = dt.file_uris()
        if not files:
            return self.spark.createDataFrame([], schema)
        return self._scan(table, files, schema)

    def columns(self, table: str) -> list[str]:
        return self._spark_schema(self._open(table)).names

    def _scan(self, table: str, files: list[str], schema: T.StructType, file_column: str | None = None) -> DataFrame:
        """The rows of some of the table's files (URIs from ``file_uris()``); ``file_column`` adds
        each row's file. Local files go through Spark's reader; remote ones through delta-rs'
        object store on the executors (see :mod:`.storage`)."""
        if storage.is_remote(self.root):
            prefix = self.location(table).rstrip("/") + "/"
            return storage.read_remote_files(self.spark, self.location(table), self.storage_options,
                                             [f.removeprefix(prefix) for f in files], schema, file_column)
        df = self.spark.read.schema(schema).parquet(*files)
        return df.select("*", F.col("_metadata.file_path").alias(file_column)) if file_column else df

    def version(self, table: str) -> int:
        return self._open(table).version()

    def history(self, table: str, limit: int | None = None) -> list[dict[str, Any]]:
        out = []
        for entry in self._open(table).history(limit):
            row = {"version": entry.get("version"), "timestamp": entry.get("timestamp"),
                   "operation": entry.get("operation")}
            row.update({k: v for k, v in entry.items() if k.startswith("sparkrec.")})
            out.append(row)
        return out

    # -- writes ----------------------------------------------------------------------------
    @contextmanager
    def _attempt(self, table: str) -> Iterator[_Attempt]:
        """One write attempt's files: whatever of them is not committed when it ends (all of
        them after a failure; a retried Spark task's leftovers after a success) is deleted."""
        attempt = _Attempt(uuid.uuid4().hex[:16])
        try:
            yield attempt
        finally:
            self._delete_uncommitted(table, attempt)

    def _delete_uncommitted(self, table: str, attempt: _Attempt) -> None:
        filesystem = storage.table_filesystem(self.location(table), self.storage_options)
        prefix = _file_prefix(attempt.write_id)
        doomed = [i.path for i in _listing(filesystem)
                  if i.base_name.startswith(prefix) and i.base_name not in attempt.committed]
        for path in doomed:
            filesystem.delete_file(path)
        if doomed:
            log.info("deleted files of a write that did not commit", extra={"fields": {
                "table": table, "files": len(doomed), "write_id": attempt.write_id}})

    def _write_files(self, table: str, df: DataFrame, attempt: _Attempt,
                     file_rows: int | None = None) -> list[AddAction]:
        fn = partial(_write_parquet_files, self.location(table), file_rows or self.target_file_rows,
                     self.storage_options, attempt.write_id)
        return _add_actions(df.mapInArrow(fn, _FILE_META).collect())  # one small row per file

    def _write_arrow(self, table: str, data: pa.Table, attempt: _Attempt, file_rows: int | None = None,
                     data_change: bool = True) -> list[AddAction]:
        """The driver's own rows (a small MERGE's) written as :meth:`_write_files` writes a
        DataFrame's, without a Spark job."""
        metas = _write_parquet_files(self.location(table), file_rows or self.target_file_rows, self.storage_options,
                                     attempt.write_id, iter(data.to_batches()))
        return _add_actions([row for batch in metas for row in batch.to_pylist()], data_change)

    def _props(self, operation: str, read_version: int, write_id: str, **counts: int) -> CommitProperties:
        meta = self.context.metadata(operation)
        meta.update({f"sparkrec.{k}": str(v) for k, v in counts.items()})
        meta.update({"sparkrec.read_version": str(read_version), "sparkrec.write_id": write_id})
        # No retries inside delta-rs: on a lost race it would commit this plan on top anyway.
        txns = [Transaction(*self.context.txn)] if self.context.txn else None
        return CommitProperties(custom_metadata=meta, max_commit_retries=0, app_transactions=txns)

    def transaction_version(self, table: str, app_id: str) -> int | None:
        return self._open(table).transaction_version(app_id) if self.exists(table) else None

    def _latest(self, table: str) -> int:
        return self.version(table) if self.exists(table) else NO_TABLE

    def _try_commit(self, table: str, base: int, schema: T.StructType, actions: list[AddAction | RemoveAction],
                    mode: str, props: CommitProperties, attempt: _Attempt) -> bool:
        """Commits on top of version ``base`` (``NO_TABLE``: creates the table); False when
        another writer committed that version first."""
        delta_schema = DeltaSchema.from_json(schema.json())
        try:
            if base == NO_TABLE:
                create_table_with_add_actions(self.location(table), delta_schema,
                                              [a for a in actions if isinstance(a, AddAction)], mode="error",
                                              storage_options=self.storage_options or None,
                                              commit_properties=props)
            else:
                self._open(table, base).create_write_transaction(actions, mode=mode, schema=delta_schema,
                                                                 commit_properties=props)
        except DeltaError:
            if self._latest(table) <= base:
                raise  # not a lost race
            if not self._committed_by(table, base, attempt.write_id):
                return False
        attempt.committed.update(a.path for a in actions if isinstance(a, AddAction))
        return True

    def _committed_by(self, table: str, base: int, write_id: str) -> bool:
        """Whether a commit after ``base`` is this write's own (an error raised after the log
        entry landed, e.g. by a post-commit hook): then its files must be kept."""
        return any(h.get("sparkrec.write_id") == write_id for h in self.history(table)
                   if (h.get("version") or 0) > base)

    def _same_data(self, table: str, base: int, latest: int) -> bool:
        """True when the commits after ``base`` changed no rows and no schema (no-op MERGEs,
        vacuums), so a plan made on ``base`` holds on ``latest`` too."""
        if base == NO_TABLE:
            return False
        old, new = self._open(table, base), self._open(table, latest)
        return set(old.file_uris()) == set(new.file_uris()) and old.schema().to_json() == new.schema().to_json()

    def _commit_on_top(self, table: str, schema: T.StructType, actions: list[AddAction | RemoveAction],
                       mode: str, props_for: Any, attempt: _Attempt) -> int:
        """Overwrites and appends read nothing of the table: after a lost race they are
        committed again on the newer version (an overwrite then replaces the winner's rows)."""
        for _ in range(self.commit_retries + 1):
            base = self._latest(table)
            if self._try_commit(table, base, schema, actions, mode, props_for(base), attempt):
                return base + 1
        raise ConcurrentWriteError(table, base, self._latest(table), f" ({self.commit_retries + 1} lost races)")

    def overwrite(self, table: str, df: DataFrame, clustering: Clustering | None = None) -> CommitResult:
        if clustering is None:
            return self._write_on_top(table, df, "overwrite")
        with clustering.arranged(df) as arranged:
            return self._write_on_top(table, arranged, "overwrite", clustering.file_rows)

    def append(self, table: str, df: DataFrame) -> CommitResult:
        if self.exists(table):
            check_schema(table, self._spark_schema(self._open(table)), df.schema)
        return self._write_on_top(table, df, "append")

    def _write_on_top(self, table: str, df: DataFrame, mode: str, file_rows: int | None = None) -> CommitResult:
        with self._attempt(table) as attempt:
            adds = self._write_files(table, df, attempt, file_rows)
            rows = sum(_records(a) for a in adds)
            version = self._commit_on_top(
                table, df.schema, list(adds), mode,
                lambda base: self._props(mode, base, attempt.write_id, rows=rows), attempt)
        self._log_commit(table, version, mode, rows=rows)
        return CommitResult(table, version, rows_written=rows, inserted=rows)

    def _log_commit(self, table: str, version: int, operation: str, **counts: int) -> None:
        log.debug("commit", extra={"fields": {"table": table, "version": version, "op": operation, **counts}})

    def upsert(self, table: str, df: DataFrame, keys: list[str],
               replace_within: list[str] | None = None, read_version: int | None = None) -> CommitResult:
        if read_version is not None:
            return self._upsert_at(table, df, keys, replace_within, read_version)
        return self.transact(table, lambda version: self._upsert_at(table, df, keys, replace_within, version))

    # -- the driver's own rows (a streaming micro-batch's, see sparkrec.stream.driver) -------
    def read_arrow(self, table: str, columns: list[str] | None = None,
                   where: dict[str, Sequence[Any]] | None = None, version: int | None = None) -> pa.Table:
        """Without a Spark job: only the files whose statistics allow ``where``'s values are
        read (pyarrow 14 cannot read delta-rs' own dataset, see STACK.md)."""
        dt_ = self._open(table, version)
        schema = to_arrow_schema(self._spark_schema(dt_))
        columns = columns or schema.names
        values = {c: np.unique(pa.array(v, schema.field(c).type).to_numpy(zero_copy_only=False))
                  for c, v in (where or {}).items()}
        bounded = {c: v for c, v in values.items() if arrowmerge.has_bounds(schema.field(c).type)}
        files = self._files_for(dt_, bounded, max_rows=2**62) or []
        filters = arrowmerge.membership({c: pa.array(v, schema.field(c).type) for c, v in values.items()})
        wanted = pa.schema([schema.field(c) for c in columns])
        filesystem = storage.table_filesystem(self.location(table), self.storage_options)
        files = _holding(files, filesystem, list(values), filters)
        parts = _each(files, lambda path: pq.read_table(path, filesystem=filesystem, columns=columns,
                                                        filters=filters).select(columns))
        return pa.concat_tables([p.cast(wanted) for p in parts]) if parts else wanted.empty_table()

    def upsert_arrow(self, table: str, source: pa.Table, keys: list[str], replace_within: list[str] | None = None,
                     read_version: int | None = None, schema: T.StructType | None = None) -> CommitResult:
        """:meth:`upsert` of rows this process holds: planned in it when they are few, without
        collecting them back from Spark; ``schema``: the table's when it does not exist yet."""
        if read_version is None:
            return self.transact(table, lambda version: self.upsert_arrow(table, source, keys, replace_within,
                                                                          version, schema))
        if read_version != NO_TABLE and source.num_rows <= DRIVER_MERGE_ROWS:
            dt_ = self._open(table, read_version)
            table_schema = self._spark_schema(dt_)
            nullable = _nullable(to_arrow_schema(table_schema))
            done = self._arrow_upsert(table, dt_, table_schema, conform(table, source, nullable), keys,
                                      replace_within, read_version)
            if done is not None:
                return done
        if read_version != NO_TABLE:
            schema = self._spark_schema(self._open(table, read_version))
        if schema is None:
            raise LakeError(f"table {table!r} does not exist: upsert_arrow needs its schema")
        return self._upsert_at(table, to_dataframe(self.spark, source, schema), keys, replace_within, read_version)

    def append_arrow(self, table: str, data: pa.Table, schema: T.StructType) -> CommitResult:
        """:meth:`append` of rows this process holds, written by it (no Spark job)."""
        if self.exists(table):
            schema = self._spark_schema(self._open(table))
        data = conform(table, data, to_arrow_schema(schema))
        with self._attempt(table) as attempt:
            adds = self._write_arrow(table, data, attempt)
            rows = sum(_records(a) for a in adds)
            version = self._commit_on_top(
                table, schema, list(adds), "append",
                lambda base: self._props("append", base, attempt.write_id, rows=rows), attempt)
        self._log_commit(table, version, "append", rows=rows, driver=1)
        return CommitResult(table, version, rows_written=rows, inserted=rows)

    def _upsert_at(self, table: str, df: DataFrame, keys: list[str], replace_within: list[str] | None,
                   read_version: int) -> CommitResult:
        """Copy-on-write MERGE planned in Spark on ``read_version``: only the files holding
        updated or deleted keys are rewritten; new keys are appended; the commit removes and
        adds files atomically, on ``read_version`` or a later version with the same data."""
        if read_version == NO_TABLE:
            if self.exists(table):
                raise ConcurrentWriteError(table, NO_TABLE, self.version(table))
            with self._attempt(table) as attempt:
                adds = self._write_files(table, df, attempt)
                # Checked on the written files' key columns, not by computing ``df`` again
                # (an uncommitted write's files are deleted when this raises).
                written = [f"{self.location(table)}/{a.path}" for a in adds]
                if written:
                    check_unique_keys(table, self._scan(table, written, df.schema).select(*keys), keys)
                rows = sum(_records(a) for a in adds)
                props = self._props("overwrite", NO_TABLE, attempt.write_id, rows=rows)
                if not self._try_commit(table, NO_TABLE, df.schema, list(adds), "overwrite", props, attempt):
                    raise ConcurrentWriteError(table, NO_TABLE, self.version(table))
            self._log_commit(table, 0, "overwrite", rows=rows)
            return CommitResult(table, 0, rows_written=rows, inserted=rows)
        dt_ = self._open(table, read_version)
        schema = self._spark_schema(dt_)
        check_schema(table, schema, df.schema)
        source = df.select(*schema.names).persist()
        try:
            small = self._small_upsert(table, dt_, schema, source, keys, replace_within, read_version)
            if small is not None:
                return small
            return self._spark_upsert(table, dt_, schema, source, keys, replace_within, read_version)
        finally:
            source.unpersist()

    def _small_upsert(self, table: str, dt_: DeltaTable, schema: T.StructType, df: DataFrame, keys: list[str],
                      replace_within: list[str] | None, read_version: int) -> CommitResult | None:
        """The MERGE planned and written in this process (:mod:`.arrowmerge`) when the source
        has at most :data:`DRIVER_MERGE_ROWS` rows and the files that can hold its keys at most
        :data:`DRIVER_MERGE_TARGET_ROWS`; None (nothing done) otherwise."""
        source = collect_arrow(df.limit(DRIVER_MERGE_ROWS + 1), schema)
        if source.num_rows > DRIVER_MERGE_ROWS:
            return None
        return self._arrow_upsert(table, dt_, schema, source, keys, replace_within, read_version)

    def _arrow_upsert(self, table: str, dt_: DeltaTable, schema: T.StructType, source: pa.Table, keys: list[str],
                      replace_within: list[str] | None, read_version: int) -> CommitResult | None:
        files = self._files_for(dt_, arrowmerge.sorted_values(source, replace_within or keys),
                                count_rows=lambda path: self._footer_rows(table, path))
        if files is None:
            return None
        nullable = _nullable(source.schema)
        source = source.cast(nullable)
        filesystem = storage.table_filesystem(self.location(table), self.storage_options)
        groups = replace_within or keys
        in_groups = arrowmerge.membership({c: pc.unique(source.column(c)) for c in groups})
        files = _holding(files, filesystem, groups, in_groups)
        targets = _each(files, lambda path: _read_file(filesystem, path, nullable))
        plan = arrowmerge.plan_merge(table, source, targets, keys, replace_within)
        with self._attempt(table) as attempt:
            actions: list[AddAction | RemoveAction] = []
            now = int(time.time() * 1000)
            # Each file that loses rows is rewritten as one file: its other rows and the changed
            # rows of the groups it held, so a clustered table keeps its narrow ranges. Changed
            # rows of groups no rewritten file held (new users, say) go to new files.
            def rewrite(item: tuple[int, np.ndarray]) -> list[AddAction]:
                i, lost = item
                kept = targets[i].filter(pa.array(~np.isin(np.arange(targets[i].num_rows), lost)))
                return self._write_arrow(table, pa.concat_tables([kept, plan.changed_for(i)]), attempt)

            actions.extend(RemoveAction(files[i], True, now) for i in plan.dropped)
            actions.extend(add for adds in _each(list(plan.dropped.items()), rewrite) for add in adds)
            rest = plan.changed_for(None, rewritten=set(plan.dropped))
            if rest.num_rows:
                actions.extend(self._write_arrow(table, rest, attempt))
            rows = sum(_records(a) for a in actions if isinstance(a, AddAction))
            version = self._commit_merge(table, schema, actions, read_version, attempt, rows=rows, **plan.counts)
        self._log_commit(table, version, "merge", rows=rows, driver=1, **plan.counts)
        return CommitResult(table, version, rows_written=rows, **plan.counts)

    def _footer_rows(self, table: str, path: str) -> int:
        """A data file's row count from its Parquet footer, for a file whose Delta statistics
        lack it (written before nested columns' null counts were fixed, or by a writer that
        keeps none); files never change, so each footer is read once per process."""
        key = (self.location(table), path)
        if key not in _FOOTER_ROWS:
            filesystem = storage.table_filesystem(self.location(table), self.storage_options)
            with filesystem.open_input_file(path) as fh:
                _FOOTER_ROWS[key] = pq.ParquetFile(fh).metadata.num_rows
        return _FOOTER_ROWS[key]

    @staticmethod
    def _files_for(dt_: DeltaTable, values: dict[str, np.ndarray], max_rows: int = DRIVER_MERGE_TARGET_ROWS,
                   count_rows: Callable[[str], int] | None = None) -> list[str] | None:
        """The table's files (paths relative to its root) whose statistics allow a row taking
        one of ``values`` (sorted) in each of its columns; None when they hold over ``max_rows``.
        ``count_rows``: a file's rows where its statistics lack the count (otherwise estimated
        at one row per 8 bytes, which made a 1.6M-row table of explained lists look like 8M and
        sent every streamed refresh of Book-Crossing's lists to a 27 s Spark MERGE)."""
        actions = dt_.get_add_actions(flatten=True)
        names = set(actions.column_names)

        def column(name: str) -> list[Any]:
            return actions.column(name).to_pylist() if name in names else [None] * actions.num_rows

        keep = arrowmerge.overlapping_files(values, {c: column(f"min.{c}") for c in values},
                                           {c: column(f"max.{c}") for c in values}, actions.num_rows)
        # a file without a record count (statistics are optional in Delta) counts a row per 8 bytes
        paths = column("path")
        rows = [n if n is not None else count_rows(p) if count_rows is not None and k else size // 8
                for n, size, p, k in zip(column("num_records"), column("size_bytes"), paths, keep, strict=True)]
        if sum(n for n, k in zip(rows, keep, strict=True) if k) > max_rows:
            return None
        return [p for p, k in zip(paths, keep, strict=True) if k]

    def _spark_upsert(self, table: str, dt_: DeltaTable, schema: T.StructType, df: DataFrame, keys: list[str],
                      replace_within: list[str] | None, read_version: int) -> CommitResult:
        with self.merge_plan(table, df, keys, schema, replace_within, read_version) as plan, \
                self._attempt(table) as attempt:
            actions: list[AddAction | RemoveAction] = []
            if plan.rewrites:
                dropped = plan.changed.select(*keys)
                if plan.stale is not None:
                    dropped = dropped.unionByName(plan.stale)
                actions.extend(self._rewrite_files(table, dt_, schema, dropped, plan.changed, keys, attempt))
            elif plan.n_changed:
                actions.extend(self._write_files(table, plan.changed, attempt))
            rows = sum(_records(a) for a in actions if isinstance(a, AddAction))
            version = self._commit_merge(table, schema, actions, read_version, attempt, rows=rows, **plan.counts)
        self._log_commit(table, version, "merge", rows=rows, **plan.counts)
        return CommitResult(table, version, rows_written=rows, **plan.counts)

    def _commit_merge(self, table: str, schema: T.StructType, actions: list[AddAction | RemoveAction],
                      read_version: int, attempt: _Attempt, **counts: int) -> int:
        """A MERGE read the whole table at ``read_version``: it may go on top of later commits
        only if they changed no data; otherwise any of them could hold the same keys."""
        base = read_version
        for _ in range(self.commit_retries + 1):
            props = self._props("merge", read_version, attempt.write_id, **counts)
            if self._try_commit(table, base, schema, actions, "append", props, attempt):
                return base + 1
            latest = self._latest(table)
            if not self._same_data(table, read_version, latest):
                raise ConcurrentWriteError(table, read_version, latest)
            base = latest
        raise ConcurrentWriteError(table, read_version, self._latest(table), f" ({self.commit_retries + 1} lost races)")

    def _rewrite_files(self, table: str, dt_: DeltaTable, schema: T.StructType, dropped: DataFrame,
                       added: DataFrame, keys: list[str], attempt: _Attempt) -> list[AddAction | RemoveAction]:
        """Removes every file holding a ``dropped`` key and adds its other rows back with ``added``."""
        prefix = self.location(table).rstrip("/") + "/"
        by_name = {os.path.basename(u): u.removeprefix(prefix) for u in dt_.file_uris()}
        target = self._scan(table, dt_.file_uris(), schema, "__file")
        touched = [r["__file"] for r in target.join(dropped, on=keys, how="left_semi")
                   .select("__file").distinct().collect()]
        touched_rel = [by_name[os.path.basename(p)] for p in touched]
        kept = (self._scan(table, [f"{self.location(table)}/{p}" for p in touched_rel], schema)
                .join(dropped, on=keys, how="left_anti"))
        adds = self._write_files(table, kept.unionByName(added), attempt)
        now = int(time.time() * 1000)
        removes = [RemoveAction(p, True, now) for p in touched_rel]
        return [*removes, *adds]

    # -- maintenance -----------------------------------------------------------------------
    def tables(self) -> list[str]:
        filesystem = storage.table_filesystem(f"{self.root}/{self.namespace}", self.storage_options)
        return sorted(i.base_name for i in _listing(filesystem)
                      if i.type == pafs.FileType.Directory and not i.base_name.startswith(("_", ".")))

    def compact(self, table: str, min_files: int, clustering: Clustering | None = None) -> int:
        if not self.exists(table) or len(self._open(table).file_uris()) < min_files:
            return 0
        props = CommitProperties(custom_metadata=self.context.metadata("optimize"), max_commit_retries=0)
        if clustering is not None:
            metrics = {"numFilesRemoved": self._merge_small_files(table, clustering, props)}
        else:
            metrics = self._open(table).optimize.compact(commit_properties=props)
        self._open(table).create_checkpoint()
        log.debug("compacted", extra={"fields": {"table": table, **{k: v for k, v in metrics.items()
                                                                      if isinstance(v, int)}}})
        return int(metrics.get("numFilesRemoved", 0))

    def _merge_small_files(self, table: str, clustering: Clustering, props: CommitProperties) -> int:
        """A clustered table's compaction: the files under half of ``file_rows`` (what MERGEs of
        new groups leave) merged in order into full ones; the rest, narrow ranges, stay as they
        are (delta-rs' bin-packing would merge them all into a few wide files). A lost race
        with a writer skips it: the next compaction tries again."""
        dt_ = self._open(table)
        base = dt_.version()
        actions = dt_.get_add_actions(flatten=True)
        paths = actions.column("path").to_pylist()
        rows = [n if n is not None else self._footer_rows(table, p)
                for n, p in zip(actions.column("num_records").to_pylist(), paths, strict=True)]
        small = [p for p, n in zip(paths, rows, strict=True) if n < clustering.file_rows // 2]
        if len(small) < 2:
            return 0
        schema = self._spark_schema(dt_)
        filesystem = storage.table_filesystem(self.location(table), self.storage_options)
        nullable = _nullable(to_arrow_schema(schema))
        merged = pa.concat_tables(_each(small, lambda path: _read_file(filesystem, path, nullable)))
        merged = merged.sort_by([(c, "ascending") for c in clustering.columns])
        now = int(time.time() * 1000)
        with self._attempt(table) as attempt:
            adds = self._write_arrow(table, merged, attempt, clustering.file_rows, data_change=False)
            removes = [RemoveAction(p, False, now) for p in small]
            if not self._try_commit(table, base, schema, [*removes, *adds], "append", props, attempt):
                return 0
        return len(small)

    def vacuum(self, table: str, retention_hours: int) -> list[str]:
        if self.exists(table):
            props = CommitProperties(custom_metadata=self.context.metadata("vacuum"))
            return list(self._open(table).vacuum(retention_hours, dry_run=False, enforce_retention_duration=False,
                                                 full=True, commit_properties=props))
        # A first write killed before its commit: parquet files and no log. Only our own
        # files, and only old ones: a first write in progress may be adding to this folder.
        filesystem = storage.table_filesystem(self.location(table), self.storage_options)
        cutoff = dt.datetime.now(dt.UTC) - dt.timedelta(hours=retention_hours)
        doomed = [i for i in _listing(filesystem)
                  if i.type == pafs.FileType.File and i.base_name.startswith("part-")
                  and i.mtime is not None and i.mtime <= cutoff]
        for info in doomed:
            filesystem.delete_file(info.path)
        return [i.base_name for i in doomed]


def _nullable(schema: pa.Schema) -> pa.Schema:
    """Spark's nullability flags are hints (a column it calls non-null may hold nulls in the table)."""
    return pa.schema([f.with_nullable(True) for f in schema])


def _read_file(filesystem: pafs.FileSystem, path: str, schema: pa.Schema) -> pa.Table:
    """A data file's rows in the table's column order and ``schema``'s types."""
    return pq.read_table(path, filesystem=filesystem).select(schema.names).cast(schema)


def _holding(files: list[str], filesystem: pafs.FileSystem, columns: list[str],
             test: pc.Expression | None) -> list[str]:
    """Of a few large candidate files, those holding a row that passes ``test``, found by
    reading only ``columns``. Why: statistics cannot prune on keys that are hashes (an
    event_id), so a streamed batch's MERGE into interactions read every file of the table
    whole (~1.5 s a Book-Crossing batch) to find, mostly, that its events are new. Many small
    candidates (a clustered table's, already pruned by their ranges) are read directly."""
    if test is None or not 1 < len(files) <= KEY_PASS_MAX_FILES:
        return files
    rows = _each(files, lambda path: pq.read_table(path, filesystem=filesystem, columns=columns, filters=test).num_rows)
    return [path for path, n in zip(files, rows, strict=True) if n]


def _each(items: list[Any], fn: Callable[[Any], Any]) -> list[Any]:
    """``fn`` over ``items`` in order, on a thread per core: a streamed refresh reads and writes
    hundreds of small files, each mostly Parquet decoding or encoding, which releases the GIL."""
    if len(items) < 2:
        return [fn(item) for item in items]
    with ThreadPoolExecutor(max_workers=min(len(items), os.cpu_count() or 1)) as pool:
        return list(pool.map(fn, items))


def _add_actions(metas: list[Any], data_change: bool = True) -> list[AddAction]:
    now = int(time.time() * 1000)
    return [AddAction(m["path"], m["size"], {}, now, data_change, m["stats"]) for m in metas]


@dataclass
class _Attempt:
    write_id: str
    committed: set[str] = field(default_factory=set)


def _listing(filesystem: pafs.FileSystem) -> list[pafs.FileInfo]:
    """The top level of a filesystem rooted at a folder (none when the folder does not exist)."""
    return filesystem.get_file_info(pafs.FileSelector("", allow_not_found=True))


def _records(action: AddAction | RemoveAction) -> int:
    if not isinstance(action, AddAction):
        return 0
    return int(json.loads(action.stats).get("numRecords", 0))
