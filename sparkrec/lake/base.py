"""The one interface through which the platform reads and writes its Delta tables.

Jobs never call ``format("delta")`` or ``deltalake`` directly: they ask a :class:`Lake`,
which is backed by native Spark Delta on clusters that have the jars and by delta-rs
everywhere else. Both engines give the same table semantics: one atomic commit per write,
MERGE by keys, versions and time travel.
"""

from __future__ import annotations

import abc
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

ROW_HASH = "__sparkrec_row_hash"
NO_TABLE = -1  # a read version meaning "the table did not exist when this write was planned"
DATA_OPERATIONS = ("overwrite", "append", "merge")  # commits that change rows (not vacuum's)


@dataclass(frozen=True)
class Clustering:
    """A table's rows kept in order of ``columns`` in files of at most ``file_rows`` rows.

    Why: a partial refresh or a streaming micro-batch MERGEs the rows of a few hundred groups
    (users) scattered over the whole key range. Copy-on-write rewrites every file that holds
    one of them, so in a table of a few large files every such MERGE rewrites all of it
    (Book-Crossing's 1.6M recommendation rows, ~7.5 s a batch). In files that each hold a
    narrow range of the clustering columns, the MERGE finds the few files that can hold its
    groups from their min/max statistics and rewrites only those, each in place of itself, so
    the layout survives the MERGE."""

    columns: tuple[str, ...]
    file_rows: int

    def __post_init__(self) -> None:
        if not self.columns or self.file_rows <= 0:
            raise ValueError(f"a clustering needs columns and a positive file size, got {self}")

    @contextmanager
    def arranged(self, df: DataFrame) -> Iterator[DataFrame]:
        """``df`` range-partitioned and sorted by the clustering columns: every Spark task
        writes a disjoint range, in order, so its files (cut at ``file_rows``) hold disjoint
        ranges. The range partitioner samples its input in a job of its own, so ``df`` is
        cached meanwhile: its rows (scored lists, say) are computed once."""
        cached = df.persist(StorageLevel.MEMORY_AND_DISK)
        try:
            parts = max(1, df.sparkSession.sparkContext.defaultParallelism)
            cols = list(self.columns)
            yield cached.repartitionByRange(parts, *cols).sortWithinPartitions(*cols)
        finally:
            cached.unpersist()


class LakeError(RuntimeError):
    """A table operation that cannot be done; the message names the table."""


class SchemaMismatchError(LakeError):
    pass


class ConcurrentWriteError(LakeError):
    """Another writer committed a conflicting change after this write read the table.

    Delta's optimistic concurrency: a write is planned on the version it read and may only
    commit on top of that version, or on later ones that changed no data it depends on."""

    def __init__(self, table: str, read_version: int, latest: int, detail: str = "") -> None:
        seen = "no table" if read_version == NO_TABLE else f"version {read_version}"
        super().__init__(f"table {table!r}: another writer committed up to version {latest} after this "
                         f"write read {seen}, changing data it depends on{detail}; nothing of this "
                         f"write was committed (rerun it)")
        self.table, self.read_version, self.latest = table, read_version, latest


@dataclass
class CommitResult:
    table: str
    version: int
    rows_written: int = 0
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    deleted: int = 0


@dataclass
class RunContext:
    """Who is writing: stored in every commit so a table's history explains itself."""

    stage: str = "adhoc"
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    extra: dict[str, str] = field(default_factory=dict)
    # (app id, version): an application transaction recorded with the commit (Delta's txn
    # action), so a replayed streaming micro-batch can tell that it already committed.
    txn: tuple[str, int] | None = None

    def metadata(self, operation: str) -> dict[str, str]:
        meta = {"sparkrec.run_id": self.run_id, "sparkrec.stage": self.stage,
                "sparkrec.operation": operation, **self.extra}
        if self.txn:
            meta.update({"sparkrec.txn_app_id": self.txn[0], "sparkrec.txn_version": str(self.txn[1])})
        return meta


SMALL_SOURCE_ROWS = 200_000  # MERGE sources up to this size narrow the target by a broadcast semi-join


@dataclass
class MergePlan:
    """A MERGE counted before it commits: the new or changed source rows, the keys to delete
    (``replace_within``), and the counts the commit records."""

    changed: DataFrame
    stale: DataFrame | None
    counts: dict[str, int]

    @property
    def rewrites(self) -> bool:
        """Whether existing rows change (updated or deleted), not only new ones arrive."""
        return bool(self.counts["updated"] or self.counts["deleted"])

    @property
    def n_changed(self) -> int:
        return self.counts["inserted"] + self.counts["updated"]


def row_hash(df: DataFrame, keys: list[str]) -> DataFrame:
    """Adds a 64-bit hash of every non-key column, so changed rows can be found by a join.

    ``to_json`` first, because Spark refuses to hash or compare map columns directly.
    """
    payload = [c for c in df.columns if c not in keys and c != ROW_HASH]
    value = F.to_json(F.struct(*[F.col(c) for c in payload])) if payload else F.lit("")
    return df.withColumn(ROW_HASH, F.xxhash64(value))


def check_schema(table: str, expected: T.StructType, got: T.StructType) -> None:
    """Delta via delta-rs casts silently; we refuse anything but the table's own columns and types."""
    want = {f.name: f.dataType for f in expected.fields}
    have = {f.name: f.dataType for f in got.fields}
    missing = [n for n in want if n not in have]
    extra = [n for n in have if n not in want]
    if missing or extra:
        raise SchemaMismatchError(
            f"table {table!r}: columns differ; missing {missing}, unexpected {extra}")
    for name, dtype in want.items():
        if not _same_type(dtype, have[name]):
            raise SchemaMismatchError(
                f"table {table!r}: column {name!r} has type {have[name].simpleString()}, "
                f"the table has {dtype.simpleString()}")


def _same_type(a: T.DataType, b: T.DataType) -> bool:
    """Types equal up to nullability (which Spark loses freely across operations)."""
    if isinstance(a, T.StructType) and isinstance(b, T.StructType):
        return [f.name for f in a.fields] == [f.name for f in b.fields] and all(
            _same_type(x.dataType, y.dataType) for x, y in zip(a.fields, b.fields, strict=True))
    if isinstance(a, T.ArrayType) and isinstance(b, T.ArrayType):
        return _same_type(a.elementType, b.elementType)
    if isinstance(a, T.MapType) and isinstance(b, T.MapType):
        return _same_type(a.keyType, b.keyType) and _same_type(a.valueType, b.valueType)
    return a == b


def conform(table: str, data: pa.Table, schema: pa.Schema) -> pa.Table:
    """``data`` as ``table``'s columns, in its order and types: a column it lacks is an error
    naming both, not a file of the wrong shape in the table."""
    missing = [name for name in schema.names if name not in data.column_names]
    if missing:
        raise SchemaMismatchError(f"table {table!r}: rows to write lack column(s) {missing}; "
                                  f"they have {data.column_names}")
    return data.select(schema.names).cast(schema)


def check_unique_keys(table: str, df: DataFrame, keys: list[str]) -> None:
    dup = df.groupBy(*keys).count().filter(F.col("count") > 1).limit(1).collect()
    if dup:
        raise duplicate_key_error(table, {k: dup[0][k] for k in keys}, dup[0]["count"])


def duplicate_key_error(table: str, key: dict[str, Any], rows: int) -> LakeError:
    """What both MERGE planners (Spark's, the driver's) say of a source with a repeated key."""
    return LakeError(f"MERGE into {table!r}: the source has {rows} rows for key {key}; a MERGE source "
                     f"must have one row per key")


def check_replace_within(within: list[str], keys: list[str]) -> None:
    if not set(within) <= set(keys):
        raise LakeError(f"replace_within {within} must be columns of the MERGE keys {keys}")


class Lake(abc.ABC):
    """Table store over Delta. Table names are short (``interactions``); the lake maps them
    to a path under its root or to ``catalog.namespace.table``."""

    engine: str

    commit_retries = 5  # whole-write retries after a conflicting concurrent commit

    def __init__(self, spark: SparkSession, root: str, namespace: str,
                 catalog: str | None = None, context: RunContext | None = None) -> None:
        self.spark = spark
        self.root = root.rstrip("/")
        self.namespace = namespace
        self.catalog = catalog
        self.context = context or RunContext()

    def with_context(self, context: RunContext) -> Lake:
        clone = self.__class__.__new__(self.__class__)
        clone.__dict__.update(self.__dict__)
        clone.context = context
        return clone

    # -- locations -----------------------------------------------------------------------
    @abc.abstractmethod
    def location(self, table: str) -> str:
        """Where the table lives: a path/URI, or a metastore name."""

    # -- reads -----------------------------------------------------------------------------
    @abc.abstractmethod
    def exists(self, table: str) -> bool: ...

    @abc.abstractmethod
    def read(self, table: str, version: int | None = None) -> DataFrame: ...

    @abc.abstractmethod
    def version(self, table: str) -> int: ...

    @abc.abstractmethod
    def history(self, table: str, limit: int | None = None) -> list[dict[str, Any]]:
        """Newest first: version, timestamp, operation, and the sparkrec run metadata; ``limit``:
        only the newest that many commits."""

    def last_write(self, table: str) -> dict[str, Any] | None:
        """The newest commit that changed rows (a vacuum's commits are skipped), or None: whose
        run the table's current contents come from."""
        return next((h for h in self.history(table) if h.get("sparkrec.operation") in DATA_OPERATIONS), None)

    def transaction_version(self, table: str, app_id: str) -> int | None:
        """The latest version ``app_id`` committed to ``table`` with :attr:`RunContext.txn`
        (None: none, or no table)."""
        raise LakeError(f"{self.engine}: application transactions are not supported (table {table!r})")

    # -- maintenance -----------------------------------------------------------------------
    @abc.abstractmethod
    def tables(self) -> list[str]:
        """Every table of this namespace, including folders a killed first write left behind."""

    @abc.abstractmethod
    def vacuum(self, table: str, retention_hours: int) -> list[str]:
        """Deletes the table's files that no version newer than ``retention_hours`` references
        (and orphans of crashed writes older than that); returns what it deleted."""

    @abc.abstractmethod
    def compact(self, table: str, min_files: int, clustering: Clustering | None = None) -> int:
        """Delta's OPTIMIZE when the table has at least ``min_files`` files: small files
        rewritten into fewer in one commit that changes no rows (``dataChange=false``), then a
        log checkpoint. Returns the files removed (0: nothing done). Why: a stream's MERGEs add
        a small file per batch, and a table of many small files costs every later read more.
        A ``clustering`` table keeps its layout: only its small files are merged, in order."""

    # -- writes ----------------------------------------------------------------------------
    @abc.abstractmethod
    def overwrite(self, table: str, df: DataFrame, clustering: Clustering | None = None) -> CommitResult:
        """Atomically replace the table's contents (and schema) with ``df``; laid out by
        ``clustering`` when given."""

    @abc.abstractmethod
    def append(self, table: str, df: DataFrame) -> CommitResult: ...

    @abc.abstractmethod
    def upsert(self, table: str, df: DataFrame, keys: list[str],
               replace_within: list[str] | None = None, read_version: int | None = None) -> CommitResult:
        """MERGE by ``keys``: new keys inserted, rows whose other columns changed updated,
        identical rows left alone. Creates the table when it does not exist.

        ``replace_within`` (a prefix of ``keys``, e.g. the user id of (user id, rank)) makes the
        source the whole truth for each group it mentions: the table's rows of those groups whose
        key is absent from the source are deleted in the same commit, so a user whose list got
        shorter keeps no stale ranks.

        A concurrent writer's conflicting commit makes the MERGE start over on the new version
        (at most ``commit_retries`` times). ``read_version`` says ``df`` itself was computed from
        the table at that version (``NO_TABLE``: from its absence): then nothing is retried here
        and a conflict raises :class:`ConcurrentWriteError`, for the caller to recompute ``df``
        (see :meth:`transact`)."""

    def columns(self, table: str) -> list[str]:
        return self.read(table).columns

    # -- rows the driver holds (a streaming micro-batch's): through Spark unless an engine
    # -- can do without it (delta-rs does, see DeltaRsLake)
    def read_arrow(self, table: str, columns: list[str] | None = None,
                   where: dict[str, Sequence[Any]] | None = None, version: int | None = None) -> pa.Table:
        """The rows whose every ``where`` column takes one of its values, as Arrow here."""
        from ..arrowframes import collect_arrow

        df = self.read(table, version)
        for col, values in (where or {}).items():
            df = df.filter(F.col(col).isin(list(values)))
        return collect_arrow(df.select(*(columns or df.columns)))

    def upsert_arrow(self, table: str, source: pa.Table, keys: list[str], replace_within: list[str] | None = None,
                     read_version: int | None = None, schema: T.StructType | None = None) -> CommitResult:
        """:meth:`upsert` of Arrow rows; ``schema``: the table's, needed when it does not exist."""
        from ..arrowframes import to_dataframe

        schema = self.read(table).schema if self.exists(table) else schema
        if schema is None:
            raise LakeError(f"table {table!r} does not exist: upsert_arrow needs its schema")
        return self.upsert(table, to_dataframe(self.spark, source, schema), keys, replace_within, read_version)

    def append_arrow(self, table: str, data: pa.Table, schema: T.StructType) -> CommitResult:
        from ..arrowframes import to_dataframe

        return self.append(table, to_dataframe(self.spark, data, schema))

    def transact(self, table: str, write: Callable[[int], CommitResult]) -> CommitResult:
        """Runs ``write(read_version)`` on the table's current version until it commits without
        a conflict: for writes whose rows depend on the table itself (dense index ids)."""
        error: ConcurrentWriteError | None = None
        for _ in range(self.commit_retries + 1):
            read_version = self.version(table) if self.exists(table) else NO_TABLE
            try:
                return write(read_version)
            except ConcurrentWriteError as exc:
                error = exc
        assert error is not None
        raise LakeError(f"{error} (gave up after {self.commit_retries + 1} attempts)") from error

    def read_or_empty(self, table: str, schema: T.StructType) -> DataFrame:
        if self.exists(table):
            return self.read(table)
        return self.spark.createDataFrame([], schema)

    def count_changes(self, table: str, df: DataFrame, keys: list[str], version: int | None = None,
                      source_rows: int | None = None) -> tuple[DataFrame, int, int]:
        """Rows of ``df`` that are new or differ from the table (at ``version``, the one the
        write was planned on), and how many of those update an existing key. Shared by both
        engines so their reported counts agree.

        A small source (``source_rows`` up to :data:`SMALL_SOURCE_ROWS`: a streaming batch, a
        partial refresh) first narrows the table to its keys through a broadcast semi-join, so
        only the matching rows are hashed and shuffled, not the whole table on every MERGE.
        Rows whose keys hold a null match nothing either way (the joins are equalities)."""
        existing = self.read(table, version)
        if source_rows is not None and source_rows <= SMALL_SOURCE_ROWS:
            existing = existing.join(F.broadcast(df.select(*keys).distinct()), on=keys, how="left_semi")
        target = row_hash(existing, keys).select(*keys, ROW_HASH)
        source = row_hash(df, keys)
        changed = source.join(target, on=[*keys, ROW_HASH], how="left_anti")
        flagged = changed.join(target.select(*keys).withColumn("__exists", F.lit(True)),
                               on=keys, how="left")
        counts = flagged.agg(F.count(F.lit(1)).alias("n"),
                             F.count("__exists").alias("updated")).collect()[0]
        return changed.drop(ROW_HASH), int(counts["n"]), int(counts["updated"])

    @contextmanager
    def merge_plan(self, table: str, df: DataFrame, keys: list[str], schema: T.StructType,
                   replace_within: list[str] | None, version: int | None = None) -> Iterator[MergePlan]:
        """What a MERGE of ``df`` into the table (at ``version``) will do, counted before it
        runs, with the source and the stale keys cached for the engine's own commit and
        released after it. Shared by both engines, so their counts mean the same."""
        df = df.select(*schema.names).persist()
        stale: DataFrame | None = None
        try:
            check_unique_keys(table, df, keys)
            total = df.count()
            changed, n_changed, n_updated = self.count_changes(table, df, keys, version, total)
            if replace_within:
                stale = self.stale_keys(table, df, keys, replace_within, version,
                                        total <= SMALL_SOURCE_ROWS).persist()
            n_deleted = stale.count() if stale is not None else 0
            counts = {"inserted": n_changed - n_updated, "updated": n_updated,
                      "unchanged": total - n_changed, "deleted": n_deleted}
            yield MergePlan(changed, stale, counts)
        finally:
            df.unpersist()
            if stale is not None:
                stale.unpersist()

    def stale_keys(self, table: str, df: DataFrame, keys: list[str], within: list[str],
                   version: int | None = None, small: bool = False) -> DataFrame:
        """Keys of the table's rows in the groups ``df`` mentions that ``df`` no longer has
        (``small``: ``df`` is small enough to broadcast, as in :meth:`count_changes`)."""
        check_replace_within(within, keys)
        groups, mine = df.select(*within).distinct(), df.select(*keys)
        if small:
            groups, mine = F.broadcast(groups), F.broadcast(mine)
        return (self.read(table, version).select(*keys)
                .join(groups, on=within, how="left_semi")
                .join(mine, on=keys, how="left_anti"))
