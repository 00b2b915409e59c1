"""Delta table access with two engines; :func:`open_lake` picks the one this cluster supports.

Each engine's Python dependency (deltalake, delta-spark) loads only when that engine is used,
so code that merely shares these modules (an encoder or a trainer on a GPU box) needs neither.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pyspark.sql import SparkSession

from ..config import Config
from ..logs import get_logger
from .base import (
    NO_TABLE,
    Clustering,
    CommitResult,
    ConcurrentWriteError,
    Lake,
    LakeError,
    RunContext,
    SchemaMismatchError,
)

if TYPE_CHECKING:
    from .deltars import DeltaRsLake
    from .sparkdelta import SparkDeltaLake

__all__ = ["NO_TABLE", "Clustering", "CommitResult", "ConcurrentWriteError", "DeltaRsLake", "Lake", "LakeError",
           "RunContext", "SchemaMismatchError", "SparkDeltaLake", "delta_jars_available", "open_lake"]

log = get_logger("lake")


def __getattr__(name: str) -> Any:
    if name == "DeltaRsLake":
        from .deltars import DeltaRsLake

        return DeltaRsLake
    if name == "SparkDeltaLake":
        from .sparkdelta import SparkDeltaLake

        return SparkDeltaLake
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
        from .sparkdelta import SparkDeltaLake

        if not delta_jars_available(spark):
            raise LakeError("lake.engine=spark-delta needs the Delta jars on the classpath and the "
                            "delta-spark Python package: add --packages io.delta:delta-spark_2.12:3.3.2 "
                            "(or run on Databricks), or use lake.engine=delta-rs")
        lake: Lake = SparkDeltaLake(spark, cfg.lake.root, cfg.namespace, cfg.lake.catalog, context)
    else:
        from .deltars import DeltaRsLake

        lake = DeltaRsLake(spark, cfg.lake.root, cfg.namespace, cfg.lake.catalog, context,
                           cfg.lake.target_file_rows, cfg.lake.storage_options)
    lake.commit_retries = cfg.lake.commit_retries
    log.info("lake opened", extra={"fields": {"engine": lake.engine, "root": lake.root,
                                              "namespace": lake.namespace}})
    return lake
