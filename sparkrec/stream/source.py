"""Where micro-batches come from: a landing directory of files, Kafka, or a Delta table.

Every source is reduced to the same thing, a list of files in the dataset's interactions
format, so each batch is read and validated by the ingest stage's own reader and rules
(``sparkrec.ingest``): the same reasons, line numbers and quarantine keys as a batch ingest.

- ``files``: the stream lists new files only (``binaryFile`` without its content column);
  the file source's checkpoint records which files each batch took.
- ``kafka`` / ``delta``: the batch's rows are staged as JSON / Parquet files under the
  checkpoint, named by batch id, so a replayed batch stages the same rows again.
  Kafka needs the ``spark-sql-kafka-0-10`` package and the Delta source the delta-spark jars
  on the cluster: neither is available on the machines this was built on, so both paths are
  written to the documented options and untested here.
"""

from __future__ import annotations

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


def read_stream(cfg: Config, spark: SparkSession) -> DataFrame:
    """The streaming DataFrame whose micro-batches :func:`batch_files` turns into files."""
    sc = cfg.stream
    if sc.source == "files":
        return (spark.readStream.format("binaryFile").schema(BINARY_FILE)
                .option("pathGlobFilter", EXTENSIONS[landing_format(cfg)])
                .option("maxFilesPerTrigger", sc.max_files_per_trigger)
                .load(sc.path).select("path"))
    if sc.source == "kafka":
        if not (sc.kafka_brokers and sc.kafka_topic):
            raise ValueError("stream.source=kafka needs stream.kafka_brokers and stream.kafka_topic")
        return (spark.readStream.format("kafka")
                .option("kafka.bootstrap.servers", sc.kafka_brokers).option("subscribe", sc.kafka_topic)
                .option("startingOffsets", sc.kafka_starting_offsets)
                .option("maxOffsetsPerTrigger", sc.max_files_per_trigger * 1000)
                .load().select(F.col("value").cast("string").alias("value")))
    return spark.readStream.format("delta").option("maxFilesPerTrigger", sc.max_files_per_trigger).load(sc.path)


def batch_files(cfg: Config, batch: DataFrame, batch_id: int, staging: str) -> tuple[list[str], str]:
    """(files, format) holding this micro-batch's events."""
    sc = cfg.stream
    if sc.source == "files":
        return sorted(r["path"] for r in batch.collect()), landing_format(cfg)  # one row per file
    target = f"{staging.rstrip('/')}/batch={batch_id}"
    if sc.source == "kafka":  # each message value is one event as a JSON object
        batch.coalesce(1).write.mode("overwrite").text(target)
        return [target], "json"
    batch.write.mode("overwrite").parquet(target)
    return [target], "parquet"


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
