"""Item, user and history feature tables, all computed with Spark joins and aggregations."""

from __future__ import annotations

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from .. import schemas

TOP_TAGS = 10


def top_tags(tags: DataFrame, item_index: DataFrame, n: int = TOP_TAGS) -> DataFrame:
    """The n tags most users gave an item (lower-cased), most frequent first."""
    counts = (tags.withColumn("tag", F.lower(F.trim("tag"))).groupBy("item_id", "tag")
              .agg(F.countDistinct("user_id").alias("n")))
    ranked = counts.withColumn("r", F.row_number().over(
        Window.partitionBy("item_id").orderBy(F.desc("n"), "tag")))
    return (ranked.filter(F.col("r") <= n)
            .groupBy("item_id").agg(F.sort_array(F.collect_list(F.struct("r", "tag"))).alias("s"))
            .select("item_id", F.col("s.tag").alias("top_tags"))
            .join(item_index, "item_id").select("item_idx", "top_tags"))


def item_features(items: DataFrame, item_index: DataFrame, events: DataFrame,
                  tags: DataFrame | None) -> DataFrame:
    stats = events.groupBy("item_idx").agg(
        F.count(F.lit(1)).alias("n_interactions"), F.countDistinct("user_idx").alias("n_users"),
        F.avg("rating").alias("mean_rating"), F.min("seq").alias("first_seq"), F.max("seq").alias("last_seq"))
    # Items known only from interactions (unknown_items=keep) still get a row, without text.
    catalogue = item_index.join(items.drop("source_file", "source_line"), "item_id", "left")
    out = catalogue.join(stats, "item_idx", "left").fillna(0, ["n_interactions", "n_users"])
    if tags is not None:
        out = out.join(top_tags(tags, item_index), "item_idx", "left")
    else:
        out = out.withColumn("top_tags", F.lit(None).cast("array<string>"))
    out = out.withColumns({
        "top_tags": F.coalesce("top_tags", F.array().cast("array<string>")),
        "popularity_rank": F.dense_rank().over(Window.orderBy(F.desc("n_interactions"))).cast("int"),
    })
    return out.select(*[F.col(f.name).cast(f.dataType) for f in schemas.ITEM_FEATURES.fields])


def user_features(user_index: DataFrame, events: DataFrame, users: DataFrame | None) -> DataFrame:
    stats = events.groupBy("user_idx").agg(
        F.count(F.lit(1)).alias("n_interactions"), F.sum(F.col("is_positive").cast("long")).alias("n_positive"),
        F.avg("rating").alias("mean_rating"), F.min("seq").alias("first_seq"), F.max("seq").alias("last_seq"))
    out = user_index.join(stats, "user_idx", "left").fillna(0, ["n_interactions", "n_positive"])
    if users is not None:
        out = out.join(users.select("user_id", "location", "age"), "user_id", "left")
    else:
        out = out.withColumns({"location": F.lit(None).cast("string"), "age": F.lit(None).cast("int")})
    return out.select(*[F.col(f.name).cast(f.dataType) for f in schemas.USER_FEATURES.fields])


def last_n(array: Column, n: int) -> Column:
    """The last n elements; slice() with a negative start beyond the array returns [], so clamp it."""
    return F.slice(array, F.greatest(F.size(array) - n + 1, F.lit(1)), F.lit(n))


def user_histories(events: DataFrame, length: int) -> DataFrame:
    """Each user's last ``length`` positive events, oldest first (ties broken by item)."""
    ordered = (events.filter("is_positive").groupBy("user_idx")
               .agg(F.sort_array(F.collect_list(F.struct("seq", "item_idx", "weight"))).alias("h"))
               .withColumn("h", last_n(F.col("h"), length)))
    return ordered.select("user_idx", F.col("h.item_idx").alias("item_idxs"), F.col("h.seq").alias("seqs"),
                          F.col("h.weight").cast("array<float>").alias("weights"))
