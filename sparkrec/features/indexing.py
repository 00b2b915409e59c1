"""Stable dense integer indices for users and items.

Models address embeddings by index, so an id must keep its index for the lifetime of the
platform: new ids get indices after the current maximum, existing ones never move.
"""

from __future__ import annotations

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from ..lake import CommitResult, Lake


def extend_index(lake: Lake, table: str, ids: DataFrame, id_col: str, idx_col: str) -> CommitResult:
    """MERGEs indices for ids not yet in ``table``; existing rows are left untouched."""
    ids = ids.select(F.col(id_col)).where(F.col(id_col).isNotNull()).distinct()
    if lake.exists(table):
        existing = lake.read(table)
        offset = existing.agg(F.max(idx_col)).collect()[0][0]
        offset = -1 if offset is None else int(offset)
        new = ids.join(existing.select(id_col), on=id_col, how="left_anti")
    else:
        offset = -1
        new = ids
    # A global order over only the *new* ids: one sorted partition, bounded by the daily delta.
    numbered = new.withColumn(idx_col, (F.row_number().over(Window.orderBy(id_col)) + offset).cast("int"))
    return lake.upsert(table, numbered.select(id_col, idx_col), [id_col])
