"""Spark session factory: the same job code on a laptop, under spark-submit and on Databricks.

Locally it starts ``local[*]``; when a session is already active (Databricks notebooks, a
spark-submit driver, a test fixture) it is reused as it is, because the platform that started
it knows its cluster better than we do.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from pyspark.sql import SparkSession

from .config import SparkConfig
from .logs import get_logger

log = get_logger("session")


def running_on_databricks() -> bool:
    return "DATABRICKS_RUNTIME_VERSION" in os.environ


def running_under_spark_submit() -> bool:
    # spark-submit starts the Python driver with a gateway to its already running JVM.
    return "PYSPARK_GATEWAY_PORT" in os.environ


def _auto_shuffle_partitions(master: str) -> int:
    """Few partitions for local runs (the default 200 makes small jobs crawl), more on clusters."""
    cores = os.cpu_count() or 2
    if master.startswith("local"):
        return max(4, 2 * cores)
    return 200


def _log4j_conf() -> str:
    path = Path(__file__).parent / "resources" / "log4j2.properties"
    return f"-Dlog4j2.configurationFile=file:{path}"


def get_spark(cfg: SparkConfig | None = None) -> SparkSession:
    cfg = cfg or SparkConfig()
    active = SparkSession.getActiveSession()
    if active is not None:
        return active

    external = running_on_databricks() or running_under_spark_submit()
    master = cfg.master or (None if external else "local[*]")
    if master and master.startswith("local"):
        # Python workers must run the driver's interpreter, or they miss our dependencies.
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)

    builder = SparkSession.builder.appName(cfg.app_name)
    if master:
        builder = builder.master(master)
    shuffle = cfg.shuffle_partitions
    if shuffle == "auto":
        shuffle = _auto_shuffle_partitions(master or "cluster")
    settings = {
        "spark.sql.shuffle.partitions": str(shuffle),
        "spark.sql.adaptive.enabled": "true",
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.sql.execution.arrow.pyspark.fallback.enabled": "false",
        "spark.sql.session.timeZone": "UTC",
        "spark.ui.showConsoleProgress": "false",
        "spark.ui.enabled": "false" if os.environ.get("CI") else "true",
        **cfg.conf,
    }
    if master and master.startswith("local"):
        # JVM options only apply to a JVM we launch ourselves; on a cluster they are the
        # cluster's to set, and overriding them would drop its own settings.
        settings.setdefault("spark.driver.memory", cfg.driver_memory)
        settings.setdefault("spark.driver.extraJavaOptions", _log4j_conf())
    for key, value in settings.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel(cfg.log_level)
    log.info("spark session started", extra={"fields": {
        "master": spark.sparkContext.master, "version": spark.version,
        "shuffle_partitions": shuffle}})
    return spark


def scoring_partitions(spark: SparkSession, configured: int | None) -> int:
    """Partitions of a per-user (or per-text) numeric job: the configured count, else two per
    core, so one slow partition does not leave the other cores idle at the end."""
    return configured or 2 * spark.sparkContext.defaultParallelism
