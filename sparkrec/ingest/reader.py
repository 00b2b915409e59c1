"""Distributed readers that keep each record's file and line, so a rejected row can be found.

Spark's CSV reader drops malformed rows' positions and can't say which line they came from.
We read each line whole (a CSV read with a separator and quote that never occur), number
lines per file with a window over the file's blocks, and parse the line with ``from_csv``
using the real separator, quote and escape. A line with more fields than the header is
caught by an extra sentinel column. Line numbers count the file's non-blank lines, which is
the physical line number for any file without blank lines (Spark's line reader skips them).

Parquet inputs carry the row offset inside their file instead of a line number.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from ..config import CsvOptions

# EXTRA holds why a line is malformed (null when it parsed cleanly).
FILE, LINE, RAW, EXTRA = "_source_file", "_source_line", "_raw", "_malformed"
_WHOLE_LINE = {"sep": "\u0001", "quote": "", "escape": "", "header": "false",
               "ignoreLeadingWhiteSpace": "false", "ignoreTrailingWhiteSpace": "false",
               "nullValue": "\u0002", "mode": "PERMISSIVE"}


class InputError(ValueError):
    """An input that cannot be read at all (missing file, missing column); names the file."""


@dataclass(frozen=True)
class RawInput:
    """Parsed fields (all strings, header names) plus provenance columns FILE, LINE, RAW, EXTRA."""

    df: DataFrame
    columns: list[str]
    path: str


def _header(spark: SparkSession, path: str, opts: CsvOptions) -> list[str]:
    try:
        reader = spark.read.options(sep=opts.sep, quote=opts.quote, escape=opts.escape,
                                    encoding=opts.encoding, header="true", inferSchema="false")
        return [c.strip() for c in reader.csv(path).columns]
    except Exception as exc:
        raise InputError(f"{path}: cannot read the header: {exc}") from exc


def _number_rows(rows: DataFrame) -> DataFrame:
    """Adds LINE (1-based position in its file) to rows carrying FILE, _block and _mid.

    Rows of one (file, block) split are contiguous and in order inside one task, so the
    monotonically increasing id orders them; the sizes of earlier blocks give the offset.
    """
    block_sizes = rows.groupBy(FILE, "_block").agg(F.count(F.lit(1)).alias("_n"))
    offsets = block_sizes.withColumn(
        "_offset",
        F.coalesce(F.sum("_n").over(Window.partitionBy(FILE).orderBy("_block")
                                    .rowsBetween(Window.unboundedPreceding, -1)), F.lit(0)),
    ).drop("_n")
    in_block = Window.partitionBy(FILE, "_block").orderBy("_mid")
    return (rows.join(offsets, on=[FILE, "_block"])
            .withColumn(LINE, (F.col("_offset") + F.row_number().over(in_block)).cast("long"))
            .drop("_block", "_mid", "_offset"))


def _provenance() -> list[Column]:
    return [F.col("_metadata.file_path").alias(FILE), F.col("_metadata.file_block_start").alias("_block"),
            F.monotonically_increasing_id().alias("_mid")]


def _numbered_lines(spark: SparkSession, path: str, opts: CsvOptions) -> DataFrame:
    lines = (spark.read.options(**_WHOLE_LINE, encoding=opts.encoding).schema("value string").csv(path)
             .select(F.col("value").alias(RAW), *_provenance()))
    return _number_rows(lines)


def read_csv(spark: SparkSession, path: str, opts: CsvOptions) -> RawInput:
    if not opts.header:
        raise InputError(f"{path}: CSV inputs need a header row naming their columns")
    columns = _header(spark, path, opts)
    if opts.multiline:
        return _read_csv_multiline(spark, path, opts, columns)
    ddl = ", ".join(f"`{c}` string" for c in [*columns, EXTRA])
    parse_opts = {"sep": opts.sep, "quote": opts.quote, "escape": opts.escape, "mode": "PERMISSIVE"}
    lines = _numbered_lines(spark, path, opts).filter(F.col(LINE) > 1)  # drop each file's header
    parsed = lines.withColumn("_rec", F.from_csv(F.col(RAW), ddl, parse_opts))
    fields = [F.col(f"_rec.`{c}`").alias(c) for c in columns]
    problem = (F.when(_unbalanced_quotes(F.col(RAW), opts),
                      F.lit("unterminated quoted field: a record split across lines? (csv.multiline: true)"))
               .when(F.col(f"_rec.`{EXTRA}`").isNotNull(),
                     F.concat(F.lit("more fields than the header: "), F.col(f"_rec.`{EXTRA}`"))))
    return RawInput(parsed.select(*fields, problem.alias(EXTRA), FILE, LINE, RAW), columns, path)


def _unbalanced_quotes(line: Column, opts: CsvOptions) -> Column:
    """An odd number of (unescaped) quote characters: the line is part of a longer record."""
    if not opts.quote:
        return F.lit(False)
    unescaped = line
    if opts.escape and opts.escape != opts.quote:
        unescaped = F.regexp_replace(line, re.escape(opts.escape) + ".", "")
    quotes = F.length(unescaped) - F.length(F.regexp_replace(unescaped, re.escape(opts.quote), ""))
    return (quotes % 2) == 1


def _read_csv_multiline(spark: SparkSession, path: str, opts: CsvOptions, columns: list[str]) -> RawInput:
    ddl = ", ".join(f"`{c}` string" for c in columns) + f", `{RAW}` string"
    df = (spark.read.options(sep=opts.sep, quote=opts.quote, escape=opts.escape, encoding=opts.encoding,
                             header="true", multiLine="true", mode="PERMISSIVE",
                             columnNameOfCorruptRecord=RAW)
          .schema(ddl).csv(path))
    raw = F.coalesce(F.col(RAW), F.to_json(F.struct(*[F.col(f"`{c}`") for c in columns])))
    df = df.select(*[F.col(f"`{c}`") for c in columns],
                   F.when(F.col(RAW).isNotNull(), F.lit("not parsable as CSV")).alias(EXTRA),
                   F.col("_metadata.file_path").alias(FILE), F.lit(None).cast("long").alias(LINE),
                   raw.alias(RAW))
    return RawInput(df, columns, path)


def read_parquet(spark: SparkSession, path: str) -> RawInput:
    df = spark.read.parquet(path)
    columns = list(df.columns)
    casted = [F.col(f"`{c}`").cast("string").alias(c) for c in columns]
    # Parquet has no lines: the row's 0-based offset inside its file plays that role.
    numbered = _number_rows(df.select(*casted, *_provenance()))
    out = numbered.select(*columns, F.lit(None).cast("string").alias(EXTRA), FILE,
                          (F.col(LINE) - 1).alias(LINE),
                          F.to_json(F.struct(*[F.col(f"`{c}`") for c in columns])).alias(RAW))
    return RawInput(out, columns, path)


def read_input(spark: SparkSession, path: str, fmt: str, opts: CsvOptions) -> RawInput:
    if fmt == "parquet":
        return read_parquet(spark, path)
    return read_csv(spark, path, opts)


def require_columns(raw: RawInput, wanted: dict[str, str | None]) -> None:
    """Every configured source column must exist in the input: a typo fails here, by name."""
    for role, column in wanted.items():
        if column is not None and column not in raw.columns:
            raise InputError(f"{raw.path}: column {column!r} (configured for {role}) not in the input; "
                             f"its columns are {raw.columns}")
