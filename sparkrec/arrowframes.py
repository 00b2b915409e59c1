"""Small DataFrames between Spark and Arrow in the driver process.

Why: a streaming micro-batch MERGEs and rescores a few dozen users. Spark plans and schedules
that in jobs whose fixed cost (task launch, shuffles, broadcasting a model's matrices to the
Python workers) is seconds, while the rows themselves take milliseconds; for such sizes the
driver collects the rows as Arrow, does the numeric work itself, and hands the result back.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import types as T
from pyspark.sql.pandas.types import to_arrow_schema


def collect_arrow(df: DataFrame, schema: T.StructType | None = None) -> pa.Table:
    """A (small) DataFrame's rows as an Arrow table, with ``schema``'s (default: its own)
    columns even when it has none."""
    batches = df._collect_as_arrow()  # pyspark 3.5 has no public toArrow()
    if batches:
        return pa.Table.from_batches(batches)
    return to_arrow_schema(schema or df.schema).empty_table()


def to_dataframe(spark: SparkSession, data: pa.Table, schema: T.StructType) -> DataFrame:
    """Arrow rows back as a DataFrame of ``schema`` (through pandas: pyspark 3.5 takes no Arrow)."""
    return spark.createDataFrame(data.to_pandas(), schema)


def map_in_driver(spark: SparkSession, df: DataFrame, fn: Callable[[Iterator[pa.RecordBatch]], Iterator[Any]],
                  schema: T.StructType) -> DataFrame:
    """``df.mapInArrow(fn, schema)`` run here, on the collected rows."""
    out = list(fn(iter(collect_arrow(df).to_batches())))
    data = pa.Table.from_batches(out) if out else to_arrow_schema(schema).empty_table()
    return to_dataframe(spark, data, schema)
