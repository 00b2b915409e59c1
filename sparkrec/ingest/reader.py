"""Distributed readers that keep each record's file and line, so a rejected row can be found.

Spark's CSV reader drops malformed rows' positions and can't say which line they came from,
and it decodes bytes before we see them (invalid bytes become U+FFFD, so "Zo\xeb" and
"Zo\xe9" read as UTF-8 would both be "Zo\ufffd"). We read each line whole as bytes (Spark's
text reader keeps them as they are), number lines per file from the sizes of the file's
blocks, decode them with the source's declared encoding (a line whose bytes do not survive a
decode/encode round trip is ``invalid_encoding`` and keeps its bytes, base64), and parse the
line with ``from_csv`` using the real separator, quote and escape. A sentinel field appended
to every line lands in an extra column exactly when the line has as many fields as the
header, so fewer and more fields are both caught (``wrong_field_count``). Line numbers are
physical: blank lines are skipped, as Spark's CSV reader does, but counted (the header is a
file's first non-blank line).

Parquet inputs carry the row offset inside their file instead of a line number; their
native timestamp and date columns are kept as ISO-8601 instants (see TIMESTAMP_PATTERN).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlparse

from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from ..config import CsvOptions

# PROBLEM holds a record-level reason (invalid_encoding, wrong_field_count, malformed_record)
# and EXTRA the detail; both null when the record parsed cleanly. FILE_TIME is the file's
# modification time (ingest.conflicts: last_by_file_time).
FILE, LINE, RAW, EXTRA = "_source_file", "_source_line", "_raw", "_malformed"
PROBLEM, FILE_TIME = "_problem", "_file_time"
FIRST_KEPT = "_first_kept_line"  # see _number_rows
CARRIED = [PROBLEM, EXTRA, FILE, FILE_TIME, LINE, RAW]  # what every validator keeps beside its fields
_SENTINEL = "\u0003"
# How native Parquet timestamps are handed to the validators: an instant with its offset.
TIMESTAMP_PATTERN = "yyyy-MM-dd'T'HH:mm:ss.SSSSSSXXX"


class InputError(ValueError):
    """An input that cannot be read at all (missing file, missing column); names the file."""


@dataclass(frozen=True)
class RawInput:
    """Parsed fields (all strings, header names) plus the CARRIED provenance columns.

    ``timestamp_columns`` are the input's native timestamp / date columns, rendered as
    TIMESTAMP_PATTERN strings rather than in the source's configured ``timestamp_format``."""

    df: DataFrame
    columns: list[str]
    path: str
    timestamp_columns: frozenset[str] = frozenset()


def _header(spark: SparkSession, path: str | list[str], opts: CsvOptions) -> list[str]:
    plain = _plain_local_header(path, opts)
    if plain is not None:
        return plain
    try:
        reader = spark.read.options(sep=opts.sep, quote=opts.quote, escape=opts.escape,
                                    encoding=opts.encoding, header="true", inferSchema="false")
        return [c.strip() for c in reader.csv(path).columns]
    except Exception as exc:
        raise InputError(f"{path}: cannot read the header: {exc}") from exc


def _plain_local_header(path: str | list[str], opts: CsvOptions) -> list[str] | None:
    """The header read here, without a Spark job (a streaming micro-batch's files are small and
    many), when every file is local and starts with the same plain line: no quote or escape
    character, no byte-order mark, distinct non-empty names. None: Spark parses it."""
    names: set[tuple[str, ...]] = set()
    for p in [path] if isinstance(path, str) else path:
        local = urlparse(p).path if p.startswith("file:") else p
        if "://" in local or not os.path.isfile(local):
            return None
        with open(local, "rb") as f:
            first = f.readline()
        try:
            line = first.decode(opts.encoding).rstrip("\r\n")
        except (UnicodeDecodeError, LookupError):
            return None
        if not line.strip() or line.startswith("\ufeff") or opts.quote in line or (opts.escape and opts.escape in line):
            return None
        cols = tuple(c.strip() for c in line.split(opts.sep))
        if "" in cols or len(set(cols)) != len(cols):
            return None
        names.add(cols)
    return list(names.pop()) if len(names) == 1 else None


def _number_rows(rows: DataFrame, small_files: bool = False, kept: Column | None = None) -> DataFrame:
    """Adds LINE (1-based position in its file) to rows carrying FILE, _block and _mid, and,
    with ``kept`` (a row condition, e.g. non-blank), FIRST_KEPT: each file's first such line.

    Rows of one (file, block) split are contiguous and in order inside one task, and the
    monotonically increasing id counts every row of a task, so a row's place in its block is
    its id minus the block's first id; the sizes of earlier blocks give the offset. That needs
    one small aggregate per block, broadcast back: no shuffle or sort of the rows themselves
    (the shuffle and sort this replaced took 4.8 s on Book-Crossing's ratings, reading their
    lines 0.9 s: measured).
    ``small_files``: each file is numbered by one window in one task, without the aggregate
    and its join (a micro-batch's few small files: ~0.3 s of validating 100 events in ~0.95 s,
    measured), but a whole file on one core.
    """
    if small_files:
        in_file = Window.partitionBy(FILE)
        numbered = rows.withColumn(LINE, F.row_number().over(in_file.orderBy("_block", "_mid")).cast("long"))
        if kept is not None:
            numbered = numbered.withColumn(FIRST_KEPT, F.min(F.when(kept, F.col(LINE))).over(in_file))
        return numbered.drop("_block", "_mid")
    per_block = [F.count(F.lit(1)).alias("_n"), F.min("_mid").alias("_first")]
    if kept is not None:
        per_block.append(F.min(F.when(kept, F.col("_mid"))).alias("_first_kept"))
    blocks = rows.groupBy(FILE, "_block").agg(*per_block)
    offset = F.coalesce(F.sum("_n").over(Window.partitionBy(FILE).orderBy("_block")
                                         .rowsBetween(Window.unboundedPreceding, -1)), F.lit(0))
    blocks = blocks.withColumn("_offset", offset - F.col("_first") + 1)  # LINE = _offset + _mid
    if kept is not None:
        blocks = blocks.withColumn(FIRST_KEPT, F.min(F.col("_offset") + F.col("_first_kept"))
                                   .over(Window.partitionBy(FILE)))
    numbered = rows.join(F.broadcast(blocks.drop("_n", "_first", "_first_kept")), on=[FILE, "_block"])
    return numbered.withColumn(LINE, (F.col("_offset") + F.col("_mid")).cast("long")).drop("_block", "_mid", "_offset")


def _provenance() -> list[Column]:
    return [F.col("_metadata.file_path").alias(FILE), F.col("_metadata.file_modification_time").alias(FILE_TIME),
            F.col("_metadata.file_block_start").alias("_block"), F.monotonically_increasing_id().alias("_mid")]


def check_encoding(spark: SparkSession, path: str, encoding: str) -> None:
    """Spark (Java) decodes, so Java must know the charset; and lines are split on newline
    bytes before decoding, so the encoding must keep ASCII as it is."""
    jvm = spark.sparkContext._jvm
    assert jvm is not None
    try:
        known = bool(jvm.java.nio.charset.Charset.isSupported(encoding))
    except Exception:  # Java rejects some names outright (IllegalCharsetNameException)
        known = False
    if not known:
        raise InputError(f"{path}: unknown encoding {encoding!r} (csv.encoding)")
    encoded = jvm.java.nio.charset.Charset.forName(encoding).encode("a,\n")
    if bytes(jvm.java.util.Arrays.copyOf(encoded.array(), encoded.limit())) != b"a,\n":
        raise InputError(f"{path}: encoding {encoding!r} is not ASCII-compatible; line-numbered reading "
                         "needs one (UTF-8, ISO-8859-1, windows-1252, ...) or csv.multiline: true")


def _numbered_lines(spark: SparkSession, path: str, opts: CsvOptions, small_files: bool) -> DataFrame:
    """Non-blank lines decoded with ``opts.encoding``, numbered as the file's physical lines,
    without each file's first non-blank one (its header); ``_invalid`` marks those whose bytes
    are not valid in it, and their RAW keeps the bytes as ``base64:...``."""
    check_encoding(spark, path, opts.encoding)
    raw_bytes = F.col("value").cast("binary")
    text = F.decode(raw_bytes, opts.encoding)
    invalid = F.encode(text, opts.encoding) != raw_bytes  # the bytes do not survive a round trip
    lines = (spark.read.text(path)
             .select(text.alias("_text"), invalid.alias("_invalid"),
                     F.when(invalid, F.concat(F.lit("base64:"), F.base64(raw_bytes))).otherwise(text).alias(RAW),
                     *_provenance()))
    non_blank = F.trim(F.col("_text")) != ""
    numbered = _number_rows(lines, small_files, kept=non_blank)
    return numbered.filter(non_blank & (F.col(LINE) > F.col(FIRST_KEPT))).drop(FIRST_KEPT)


def read_csv(spark: SparkSession, path: str, opts: CsvOptions, small_files: bool = False) -> RawInput:
    if not opts.header:
        raise InputError(f"{path}: CSV inputs need a header row naming their columns")
    columns = _header(spark, path, opts)
    if opts.multiline:
        return _read_csv_multiline(spark, path, opts, columns)
    ddl = ", ".join(f"`{c}` string" for c in [*columns, EXTRA])
    parse_opts = {"sep": opts.sep, "quote": opts.quote, "escape": opts.escape, "mode": "PERMISSIVE"}
    lines = _numbered_lines(spark, path, opts, small_files)
    # The sentinel is the (n+1)th field exactly when the line has the header's n fields.
    with_sentinel = F.concat(F.col("_text"), F.lit(opts.sep + _SENTINEL))
    parsed = lines.withColumn("_rec", F.from_csv(with_sentinel, ddl, parse_opts))
    fields = [F.col(f"_rec.`{c}`").alias(c) for c in columns]
    extra = F.col(f"_rec.`{EXTRA}`")
    n_fields = F.array_position(F.array(*[F.col(f"_rec.`{c}`") for c in columns]), _SENTINEL) - 1
    checks = [
        (F.col("_invalid"), "invalid_encoding", F.lit(f"bytes not valid in {opts.encoding}")),
        (_unbalanced_quotes(F.col("_text"), opts), "malformed_record",
         F.lit("unterminated quoted field: a record split across lines? (csv.multiline: true)")),
        (extra.isNull(), "wrong_field_count",
         F.concat(n_fields.cast("string"), F.lit(f" fields, the header has {len(columns)}"))),
        (extra != _SENTINEL, "wrong_field_count", F.lit(f"more than the header's {len(columns)} fields")),
    ]
    judged = first_failing(parsed, [c[0] for c in checks],
                           {PROBLEM: [F.lit(c[1]) for c in checks], EXTRA: [c[2] for c in checks]})
    out = judged.select(*fields, PROBLEM, EXTRA, FILE, FILE_TIME, LINE, RAW)
    return RawInput(out, columns, path)


def first_failing(df: DataFrame, failed: Sequence[Column], outputs: dict[str, Sequence[Column]]) -> DataFrame:
    """Adds each ``outputs`` column: its value for the first check in ``failed`` that holds
    (null where none does). Each check is evaluated once, into the index of the first that
    fails, and the outputs are looked up from it: written as one chain of the checks per
    output, Spark generated code too large to compile and evaluated every row interpreted
    (9 of 18 s of CPU validating Book-Crossing's ratings, measured)."""
    index = F.coalesce(*[F.when(F.coalesce(f, F.lit(False)), F.lit(i)) for i, f in enumerate(failed)])
    df = df.withColumn(_FIRST_FAILED, index if failed else F.lit(None).cast("int"))

    def pick(values: Sequence[Column]) -> Column:
        picked: Column = F.lit(None).cast("string")
        for i, value in reversed(list(enumerate(values))):
            picked = F.when(F.col(_FIRST_FAILED) == i, value.cast("string")).otherwise(picked)
        return picked

    return df.withColumns({name: pick(values) for name, values in outputs.items()}).drop(_FIRST_FAILED)


_FIRST_FAILED = "_first_failed_check"


def _unbalanced_quotes(line: Column, opts: CsvOptions) -> Column:
    """An odd number of (unescaped) quote characters: the line is part of a longer record.
    Counted as the bytes a literal replacement removes; the escapes' regular expression runs
    only on lines holding one (a regular expression or ``translate`` on every line took 1.6 of
    3.8 s of CPU reading Book-Crossing's ratings, every field of which is quoted; this, 0.1 s)."""
    if not opts.quote:
        return F.lit(False)
    unescaped = line
    if opts.escape and opts.escape != opts.quote:
        unescaped = F.when(F.instr(line, opts.escape) > 0,
                           F.regexp_replace(line, re.escape(opts.escape) + ".", "")).otherwise(line)
    removed = F.octet_length(unescaped) - F.octet_length(F.replace(unescaped, F.lit(opts.quote), F.lit("")))
    return ((removed / len(opts.quote.encode("utf-8"))) % 2) == 1


def _read_csv_multiline(spark: SparkSession, path: str, opts: CsvOptions, columns: list[str]) -> RawInput:
    """Spark's multiLine reader: a record whose field count differs from the header is a
    corrupt record; bytes are decoded by Spark, so invalid ones cannot be told apart."""
    ddl = ", ".join(f"`{c}` string" for c in columns) + f", `{RAW}` string"
    df = (spark.read.options(sep=opts.sep, quote=opts.quote, escape=opts.escape, encoding=opts.encoding,
                             header="true", multiLine="true", mode="PERMISSIVE",
                             columnNameOfCorruptRecord=RAW)
          .schema(ddl).csv(path))
    raw = F.coalesce(F.col(RAW), F.to_json(F.struct(*[F.col(f"`{c}`") for c in columns])))
    corrupt = F.col(RAW).isNotNull()
    df = df.select(*[F.col(f"`{c}`") for c in columns],
                   F.when(corrupt, F.lit("malformed_record")).alias(PROBLEM),
                   F.when(corrupt, F.lit("not parsable as CSV")).alias(EXTRA),
                   F.col("_metadata.file_path").alias(FILE),
                   F.col("_metadata.file_modification_time").alias(FILE_TIME),
                   F.lit(None).cast("long").alias(LINE), raw.alias(RAW))
    return RawInput(df, columns, path)


def read_parquet(spark: SparkSession, path: str, small_files: bool = False) -> RawInput:
    return _read_columnar(spark.read.parquet(path), path, first_line=0, small_files=small_files)


def read_json(spark: SparkSession, path: str, small_files: bool = False) -> RawInput:
    """JSON lines, every value read as text (like CSV fields); a line that is not a JSON
    object is a ``malformed_record``, not a dropped row."""
    df = spark.read.options(primitivesAsString="true", mode="PERMISSIVE",
                            columnNameOfCorruptRecord=_CORRUPT).json(path)
    return _read_columnar(df, path, first_line=1, small_files=small_files)


_CORRUPT = "_corrupt_record"


def _read_columnar(df: DataFrame, path: str, first_line: int, small_files: bool) -> RawInput:
    """Parquet or JSON: typed columns rendered as strings; LINE counts rows from ``first_line``
    (Parquet has no lines: its 0-based row offset; JSON lines: the 1-based line)."""
    corrupt = _CORRUPT in df.columns
    columns = [c for c in df.columns if c != _CORRUPT]
    temporal = frozenset(f.name for f in df.schema.fields
                         if isinstance(f.dataType, T.TimestampType | T.TimestampNTZType | T.DateType))

    def as_string(c: str) -> Column:
        if c in temporal:  # an instant with its offset: no time zone or precision is lost
            return F.date_format(F.col(f"`{c}`").cast("timestamp"), TIMESTAMP_PATTERN).alias(c)
        return F.col(f"`{c}`").cast("string").alias(c)

    bad = F.col(_CORRUPT) if corrupt else F.lit(None).cast("string")
    numbered = _number_rows(df.select(*[as_string(c) for c in columns], bad.alias(_CORRUPT), *_provenance()),
                            small_files)
    out = numbered.select(*columns, F.when(F.col(_CORRUPT).isNotNull(), F.lit("malformed_record")).alias(PROBLEM),
                          F.col(_CORRUPT).alias(EXTRA), FILE, FILE_TIME,
                          (F.col(LINE) - 1 + first_line).alias(LINE),
                          F.coalesce(F.col(_CORRUPT), F.to_json(F.struct(*[F.col(f"`{c}`") for c in columns])))
                          .alias(RAW))
    return RawInput(out, columns, path, temporal)


def read_input(spark: SparkSession, path: str, fmt: str, opts: CsvOptions, small_files: bool = False) -> RawInput:
    """``small_files``: see :func:`_number_rows`."""
    if fmt == "parquet":
        return read_parquet(spark, path, small_files)
    if fmt == "json":
        return read_json(spark, path, small_files)
    return read_csv(spark, path, opts, small_files)


def require_columns(raw: RawInput, wanted: dict[str, str | None]) -> None:
    """Every configured source column must exist in the input: a typo fails here, by name."""
    for role, column in wanted.items():
        if column is not None and column not in raw.columns:
            raise InputError(f"{raw.path}: column {column!r} (configured for {role}) not in the input; "
                             f"its columns are {raw.columns}")
