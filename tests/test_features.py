"""Features on the bundled sample through real Spark and Delta: indices, histories, splits."""

from __future__ import annotations

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
