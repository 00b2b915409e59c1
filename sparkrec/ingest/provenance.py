"""Provenance (source file, line) describes where a row was seen, not what it says.

A MERGE compares whole rows, so a row whose only change is its line number (a line inserted
above it, a file renamed) would count as "updated" and be rewritten. Before the MERGE, rows
whose content matches the table's row of the same key take the table's provenance: they are
then unchanged, and a row's provenance stays where it was first seen until its content
changes.
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from ..lake import Lake

PROVENANCE = ("source_file", "source_line")
_HASH = "__content_hash"


def _content_hash(content: list[str]) -> Column:
    """``to_json`` first: Spark cannot hash map columns directly."""
    return F.xxhash64(F.to_json(F.struct(*[F.col(c) for c in content])))


def keep_first_provenance(lake: Lake, table: str, df: DataFrame, keys: list[str]) -> DataFrame:
    """``df`` with the table's provenance on every row whose key and content it already holds."""
    if not lake.exists(table):
        return df
    content = [c for c in df.columns if c not in keys and c not in PROVENANCE]
    existing = lake.read(table).select(*keys, _content_hash(content).alias(_HASH),
                                       *[F.col(c).alias(f"__old_{c}") for c in PROVENANCE])
    merged = df.withColumn(_HASH, _content_hash(content)).join(existing, on=[*keys, _HASH], how="left")
    carried = {c: F.coalesce(F.col(f"__old_{c}"), F.col(c)) for c in PROVENANCE}
    return merged.withColumns(carried).select(*df.columns)
