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
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterator
from functools import partial
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from deltalake import DeltaTable
from deltalake import Schema as DeltaSchema
from deltalake.exceptions import TableNotFoundError
from deltalake.transaction import AddAction, CommitProperties, RemoveAction, create_table_with_add_actions
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from ..logs import get_logger
from .base import CommitResult, Lake, LakeError, RunContext, check_schema, check_unique_keys

log = get_logger("lake.delta-rs")

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
    """Per-file Delta statistics: record count, null counts, min/max of numeric columns
    (enough for data skipping on ids and scores; strings and timestamps are left out because
    Delta's truncation rules for them are easy to get wrong)."""

    def __init__(self, schema: pa.Schema) -> None:
        self.rows = 0
        self.nulls = {f.name: 0 for f in schema}
        self.numeric = [f.name for f in schema
                        if pa.types.is_integer(f.type) or pa.types.is_floating(f.type)]
        self.mins: dict[str, Any] = {}
        self.maxs: dict[str, Any] = {}

    def update(self, batch: pa.RecordBatch) -> None:
        self.rows += batch.num_rows
        for name in self.nulls:
            self.nulls[name] += batch.column(name).null_count
        for name in self.numeric:
            mm = pc.min_max(batch.column(name)).as_py()
            lo, hi = mm["min"], mm["max"]
            if lo is None or lo != lo or hi != hi:  # all null, or NaN present
                continue
            self.mins[name] = lo if name not in self.mins else min(self.mins[name], lo)
            self.maxs[name] = hi if name not in self.maxs else max(self.maxs[name], hi)

    def to_json(self) -> str:
        return json.dumps({"numRecords": self.rows, "nullCount": self.nulls,
                           "minValues": self.mins, "maxValues": self.maxs})


def _write_parquet_files(table_uri: str, max_rows: int, storage_options: dict[str, str],
                         batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """Runs in each Spark task: writes the task's rows into parquet files under the table
    root and yields one metadata row per file. Nothing else leaves the executor."""
    from pyarrow import fs as pafs

    filesystem, base = pafs.FileSystem.from_uri(table_uri)
    if isinstance(filesystem, pafs.LocalFileSystem):
        filesystem.create_dir(base, recursive=True)
    written: list[dict[str, Any]] = []
    writer: pq.ParquetWriter | None = None
    stats: _Stats | None = None
    name = ""

    def close() -> None:
        nonlocal writer
        if writer is None or stats is None:
            return
        writer.close()
        size = filesystem.get_file_info(f"{base}/{name}").size
        written.append({"path": name, "size": size, "num_records": stats.rows,
                        "stats": stats.to_json()})
        writer = None

    for batch in batches:
        if batch.num_rows == 0:
            continue
        if writer is None:
            name = f"part-{uuid.uuid4().hex}-c000.zstd.parquet"
            sink = filesystem.open_output_stream(f"{base}/{name}")
            writer = pq.ParquetWriter(sink, batch.schema, compression="zstd")
            stats = _Stats(batch.schema)
        writer.write_batch(batch)
        assert stats is not None
        stats.update(batch)
        if stats.rows >= max_rows:
            close()
    close()
    yield pa.RecordBatch.from_pylist(written, schema=_ARROW_FILE_META)


# --------------------------------------------------------------------------- driver side
def _is_uri(path: str) -> bool:
    return "://" in path


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
        if root.startswith("file:"):
            root = root.removeprefix("file://").removeprefix("file:")
        if not _is_uri(root):
            root = os.path.abspath(root)
        super().__init__(spark, root, namespace, None, context)
        self.target_file_rows = target_file_rows
        self.storage_options = storage_options or {}

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
        return self.spark.read.schema(schema).parquet(*files)

    def version(self, table: str) -> int:
        return self._open(table).version()

    def history(self, table: str) -> list[dict[str, Any]]:
        out = []
        for entry in self._open(table).history():
            row = {"version": entry.get("version"), "timestamp": entry.get("timestamp"),
                   "operation": entry.get("operation")}
            row.update({k: v for k, v in entry.items() if k.startswith("sparkrec.")})
            out.append(row)
        return out

    # -- writes ----------------------------------------------------------------------------
    def _write_files(self, table: str, df: DataFrame) -> list[AddAction]:
        fn = partial(_write_parquet_files, self.location(table), self.target_file_rows,
                     self.storage_options)
        metas = df.mapInArrow(fn, _FILE_META).collect()  # one small row per file
        now = int(time.time() * 1000)
        return [AddAction(m["path"], m["size"], {}, now, True, m["stats"]) for m in metas]

    def _props(self, operation: str, **counts: int) -> CommitProperties:
        meta = self.context.metadata(operation)
        meta.update({f"sparkrec.{k}": str(v) for k, v in counts.items()})
        return CommitProperties(custom_metadata=meta)

    def _commit(self, table: str, df_schema: T.StructType, actions: list[AddAction | RemoveAction],
                mode: str, operation: str, **counts: int) -> int:
        schema = DeltaSchema.from_json(df_schema.json())
        uri = self.location(table)
        if not self.exists(table):
            adds = [a for a in actions if isinstance(a, AddAction)]
            create_table_with_add_actions(uri, schema, adds, mode="error",
                                          storage_options=self.storage_options or None,
                                          commit_properties=self._props(operation, **counts))
        else:
            self._open(table).create_write_transaction(
                actions, mode=mode, schema=schema, commit_properties=self._props(operation, **counts))
        version = self.version(table)
        log.debug("commit", extra={"fields": {"table": table, "version": version, "op": operation,
                                               **counts}})
        return version

    def overwrite(self, table: str, df: DataFrame) -> CommitResult:
        adds = self._write_files(table, df)
        rows = sum(_records(a) for a in adds)
        version = self._commit(table, df.schema, list(adds), "overwrite", "overwrite", rows=rows)
        return CommitResult(table, version, rows_written=rows, inserted=rows)

    def append(self, table: str, df: DataFrame) -> CommitResult:
        if self.exists(table):
            check_schema(table, self._spark_schema(self._open(table)), df.schema)
        adds = self._write_files(table, df)
        rows = sum(_records(a) for a in adds)
        version = self._commit(table, df.schema, list(adds), "append", "append", rows=rows)
        return CommitResult(table, version, rows_written=rows, inserted=rows)

    def upsert(self, table: str, df: DataFrame, keys: list[str],
               replace_within: list[str] | None = None) -> CommitResult:
        """Copy-on-write MERGE planned in Spark: only the files holding updated or deleted keys
        are rewritten; new keys are appended; the commit removes and adds files atomically."""
        if not self.exists(table):
            check_unique_keys(table, df, keys)
            return self.overwrite(table, df)
        dt = self._open(table)
        schema = self._spark_schema(dt)
        check_schema(table, schema, df.schema)
        df = df.select(*schema.names).persist()
        stale: DataFrame | None = None
        try:
            check_unique_keys(table, df, keys)
            total = df.count()
            changed, n_changed, n_updated = self.count_changes(table, df, keys)
            stale = self.stale_keys(table, df, keys, replace_within).persist() if replace_within else None
            n_deleted = stale.count() if stale is not None else 0
            counts = {"inserted": n_changed - n_updated, "updated": n_updated,
                      "unchanged": total - n_changed, "deleted": n_deleted}
            actions: list[AddAction | RemoveAction] = []
            if n_updated or n_deleted:
                dropped = changed.select(*keys)
                if stale is not None:
                    dropped = dropped.unionByName(stale)
                actions.extend(self._rewrite_files(table, dt, schema, dropped, changed, keys))
            elif n_changed:
                actions.extend(self._write_files(table, changed))
            rows = sum(_records(a) for a in actions if isinstance(a, AddAction))
            version = self._commit(table, schema, actions, "append", "merge", rows=rows, **counts)
            return CommitResult(table, version, rows_written=rows, **counts)
        finally:
            df.unpersist()
            if stale is not None:
                stale.unpersist()

    def _rewrite_files(self, table: str, dt: DeltaTable, schema: T.StructType, dropped: DataFrame,
                       added: DataFrame, keys: list[str]) -> list[AddAction | RemoveAction]:
        """Removes every file holding a ``dropped`` key and adds its other rows back with ``added``."""
        prefix = self.location(table).rstrip("/") + "/"
        by_name = {os.path.basename(u): u.removeprefix(prefix) for u in dt.file_uris()}
        target = self.spark.read.schema(schema).parquet(*dt.file_uris()).select(
            "*", F.col("_metadata.file_path").alias("__file"))
        touched = [r["__file"] for r in target.join(dropped, on=keys, how="left_semi")
                   .select("__file").distinct().collect()]
        touched_rel = [by_name[os.path.basename(p)] for p in touched]
        kept = (self.spark.read.schema(schema).parquet(*[f"{self.location(table)}/{p}" for p in touched_rel])
                .join(dropped, on=keys, how="left_anti"))
        adds = self._write_files(table, kept.unionByName(added))
        now = int(time.time() * 1000)
        removes = [RemoveAction(p, True, now) for p in touched_rel]
        return [*removes, *adds]


def _records(action: AddAction | RemoveAction) -> int:
    if not isinstance(action, AddAction):
        return 0
    return int(json.loads(action.stats).get("numRecords", 0))
