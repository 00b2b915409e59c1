"""Item, user and history feature tables, all computed with Spark joins and aggregations."""

from __future__ import annotations

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from .. import schemas

TOP_TAGS = 10


def item_features_table(split: str | None) -> str:
    """``item_features`` (all data, for production) or ``item_features_<split>`` (leak-free)."""
    return "item_features" if split in (None, "none") else f"item_features_{split}"


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


def split_tags(tags: DataFrame, user_index: DataFrame, item_index: DataFrame, split: DataFrame,
               before_first_test: bool) -> DataFrame:
    """The tags a model fitted on ``split``'s train part may know about.

    Item text built from every tag leaks the test part: a held-out user's tag on a held-out
    item names the answer, and a cold item (no train event) has no user tags yet. So a tag is
    dropped when its item has no train event, when its (user, item) pair is a test pair, and,
    with ``before_first_test`` (time-ordered protocols on timestamped data), when it was written
    at or after its user's first test event: at that moment it did not exist yet.
    """
    train, test = split.filter(F.col("part") == "train"), split.filter(F.col("part") == "test")
    # Tags by users the index does not know are kept: they cannot be test users.
    indexed = tags.join(item_index, "item_id").join(user_index, "user_id", "left")
    kept = (indexed.join(train.select("item_idx").distinct(), "item_idx", "left_semi")
            .join(test.select("user_idx", "item_idx").distinct(), ["user_idx", "item_idx"], "left_anti"))
    if before_first_test:
        first_test = test.groupBy("user_idx").agg(F.min("seq").alias("_first_test"))
        kept = kept.join(first_test, "user_idx", "left").filter(
            F.col("_first_test").isNull() | F.col("event_time").isNull()
            | (F.unix_timestamp("event_time") < F.col("_first_test")))
    return kept.select("user_id", "item_id", "tag")


def split_item_features(items: DataFrame, item_index: DataFrame, user_index: DataFrame, split: DataFrame,
                        tags: DataFrame | None, before_first_test: bool) -> DataFrame:
    """``item_features`` as a model fitted on ``split``'s train part may see them: tags from
    :func:`split_tags`, statistics (counts, mean rating, popularity rank) from train events only."""
    train = split.filter(F.col("part") == "train")
    kept = None if tags is None else split_tags(tags, user_index, item_index, split, before_first_test)
    return item_features(items, item_index, train, kept)


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


STATISTICS = ["top_tags", "n_interactions", "n_users", "mean_rating", "popularity_rank", "first_seq", "last_seq"]


def catalogue_update(items: DataFrame, item_index: DataFrame, current: DataFrame) -> DataFrame:
    """``item_features`` rows for catalogue rows that changed between feature runs (a streamed
    catalogue source): the catalogue columns from ``items``, the statistics as ``current``
    holds them. An item new to ``current`` has no event yet: no tags or counts, and the
    popularity rank :func:`item_features` gives an item without interactions."""
    catalogue = item_index.join(items.drop("source_file", "source_line"), "item_id")
    stats = current.select("item_idx", *STATISTICS)
    untouched = current.agg(
        F.coalesce(F.max(F.when(F.col("n_interactions") == 0, F.col("popularity_rank"))),
                   F.max("popularity_rank") + 1, F.lit(1)).alias("_unrated_rank"))
    out = catalogue.join(stats, "item_idx", "left").crossJoin(untouched).withColumns({
        "top_tags": F.coalesce("top_tags", F.array().cast("array<string>")),
        "n_interactions": F.coalesce("n_interactions", F.lit(0)), "n_users": F.coalesce("n_users", F.lit(0)),
        "popularity_rank": F.coalesce("popularity_rank", "_unrated_rank")})
    return out.select(*[F.col(f.name).cast(f.dataType) for f in schemas.ITEM_FEATURES.fields])
