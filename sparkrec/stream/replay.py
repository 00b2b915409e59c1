"""``sparkrec replay``: a dataset's held-out events, in time order, landed as small files at a rate.

For demos and benchmarks of ``sparkrec stream``: the last ``stream.replay_fraction`` of the
dataset's interactions by time are written, ``stream.replay_batch`` events a file, in the
dataset's own columns and format, so the stream validates them exactly like an ingest. Each
file is written under a hidden name (Spark's file source skips names starting with ``.``) and
renamed when complete: the stream never reads half a file.
"""

from __future__ import annotations

import csv
import io
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from ..config import Config
from ..ingest.presets import resolve_source
from ..ingest.reader import FILE, LINE, read_input
from ..ingest.validate import parse_timestamp
from ..logs import get_logger, log_fields
from .source import landing_format

log = get_logger("stream.replay")


def _ordered(cfg: Config, spark: SparkSession) -> tuple[DataFrame, list[str]]:
    """The raw interactions with ``_t``, the order they are replayed in: their time or, for a
    source without time, its line order, or a seeded shuffle where that order is not time
    (``file_order: arbitrary``: Book-Crossing's file is sorted by user and ISBN, and replaying
    it in that order would stream one user after another). The shuffle is seeded by the file's
    name, not its path: the same dataset in another checkout or mount holds out the same events
    (by path, a benchmark whose setup and replay ran from two checkouts replayed events the
    setup had trained on)."""
    src = resolve_source(cfg.data)
    spec = src.interactions
    ts = spec.columns.timestamp
    raw = read_input(spark, spec.path, spec.format, spec.csv)
    if ts is not None:
        order = parse_timestamp(F.col(f"`{ts}`"), spec.timestamp_format, native=ts in raw.timestamp_columns)
        order = order.cast("double")
    elif src.file_order == "arbitrary":
        name = F.element_at(F.split(F.col(FILE), "/"), -1)
        order = F.xxhash64(F.lit("sparkrec-replay"), name, F.col(LINE)).cast("double")
    else:
        order = F.col(LINE).cast("double")
    return raw.df.withColumn("_t", order).filter(F.col("_t").isNotNull()), raw.columns


def held_out(cfg: Config, spark: SparkSession) -> tuple[DataFrame, list[str], float]:
    """The last ``stream.replay_fraction`` of the interactions by time (raw columns, as text),
    ordered by time, the columns to write, and the cut (epoch seconds: the first held-out time).
    A source without time is cut and ordered by :func:`_ordered`'s order instead, and its cut
    is a position in that order (:func:`kept` is then how to train without the held-out part)."""
    ordered, columns = _ordered(cfg, spark)
    cut = ordered.approxQuantile("_t", [1.0 - cfg.stream.replay_fraction], 0.0001)[0]
    tail = ordered.filter(F.col("_t") >= cut).orderBy("_t", FILE, LINE)
    return tail, columns, float(cut)


def kept(cfg: Config, spark: SparkSession, cut: float) -> DataFrame:
    """The interactions before ``cut`` (raw columns, in the source's order): what a benchmark
    trains on when the source has no time for ``ingest.timestamp_max`` to hold the rest out."""
    ordered, columns = _ordered(cfg, spark)
    return ordered.filter(F.col("_t") < cut).orderBy(FILE, LINE).select(*[F.col(f"`{c}`") for c in columns])


def _chunks(rows: Iterator[Any], size: int) -> Iterator[list[Any]]:
    chunk: list[Any] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def encode_rows(rows: list[Any], columns: list[str], fmt: str, cfg: Config) -> bytes:
    if fmt == "json":
        return "".join(json.dumps({c: r[c] for c in columns}) + "\n" for r in rows).encode()
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        sink = pa.BufferOutputStream()
        pq.write_table(pa.table({c: [r[c] for r in rows] for c in columns}), sink)
        return sink.getvalue().to_pybytes()
    opts = resolve_source(cfg.data).interactions.csv
    out = io.StringIO()
    writer = csv.writer(out, delimiter=opts.sep, quotechar=opts.quote, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows([[r[c] for c in columns] for r in rows])
    return out.getvalue().encode(opts.encoding)


def run_replay(cfg: Config, spark: SparkSession, rate: float, limit: int | None = None) -> dict[str, Any]:
    """Writes the held-out events into ``stream.path`` at ``rate`` events/s (0: as fast as
    possible); returns how many events and files."""
    fmt = landing_format(cfg)
    landing = Path(cfg.stream.path)
    landing.mkdir(parents=True, exist_ok=True)
    tail, columns, _ = held_out(cfg, spark)
    if limit is not None:
        tail = tail.limit(limit)
    started, events, files = time.perf_counter(), 0, 0
    prefix = f"replay-{int(time.time() * 1000)}"
    for chunk in _chunks(tail.toLocalIterator(), cfg.stream.replay_batch):
        name = f"{prefix}-{files:06d}.{fmt}"
        (landing / f".{name}.tmp").write_bytes(encode_rows(chunk, columns, fmt, cfg))
        os.replace(landing / f".{name}.tmp", landing / name)
        events, files = events + len(chunk), files + 1
        if rate > 0:  # hold the rate: the next file is due when its events would have arrived
            time.sleep(max(0.0, started + events / rate - time.perf_counter()))
    summary = {"events": events, "files": files, "seconds": round(time.perf_counter() - started, 2),
               "path": str(landing)}
    log_fields(log, "replay done", **summary)
    return summary
