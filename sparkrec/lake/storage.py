"""Where the delta-rs engine's bytes live: local paths or object storage, one way to reach both.

Why this module: the embedded engine touches a table's storage from three places (delta-rs on
the driver for the log, pyarrow on the executors for parquet files, and Spark for reads), and
they disagree about URIs. Hadoop's ``s3a://`` (what Spark clusters use) is unknown to delta-rs
and to pyarrow 14, which also rejects ``abfss://``; Spark itself cannot open ``s3://`` without
the hadoop-aws jars. So remote tables are reached through delta-rs' own object store on both
sides (:class:`deltalake.fs.DeltaStorageHandler` wrapped as a pyarrow filesystem): one URI
scheme, one set of ``storage_options`` (delta-rs keys such as ``AWS_ENDPOINT_URL``), whatever
the cloud. Local tables keep pyarrow's native filesystem and Spark's own parquet reader.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from functools import partial

import pyarrow as pa
import pyarrow.parquet as pq
from pyarrow import fs as pafs
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import types as T

# Hadoop connector schemes -> the scheme delta-rs (object_store) understands.
_SCHEME_ALIASES = {"s3a": "s3", "s3n": "s3"}
# Environment variables delta-rs reads for each store; copied into the options on the driver so
# executors on other machines (whose environment may lack them) reach the same store.
_ENV_PREFIXES = {"s3": ("AWS_",), "gs": ("GOOGLE_",), "az": ("AZURE_",), "abfs": ("AZURE_",),
                 "abfss": ("AZURE_",), "adl": ("AZURE_",), "azure": ("AZURE_",)}


def scheme(uri: str) -> str:
    """The URI's scheme (``s3``, ``abfss``...), or ``""`` for a local path."""
    head, sep, _ = uri.partition("://")
    return head.lower() if sep else ""


def is_remote(uri: str) -> bool:
    return scheme(uri) not in ("", "file")


def delta_uri(root: str) -> str:
    """``root`` as delta-rs and the executors address it: ``s3a://b/x`` -> ``s3://b/x``, a local
    path (or ``file:`` URI) -> an absolute path."""
    kind = scheme(root)
    if kind in _SCHEME_ALIASES:
        return f"{_SCHEME_ALIASES[kind]}://{root.partition('://')[2]}"
    if root.startswith("file:"):
        root = root.removeprefix("file://").removeprefix("file:")
    if not is_remote(root):
        return os.path.abspath(root)
    return root


def storage_options(uri: str, configured: Mapping[str, str] | None = None,
                    environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The store's credentials and endpoint: the driver's matching environment variables
    (``AWS_*`` for S3, ``AZURE_*``, ``GOOGLE_*``) overlaid by ``lake.storage_options``.
    Local paths need none."""
    if not is_remote(uri):
        return dict(configured or {})
    env = os.environ if environ is None else environ
    prefixes = _ENV_PREFIXES.get(scheme(delta_uri(uri)), ())
    options = {k: v for k, v in env.items() if k.startswith(prefixes)} if prefixes else {}
    options.update(configured or {})
    return options


def table_filesystem(table_uri: str, options: Mapping[str, str], create: bool = False) -> pafs.FileSystem:
    """A pyarrow filesystem rooted at the table, so file names are the table-relative paths
    Delta's log records. Runs on executors; ``create`` makes a local table's folder (object
    stores have no folders)."""
    if not is_remote(table_uri):
        local = pafs.LocalFileSystem()
        if create:
            local.create_dir(table_uri, recursive=True)
        return pafs.SubTreeFileSystem(table_uri, local)
    from deltalake.fs import DeltaStorageHandler

    return pafs.PyFileSystem(DeltaStorageHandler(table_uri, dict(options)))


def _read_files(table_uri: str, options: Mapping[str, str], schema: pa.Schema, file_column: str | None,
                paths: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """Runs in each Spark task: streams the rows of the given table-relative parquet files,
    cast to the table's Spark types (column order and timezone included)."""
    filesystem = table_filesystem(table_uri, options)
    names = [f.name for f in schema if f.name != file_column]
    data_schema = pa.schema([schema.field(n) for n in names])
    for batch in paths:
        for rel in batch.column("path").to_pylist():
            with filesystem.open_input_file(rel) as fh:
                for part in pq.ParquetFile(fh).iter_batches(columns=names):
                    table = pa.Table.from_batches([part]).select(names).cast(data_schema)
                    if file_column:
                        table = table.append_column(file_column, pa.array([f"{table_uri}/{rel}"] * table.num_rows,
                                                                          pa.string()))
                    yield from table.to_batches()


def read_remote_files(spark: SparkSession, table_uri: str, options: Mapping[str, str], files: list[str],
                      schema: T.StructType, file_column: str | None = None) -> DataFrame:
    """The rows of a remote table's parquet ``files`` (table-relative paths) as a DataFrame,
    read on the executors (one task per file) through delta-rs' object store: Spark's own
    reader would need the hadoop-aws / hadoop-azure jars. ``file_column`` adds each row's file URI
    (what ``_metadata.file_path`` gives for local reads)."""
    from pyspark.sql.pandas.types import to_arrow_schema

    if file_column:
        schema = T.StructType([*schema.fields, T.StructField(file_column, T.StringType())])
    listing = spark.createDataFrame([(f,) for f in files], "path string").repartition(max(1, len(files)))
    fn = partial(_read_files, table_uri, dict(options), to_arrow_schema(schema), file_column)
    return listing.mapInArrow(fn, schema)
