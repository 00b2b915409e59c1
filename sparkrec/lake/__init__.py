"""Delta table access with two engines; :func:`open_lake` picks the one this cluster supports."""

from __future__ import annotations

from pyspark.sql import SparkSession

from ..config import Config
from ..logs import get_logger
from .base import CommitResult, Lake, LakeError, RunContext, SchemaMismatchError
from .deltars import DeltaRsLake
from .sparkdelta import SparkDeltaLake

__all__ = ["CommitResult", "DeltaRsLake", "Lake", "LakeError", "RunContext", "SchemaMismatchError",
           "SparkDeltaLake", "delta_jars_available", "open_lake"]

log = get_logger("lake")


def delta_jars_available(spark: SparkSession) -> bool:
    """True when the Delta Spark connector is on the JVM classpath (Databricks, --packages)."""
    try:
        loader = spark._jvm.java.lang.Thread.currentThread().getContextClassLoader()  # type: ignore[union-attr]
        spark._jvm.java.lang.Class.forName("io.delta.tables.DeltaTable", False, loader)  # type: ignore[union-attr]
        import delta  # noqa: F401  (the Python half, pip package delta-spark)
    except Exception:
        return False
    return True


def open_lake(spark: SparkSession, cfg: Config, context: RunContext | None = None) -> Lake:
    engine = cfg.lake.engine
    if engine == "auto":
        engine = "spark-delta" if delta_jars_available(spark) else "delta-rs"
    if engine == "spark-delta":
        if not delta_jars_available(spark):
            raise LakeError("lake.engine=spark-delta needs the Delta jars on the classpath and the "
                            "delta-spark Python package: add --packages io.delta:delta-spark_2.12:3.3.2 "
                            "(or run on Databricks), or use lake.engine=delta-rs")
        lake: Lake = SparkDeltaLake(spark, cfg.lake.root, cfg.namespace, cfg.lake.catalog, context)
    else:
        lake = DeltaRsLake(spark, cfg.lake.root, cfg.namespace, cfg.lake.catalog, context,
                           cfg.lake.target_file_rows, cfg.lake.storage_options)
    log.info("lake opened", extra={"fields": {"engine": lake.engine, "root": lake.root,
                                              "namespace": lake.namespace}})
    return lake
