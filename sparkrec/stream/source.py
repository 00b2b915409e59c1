"""Where micro-batches come from: a landing directory of files, Kafka, or a Delta table.

Every source is reduced to the same thing, a list of files in the dataset's interactions
format, so each batch is read and validated by the ingest stage's own reader and rules
(``sparkrec.ingest``): the same reasons, line numbers and quarantine keys as a batch ingest.
With ``stream.items_path`` the query also lists a second landing directory, of catalogue rows
in the dataset's items format (:mod:`.catalogue` folds them in), as one union of the two file
sources: one checkpoint covers both.

- ``files``: the stream lists new files only (``binaryFile`` without its content column);
  the file source's checkpoint records which files each batch took.
- ``kafka`` / ``delta``: the batch's rows are staged as JSON / Parquet files under the
  checkpoint, named by batch id, so a replayed batch stages the same rows again.
  Kafka needs the ``spark-sql-kafka-0-10`` package and the Delta source the delta-spark jars
  on the cluster: neither is available on the machines this was built on, so both paths are
  written to the documented options and untested here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.fs as pafs
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from ..config import Config
from ..ingest.presets import resolve_source

EXTENSIONS = {"csv": "*.csv", "json": "*.json", "parquet": "*.parquet"}
# binaryFile's fixed schema: a streaming source must be given it (no inference on streams).
BINARY_FILE = "path string, modificationTime timestamp, length long, content binary"


def landing_format(cfg: Config) -> str:
    return cfg.stream.format or resolve_source(cfg.data).interactions.format


def items_format(cfg: Config) -> str:
    items = resolve_source(cfg.data).items
    if items is None:
        raise ValueError(f"stream.items_path is set, but dataset {cfg.data.dataset!r} has no items input to "
                         "validate catalogue rows against")
    return items.format


def _landing(cfg: Config, spark: SparkSession, path: str, fmt: str, table: str) -> DataFrame:
    return (spark.readStream.format("binaryFile").schema(BINARY_FILE)
            .option("pathGlobFilter", EXTENSIONS[fmt])
            .option("maxFilesPerTrigger", cfg.stream.max_files_per_trigger)
            .load(path).select("path", F.lit(table).alias("table")))


def read_stream(cfg: Config, spark: SparkSession) -> DataFrame:
    """The streaming DataFrame whose micro-batches :func:`batch_files` turns into files."""
    sc = cfg.stream
    if sc.items_path is not None and sc.source != "files":
        raise ValueError(f"stream.items_path (a catalogue landing directory) works with stream.source=files, "
                         f"not {sc.source!r}")
    if sc.source == "files":
        events = _landing(cfg, spark, sc.path, landing_format(cfg), "interactions")
        if sc.items_path is None:
            return events
        return events.unionByName(_landing(cfg, spark, sc.items_path, items_format(cfg), "items"))
    if sc.source == "kafka":
        if not (sc.kafka_brokers and sc.kafka_topic):
            raise ValueError("stream.source=kafka needs stream.kafka_brokers and stream.kafka_topic")
        return (spark.readStream.format("kafka")
                .option("kafka.bootstrap.servers", sc.kafka_brokers).option("subscribe", sc.kafka_topic)
                .option("startingOffsets", sc.kafka_starting_offsets)
                .option("maxOffsetsPerTrigger", sc.max_files_per_trigger * 1000)
                .load().select(F.col("value").cast("string").alias("value")))
    return spark.readStream.format("delta").option("maxFilesPerTrigger", sc.max_files_per_trigger).load(sc.path)


@dataclass(frozen=True)
class BatchInput:
    """A micro-batch's files: events (in ``format``) and catalogue rows (the items' format)."""

    files: list[str]
    format: str
    item_files: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.files or self.item_files)


def batch_files(cfg: Config, batch: DataFrame, batch_id: int, staging: str) -> BatchInput:
    """The files holding this micro-batch's events and catalogue rows."""
    sc = cfg.stream
    if sc.source == "files":
        rows = batch.collect()  # one row per file
        return BatchInput(sorted(r["path"] for r in rows if r["table"] == "interactions"), landing_format(cfg),
                          sorted(r["path"] for r in rows if r["table"] == "items"))
    target = f"{staging.rstrip('/')}/batch={batch_id}"
    if sc.source == "kafka":  # each message value is one event as a JSON object
        batch.coalesce(1).write.mode("overwrite").text(target)
        return BatchInput([target], "json")
    batch.write.mode("overwrite").parquet(target)
    return BatchInput([target], "parquet")


def input_bytes(files: list[str]) -> int | None:
    """The bytes a batch's files (or staged folders) hold; None when a path cannot be sized."""
    total = 0
    try:
        for path in files:
            fs, rel = pafs.FileSystem.from_uri(path)  # a plain path, file:/x (Spark's) or a URI
            info = fs.get_file_info(rel)
            if info.type == pafs.FileType.Directory:
                total += sum(i.size or 0 for i in fs.get_file_info(pafs.FileSelector(rel, recursive=True)))
            else:
                total += info.size or 0
    except (OSError, ValueError, pa.ArrowException):
        return None
    return total
