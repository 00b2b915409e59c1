"""Stable dense integer indices for users and items.

Models address embeddings by index, so an id must keep its index for the lifetime of the
platform: new ids get indices after the current maximum, existing ones never move.

The new indices depend on the table itself (its maximum), so they are computed from one
version of it and committed only on that version (:meth:`Lake.transact`): two ``features``
runs at once cannot both hand out ``max+1``; the one that loses the race recomputes.
"""

from __future__ import annotations

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from ..lake import NO_TABLE, CommitResult, Lake


def extend_index(lake: Lake, table: str, ids: DataFrame, id_col: str, idx_col: str) -> CommitResult:
    """MERGEs indices for ids not yet in ``table``; existing rows are left untouched."""
    ids = ids.select(F.col(id_col)).where(F.col(id_col).isNotNull()).distinct()

    def write(read_version: int) -> CommitResult:
        numbered = _number_new_ids(lake, table, ids, id_col, idx_col, read_version)
        return lake.upsert(table, numbered, [id_col], read_version=read_version)

    return lake.transact(table, write)


def _number_new_ids(lake: Lake, table: str, ids: DataFrame, id_col: str, idx_col: str,
                    read_version: int) -> DataFrame:
    if read_version == NO_TABLE:
        offset, new = -1, ids
    else:
        existing = lake.read(table, version=read_version)
        top = existing.agg(F.max(idx_col)).collect()[0][0]
        offset = -1 if top is None else int(top)
        new = ids.join(existing.select(id_col), on=id_col, how="left_anti")
    # A global order over only the *new* ids: one sorted partition, bounded by the daily delta.
    numbered = new.withColumn(idx_col, (F.row_number().over(Window.orderBy(id_col)) + offset).cast("int"))
    return numbered.select(id_col, idx_col)
