"""Features on the bundled sample through real Spark and Delta: indices, histories, splits."""

from __future__ import annotations

import re

import pandas as pd
import pytest
from pyspark.sql import functions as F

from sparkrec import schemas
from sparkrec.config import GenericSource, WeightConfig
from sparkrec.features.events import implicit_weight


@pytest.fixture(scope="module")
def built(sample_lake):
    cfg, lake = sample_lake
    return cfg, lake, {"events": lake.read("events").count()}


def _pdf(lake, table) -> pd.DataFrame:
    return lake.read(table).toPandas()


def test_indices_are_dense_and_cover_everything(built):
    _, lake, summary = built
    users, items = _pdf(lake, "user_index"), _pdf(lake, "item_index")
    assert sorted(users.user_idx) == list(range(150)) and users.user_id.is_unique
    assert set(range(6003)) <= set(items.item_idx) and items.item_id.is_unique
    assert summary["events"] == 23620


def test_indices_are_stable_when_new_ids_arrive(spark, built):
    _, lake, _ = built
    lake.overwrite("item_index_copy", lake.read("item_index"))  # leave the shared fixture untouched
    before = _pdf(lake, "item_index_copy").set_index("item_id").item_idx
    from sparkrec.features.indexing import extend_index

    new_ids = spark.createDataFrame([("zz-new",), ("1",)], "item_id string")
    result = extend_index(lake, "item_index_copy", new_ids, "item_id", "item_idx")
    after = _pdf(lake, "item_index_copy").set_index("item_id").item_idx
    assert result.inserted == 1 and after["zz-new"] == before.max() + 1
    assert (after.loc[before.index] == before).all()


def test_item_and_user_features(built):
    _, lake, _ = built
    items = _pdf(lake, "item_features").set_index("item_id")
    assert len(items) >= 6003
    toy = items.loc["1"]
    assert toy.title == "Toy Story (1995)" and toy.year == 1995 and "Animation" in list(toy.genres)
    assert toy.n_interactions > 0 and len(toy.top_tags) > 0
    assert (items.n_interactions == 0).sum() >= 300  # the sample's never-rated (cold) movies
    assert items.popularity_rank.min() == 1
    users = _pdf(lake, "user_features")
    assert len(users) == 150 and users.n_interactions.sum() == 23620


def test_histories_are_chronological_and_end_with_the_latest_event(built):
    _, lake, _ = built
    hist = _pdf(lake, "user_histories")
    events = _pdf(lake, "events")
    assert hist.item_idxs.map(len).max() == 20
    for row in hist.head(30).itertuples():
        assert list(row.seqs) == sorted(row.seqs)
        mine = events[events.user_idx == row.user_idx]
        assert row.seqs[-1] == mine.seq.max()
        assert len(row.item_idxs) == min(20, len(mine))


def test_temporal_leave_last_one(built):
    _, lake, _ = built
    split = _pdf(lake, "split_temporal_loo")
    test = split[split.part == "test"]
    assert test.user_idx.is_unique and len(test) == 150
    last = split.groupby("user_idx").seq.max()
    assert (test.set_index("user_idx").seq == last.loc[test.user_idx]).all()


def test_random_split_is_stratified_and_deterministic(built, spark):
    cfg, lake, _ = built
    split = _pdf(lake, "split_random")
    share = split.assign(t=split.part == "train").groupby("user_idx").t.mean()
    assert share.between(0.7, 0.9).all()
    from sparkrec.features.splits import random_stratified

    again = random_stratified(lake.read("events"), cfg.features.splits).toPandas()
    key = ["user_idx", "item_idx", "seq"]
    assert split.sort_values(key).part.tolist() == again.sort_values(key).part.tolist()


def test_stratified_split_is_the_ms_recommenders_75_25(built):
    cfg, lake, summary = built
    split = _pdf(lake, "split_stratified")
    events = _pdf(lake, "events")
    key = ["user_idx", "item_idx", "seq"]
    assert len(split) == summary["events"] and not split.duplicated(key).any()  # disjoint, covers all
    assert sorted(map(tuple, split[key].to_numpy())) == sorted(map(tuple, events[key].to_numpy()))
    per_user = split.assign(t=split.part == "train").groupby("user_idx").t.agg(["mean", "size"])
    # round(0.75 n) rows in train: the share is 0.75 up to half a row
    assert ((per_user["mean"] - 0.75).abs() <= 0.5 / per_user["size"] + 1e-9).all()
    assert per_user["size"].min() >= cfg.features.splits.min_user_interactions
    from sparkrec.features.splits import stratified

    again = stratified(lake.read("events"), cfg.features.splits).toPandas()
    assert split.sort_values(key).part.tolist() == again.sort_values(key).part.tolist()
    random = _pdf(lake, "split_random")
    assert (random.part == "train").mean() > (split.part == "train").mean()  # 80/20 stays beside it


def _tags_by_index(lake) -> pd.DataFrame:
    # Tags by users outside the index (the sample keeps other users' tags) are no split's test part.
    tags = lake.read("tags").join(lake.read("item_index"), "item_id").join(lake.read("user_index"), "user_id", "left")
    return tags.select("user_idx", "item_idx", F.lower(F.trim("tag")).alias("tag"),
                       F.unix_timestamp("event_time").alias("ts")).toPandas()


def _phrases(text: str) -> set[str]:
    """The comma/full-stop separated pieces of an item text, lower-cased: the tags among them."""
    return set(re.split(r"[.,]\s+", text.lower().strip(". ")))


@pytest.mark.parametrize(("name", "time_ordered", "at_least"), [("temporal_loo", True, 2), ("stratified", False, 100)])
def test_split_text_has_no_tag_from_the_test_part(built, name, time_ordered, at_least):
    """A tag written only on test pairs (or, time-ordered, after its user's first test event) is in
    the all-data top tags, so in the all-data item text, but neither in the split's top tags nor
    in the split's text."""
    cfg, lake, _ = built
    from sparkrec.text import item_source

    split = _pdf(lake, f"split_{name}")
    test = split[split.part == "test"]
    first_test = test.groupby("user_idx").seq.min()
    tags = _tags_by_index(lake)
    test_pairs = set(zip(test.user_idx, test.item_idx, strict=True))
    tags["leaks"] = [(u, i) in test_pairs or (time_ordered and u in first_test.index and ts >= first_test[u])
                     for u, i, ts in zip(tags.user_idx, tags.item_idx, tags.ts, strict=True)]
    only_leaky = tags.groupby(["item_idx", "tag"]).leaks.all()
    only_leaky = only_leaky[only_leaky].reset_index()
    everything = _pdf(lake, "item_features").set_index("item_idx")
    own = _pdf(lake, f"item_features_{name}").set_index("item_idx")
    template = cfg.embed.item_template
    texts = {"all": item_source(lake, template).toPandas().set_index("item_idx").text,
             "split": item_source(lake, template, name).toPandas().set_index("item_idx").text}
    checked = 0
    for item, tag in zip(only_leaky.item_idx, only_leaky.tag, strict=True):
        if tag not in list(everything.top_tags[item]):
            continue
        assert tag not in list(own.top_tags[item]), (item, tag)
        genres = everything.genres[item]
        other_fields = _phrases(everything.title[item] or "") | {g.lower() for g in ([] if genres is None else genres)}
        if tag in _phrases(texts["all"][item]) and tag not in other_fields:
            assert tag not in _phrases(texts["split"][item]), (item, tag)
            checked += 1
    assert checked >= at_least  # the sample has such tags: the check is not vacuous
    # statistics come from the train part only
    assert own.n_interactions.sum() == (split.part == "train").sum()
    assert own.n_interactions.sum() < everything.n_interactions.sum()


def test_cold_items_have_no_tags_and_no_stats_in_their_split_features(built):
    _, lake, _ = built
    split = _pdf(lake, "split_cold_items")
    cold = set(split[split.part == "test"].item_idx)
    everything = _pdf(lake, "item_features").set_index("item_idx")
    own = _pdf(lake, "item_features_cold_items").set_index("item_idx")
    assert sum(len(everything.top_tags[i]) > 0 for i in cold) >= 10  # cold items with tags elsewhere
    assert all(len(own.top_tags[i]) == 0 for i in cold)
    assert (own.loc[list(cold)].n_interactions == 0).all() and own.loc[list(cold)].mean_rating.isna().all()
    warm_tagged = [i for i in set(split.item_idx) - cold if len(everything.top_tags[i]) > 0]
    assert sum(len(own.top_tags[i]) > 0 for i in warm_tagged) > 0.9 * len(warm_tagged)  # warm items keep theirs


def test_cold_holdouts_never_leak_into_train(built):
    _, lake, _ = built
    for table, col in (("split_cold_items", "item_idx"), ("split_cold_users", "user_idx")):
        split = _pdf(lake, table)
        test_ids = set(split[split.part == "test"][col])
        train_ids = set(split[split.part == "train"][col])
        assert test_ids and not (test_ids & train_ids), table


def test_global_time_cut_puts_the_future_in_test(built):
    _, lake, _ = built
    split = _pdf(lake, "split_global_time")
    assert split[split.part == "train"].seq.max() < split[split.part == "test"].seq.min()
    assert 0.15 < (split.part == "test").mean() < 0.25


def test_every_split_has_the_contract_schema(built):
    _, lake, _ = built
    for name in schemas.SPLIT_NAMES:
        assert lake.read(f"split_{name}").schema.names == schemas.SPLIT.names
        assert lake.read(f"item_features_{name}").schema == lake.read("item_features").schema


def test_implicit_weights(spark):
    src = GenericSource.model_validate({"interactions": {"path": "x", "columns": {"user": "u", "item": "i"}},
                                        "rating_max": 10, "implicit_rating": 0})
    df = spark.createDataFrame([(0.0,), (5.0,), (10.0,), (None,)], "rating double")
    got = [r.w for r in df.select(implicit_weight(F.col("rating"), WeightConfig(), src).alias("w")).collect()]
    assert got == [1.0, 0.5, 1.0, 1.0]
    binary = WeightConfig(mode="binary", implicit_value=0.3)
    got = [r.w for r in df.select(implicit_weight(F.col("rating"), binary, src).alias("w")).collect()]
    assert got == [0.3, 1.0, 1.0, 0.3]


def test_a_sorted_file_without_timestamps_is_not_mistaken_for_time(spark):
    """Book-Crossing's ratings are sorted by user and ISBN; that order must not become "time"."""
    from sparkrec.features.events import build_events

    rows = [(u, f"{i:010d}", 5.0, None, u * 100 + i) for u in (1, 2) for i in range(40)]
    interactions = spark.createDataFrame(rows, "user_id string, item_id string, rating double, "
                                               "event_time timestamp, source_line long")
    users = spark.createDataFrame([("1", 0), ("2", 1)], "user_id string, user_idx int")
    items = spark.createDataFrame([(f"{i:010d}", i) for i in range(40)], "item_id string, item_idx int")
    base = {"interactions": {"path": "x", "columns": {"user": "u", "item": "i"}}}

    def seqs(order: str) -> dict[int, list[int]]:
        src = GenericSource.model_validate({**base, "file_order": order})
        pdf = build_events(interactions, users, items, WeightConfig(), src).toPandas()
        return {u: g.sort_values("item_idx")["seq"].tolist() for u, g in pdf.groupby("user_idx")}

    assert all(s == sorted(s) for s in seqs("chronological").values())  # file lines = time
    shuffled = seqs("arbitrary")
    for s in shuffled.values():
        assert sorted(s) == list(range(1, 41)) and s != sorted(s)  # positions, not the ISBN order
    assert shuffled[0] != shuffled[1] and shuffled == seqs("arbitrary")  # per user, and reproducible
