"""Native Delta through the Spark connector, for clusters that have the ``io.delta`` jars
(Databricks, or ``--packages io.delta:delta-spark_2.12:3.3.x``). Tables can be paths under
``lake.root`` or metastore names ``catalog.namespace.table``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from .base import (
    NO_TABLE,
    Clustering,
    CommitResult,
    ConcurrentWriteError,
    Lake,
    LakeError,
    check_schema,
    check_unique_keys,
)

USER_METADATA = "spark.databricks.delta.commitInfo.userMetadata"
TXN_KEYS = ("spark.databricks.delta.write.txnAppId", "spark.databricks.delta.write.txnVersion")


class SparkDeltaLake(Lake):
    engine = "spark-delta"

    def location(self, table: str) -> str:
        if self.catalog:
            return f"{self.catalog}.{self.namespace}.{table}"
        return f"{self.root}/{self.namespace}/{table}"

    def _delta_table(self, table: str) -> Any:
        from delta.tables import DeltaTable  # the Python half of delta-spark

        if self.catalog:
            return DeltaTable.forName(self.spark, self.location(table))
        return DeltaTable.forPath(self.spark, self.location(table))

    @contextmanager
    def _commit_metadata(self, operation: str, **counts: int) -> Iterator[None]:
        """Delta reads a commit's ``userMetadata`` and idempotent-write ids (txnAppId /
        txnVersion) from session conf, so they are set for this one write and removed after
        it, even when it fails: left set, the next commit of anyone on the session (a user's
        own notebook cell included) would carry this one's counts and transaction id."""
        meta = self.context.metadata(operation)
        meta.update({f"sparkrec.{k}": str(v) for k, v in counts.items()})
        conf = self.spark.conf
        conf.set(USER_METADATA, json.dumps(meta))
        # Delta's own idempotent-write check; untested here (no delta jar).
        for key, value in zip(TXN_KEYS, self.context.txn or (), strict=False):
            conf.set(key, str(value))
        try:
            yield
        finally:
            for key in (USER_METADATA, *TXN_KEYS):
                conf.unset(key)

    def transaction_version(self, table: str, app_id: str) -> int | None:
        """From the commits' sparkrec metadata (the txn action itself is not in ``history()``)."""
        if not self.exists(table):
            return None
        versions = [int(h["sparkrec.txn_version"]) for h in self.history(table)
                    if h.get("sparkrec.txn_app_id") == app_id and "sparkrec.txn_version" in h]
        return max(versions, default=None)

    def exists(self, table: str) -> bool:
        if self.catalog:
            return bool(self.spark.catalog.tableExists(self.location(table)))
        from delta.tables import DeltaTable

        return bool(DeltaTable.isDeltaTable(self.spark, self.location(table)))

    def read(self, table: str, version: int | None = None) -> DataFrame:
        if not self.exists(table):
            raise LakeError(f"table {table!r} does not exist at {self.location(table)}")
        reader = self.spark.read.format("delta")
        if version is not None:
            reader = reader.option("versionAsOf", version)
        if self.catalog:
            return reader.table(self.location(table))
        return reader.load(self.location(table))

    def version(self, table: str) -> int:
        return int(self._delta_table(table).history(1).select("version").first()[0])

    def history(self, table: str, limit: int | None = None) -> list[dict[str, Any]]:
        history = self._delta_table(table).history(limit) if limit else self._delta_table(table).history()
        rows = history.select(
            "version", "timestamp", "operation", "userMetadata").collect()
        out = []
        for r in rows:
            entry = {"version": r["version"], "timestamp": r["timestamp"], "operation": r["operation"]}
            if r["userMetadata"]:
                try:
                    entry.update(json.loads(r["userMetadata"]))
                except ValueError:
                    entry["userMetadata"] = r["userMetadata"]
            out.append(entry)
        return out

    def _save(self, table: str, df: DataFrame, mode: str, file_rows: int | None = None) -> None:
        writer = df.write.format("delta").mode(mode)
        if file_rows:
            writer = writer.option("maxRecordsPerFile", file_rows)
        if mode == "overwrite":
            writer = writer.option("overwriteSchema", "true")
        if self.catalog:
            writer.saveAsTable(self.location(table))
        else:
            writer.save(self.location(table))

    def overwrite(self, table: str, df: DataFrame, clustering: Clustering | None = None) -> CommitResult:
        if clustering is not None:
            with clustering.arranged(df) as arranged:
                rows = arranged.count()
                with self._commit_metadata("overwrite", rows=rows):
                    self._save(table, arranged, "overwrite", clustering.file_rows)
            return CommitResult(table, self.version(table), rows_written=rows, inserted=rows)
        rows = df.count()
        with self._commit_metadata("overwrite", rows=rows):
            self._save(table, df, "overwrite")
        return CommitResult(table, self.version(table), rows_written=rows, inserted=rows)

    def append(self, table: str, df: DataFrame) -> CommitResult:
        if self.exists(table):
            check_schema(table, self.read(table).schema, df.schema)
        rows = df.count()
        with self._commit_metadata("append", rows=rows):
            self._save(table, df, "append")
        return CommitResult(table, self.version(table), rows_written=rows, inserted=rows)

    def upsert(self, table: str, df: DataFrame, keys: list[str],
               replace_within: list[str] | None = None, read_version: int | None = None) -> CommitResult:
        """Delta's own MERGE detects concurrent conflicting commits (ConcurrentAppendException
        and friends); a ``read_version`` the table has moved past is refused before it starts."""
        if read_version is not None:
            latest = self.version(table) if self.exists(table) else NO_TABLE
            if latest != read_version:
                raise ConcurrentWriteError(table, read_version, latest)
        if not self.exists(table):
            check_unique_keys(table, df, keys)
            return self.overwrite(table, df)
        schema = self.read(table).schema
        check_schema(table, schema, df.schema)
        with self.merge_plan(table, df, keys, schema, replace_within) as plan:
            source = plan.changed.withColumn("__delete", F.lit(False))
            if plan.stale is not None:  # stale keys ride in the same MERGE as delete markers: one commit
                source = source.unionByName(plan.stale.withColumn("__delete", F.lit(True)), allowMissingColumns=True)
            cond = " AND ".join(f"t.`{k}` <=> s.`{k}`" for k in keys)
            with self._commit_metadata("merge", **plan.counts):
                (self._delta_table(table).alias("t").merge(source.alias("s"), cond)
                 .whenMatchedDelete(condition="s.__delete")
                 .whenMatchedUpdate(set={c: F.col(f"s.`{c}`") for c in schema.names})
                 .whenNotMatchedInsert(condition="NOT s.__delete",
                                       values={c: F.col(f"s.`{c}`") for c in schema.names})
                 .execute())
        if read_version is not None and self.version(table) != read_version + 1:
            raise LakeError(f"table {table!r}: a concurrent commit landed beside this MERGE planned on "
                            f"version {read_version}; check the table's history")
        return CommitResult(table, self.version(table), rows_written=plan.n_changed, **plan.counts)

    def tables(self) -> list[str]:
        if self.catalog:
            return sorted(t.name for t in self.spark.catalog.listTables(f"{self.catalog}.{self.namespace}"))
        jvm = self.spark._jvm  # type: ignore[attr-defined]
        path = jvm.org.apache.hadoop.fs.Path(f"{self.root}/{self.namespace}")
        fs = path.getFileSystem(self.spark._jsc.hadoopConfiguration())  # type: ignore[attr-defined]
        if not fs.exists(path):
            return []
        return sorted(s.getPath().getName() for s in fs.listStatus(path)
                      if s.isDirectory() and not s.getPath().getName().startswith(("_", ".")))

    def compact(self, table: str, min_files: int, clustering: Clustering | None = None) -> int:
        """A clustered table is Z-ordered by its columns (one column: sorted), which keeps the
        ranges narrow where plain compaction would bin-pack them into wide files."""
        if not self.exists(table):
            return 0
        detail = self._delta_table(table).detail().collect()[0]
        if int(detail["numFiles"]) < min_files:
            return 0
        optimize = self._delta_table(table).optimize()
        done = (optimize.executeZOrderBy(*clustering.columns) if clustering is not None
                else optimize.executeCompaction())
        metrics = done.collect()[0]["metrics"]
        return int(metrics["numFilesRemoved"])

    def vacuum(self, table: str, retention_hours: int) -> list[str]:
        """Delta's VACUUM (which also deletes files no version references); it reports no list."""
        if not self.exists(table):
            return []
        self.spark.conf.set("spark.databricks.delta.retentionDurationCheck.enabled", "false")
        self._delta_table(table).vacuum(float(retention_hours))
        return []
