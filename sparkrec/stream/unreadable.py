"""A landed file that cannot be read is quarantined whole; the rest of its batch goes on.

A batch ``ingest`` stops on an unreadable input (the user fixes it and re-runs). A stream
cannot stop: one truncated Parquet file, a file deleted between listing and reading, or a CSV
whose header lacks a configured column would otherwise fail every retry of its micro-batch and
hold up every event behind it. So a batch whose read fails is read again file by file; files
that fail on their own become one quarantine row each (reason ``unreadable_file``, the error
as its value), count as one record read and quarantined, and the readable files are processed
as usual. Only errors that name a file of the batch count: anything else (the lake, Spark
itself) still fails the batch, to be retried.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import TypeVar

from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from ..ingest.job import TableReport, _summarise
from ..ingest.reader import InputError
from ..ingest.validate import Validated, stable_id
from ..logs import get_logger, log_fields

log = get_logger("stream")

REASON = "unreadable_file"
ERROR_CHARS = 500  # the stored error's length: its first line is what names the problem

R = TypeVar("R")


@dataclass(frozen=True)
class Unreadable:
    path: str
    error: str


def names_a_file(exc: BaseException, files: list[str]) -> bool:
    """Whether ``exc`` is about reading one of ``files`` (Spark names the file in its message)."""
    if isinstance(exc, InputError):
        return True
    text = str(exc)
    return any(PurePosixPath(f).name in text for f in files)


def first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return (lines[0] if lines else type(exc).__name__)[:ERROR_CHARS]


def read_what_reads(files: list[str], read: Callable[[list[str]], R], release: Callable[[R], None]
                    ) -> tuple[R | None, list[Unreadable]]:
    """``read(files)``; when it fails on a file, ``read`` of the files that read on their own,
    and the others with their errors. ``read`` must force the read (an action), or a corrupt
    file would only fail later, half-way through the batch's commits; ``release`` frees what a
    one-file probe read."""
    try:
        return read(files), []
    except Exception as exc:
        if not names_a_file(exc, files):
            raise
    readable: list[str] = []
    unreadable: list[Unreadable] = []
    for path in files:
        try:
            release(read([path]))
            readable.append(path)
        except Exception as exc:
            if not names_a_file(exc, [path]):
                raise
            unreadable.append(Unreadable(path, first_line(exc)))
            log_fields(log, "unreadable file quarantined", file=path, error=first_line(exc))
    return (read(readable) if readable else None), unreadable


def quarantine_rows(spark: SparkSession, unreadable: list[Unreadable], table: str) -> DataFrame:
    """One quarantine row per file, keyed like every other quarantine row (table, file,
    record, reason), so a replayed batch adds no copy."""
    files = spark.createDataFrame([(u.path, u.error) for u in unreadable], "source_file string, value string")
    return files.select(
        stable_id(F.lit(table), F.col("source_file"), F.lit(None), F.lit(REASON), F.lit(1)).alias("record_id"),
        F.lit(table).alias("target_table"), "source_file", F.lit(None).cast("long").alias("source_line"),
        F.lit(REASON).alias("reason"), F.lit("file").alias("field"), "value",
        F.lit(None).cast("string").alias("raw"))


def persisted(v: Validated, source: str) -> tuple[Validated, TableReport]:
    """``v`` with its rows persisted (the MERGE and the quarantine read them again) and
    counted; a failed count leaves nothing persisted behind (``read_what_reads`` retries)."""
    v.rows = v.rows.persist(StorageLevel.MEMORY_AND_DISK_DESER)  # as the ingest stage does
    try:
        return v, _summarise(v, source)
    except Exception:
        v.rows.unpersist()
        raise


def read_counted(files: list[str], table: str, read: Callable[[list[str]], tuple[Validated, TableReport]]
                 ) -> tuple[Validated | None, TableReport, list[Unreadable]]:
    """:func:`read_what_reads` of validated files, with each unreadable file counted as one
    record read and quarantined (reason ``unreadable_file``) in the table's counts."""
    read_ok, unreadable = read_what_reads(files, read, lambda done: done[0].rows.unpersist())
    v, counts = read_ok if read_ok else (None, TableReport(table, f"{len(files)} files", 0, 0, 0))
    if unreadable:
        counts.read += len(unreadable)
        counts.quarantined += len(unreadable)
        counts.reasons = {**counts.reasons, REASON: len(unreadable)}
    return v, counts, unreadable
