"""The (user, item, value) matrix the co-occurrence baselines build their Gram matrix from."""

from __future__ import annotations

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from .base import positives


def user_item_values(train: DataFrame, binary: bool, max_user_history: int | None = None) -> DataFrame:
    """(user_idx, item_idx, value): the rows of X, optionally the latest N per user."""
    pos = positives(train)
    if max_user_history is not None:
        if max_user_history < 1:
            raise ValueError(f"max_user_history must be >= 1, got {max_user_history}")
        latest = Window.partitionBy("user_idx").orderBy(F.desc("seq"), F.desc("item_idx"))
        pos = pos.withColumn("__r", F.row_number().over(latest)).filter(F.col("__r") <= max_user_history)
    value = F.lit(1.0) if binary else F.col("weight")
    return pos.select("user_idx", "item_idx", value.alias("value"))
