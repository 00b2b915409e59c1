"""Streaming a source without timestamps (Book-Crossing's kind): replay order and event order.

Such a source's events have no time, so a streamed event must not be placed by its line in the
landing file (that would put it before most of its user's history): a pair the user already has
keeps its place, a new pair follows the user's latest event, in arrival order. Both micro-batch
paths (Spark and the driver's Arrow) must number them the same way.
"""

from __future__ import annotations

import shutil

import pyarrow as pa
import pytest
from pyspark.sql import functions as F

from sparkrec import schemas
from sparkrec.config import load_config
from sparkrec.lake import DeltaRsLake, RunContext

HEADER = "user,item,rating\n"
# user u0 rates items 1-9 in file order; u1 items 5-9; u2 items 1-3
TRAIN = HEADER + "".join(f"u0,{i},7\n" for i in range(1, 10)) + "".join(f"u1,{i},6\n" for i in range(5, 10)) + \
    "".join(f"u2,{i},5\n" for i in range(1, 4))
ITEMS = "id,title\n" + "".join(f"{i},Book {i}\n" for i in range(1, 21))


def overrides(root, order: str = "chronological") -> list[str]:
    return [f"lake.root={root / 'lake'}", "data.dataset=generic",
            f"data.generic.interactions.path={root / 'interactions.csv'}",
            "data.generic.interactions.columns={user: user, item: item, rating: rating}",
            f"data.generic.items.path={root / 'items.csv'}", "data.generic.items.columns={id: id, title: title}",
            "data.generic.rating_min=0", "data.generic.rating_max=10", f"data.generic.file_order={order}",
            f"train.workdir={root / 'work'}", f"train.mlflow_uri={root / 'ml'}",
            f"stream.path={root / 'landing'}", f"stream.checkpoint={root / 'checkpoint'}"]


def test_continued_sequences_spark_and_arrow(spark, tmp_path):
    from sparkrec.features.events import continue_sequences, in_arrival_order
    from sparkrec.stream import driver

    lake = DeltaRsLake(spark, str(tmp_path / "lake"), "t", context=RunContext(stage="test"))
    existing = pa.table({"user_idx": pa.array([0, 0, 0, 1], pa.int32()),
                         "item_idx": pa.array([10, 11, 12, 10], pa.int32()),
                         "rating": pa.array([1.0] * 4), "weight": pa.array([1.0] * 4),
                         "event_time": pa.nulls(4, pa.timestamp("us", tz="UTC")),
                         "seq": pa.array([1, 2, 3, 1], pa.int64()), "is_positive": pa.array([True] * 4)})
    lake.upsert_arrow("events", existing, ["user_idx", "item_idx", "seq"], schema=schemas.EVENTS)
    # (user, item, arrival position): a known pair, two new pairs out of order, a new user
    batch = existing.slice(0, 0).to_pylist()
    for u, i, pos in ((0, 11, 5), (0, 21, 7), (0, 20, 2), (2, 10, 1), (2, 30, 3)):
        batch.append({**existing.to_pylist()[0], "user_idx": u, "item_idx": i, "seq": pos})
    events = pa.Table.from_pylist(batch, existing.schema)
    want = {(0, 11): 2, (0, 20): 4, (0, 21): 5, (2, 10): 1, (2, 30): 2}

    by_arrow = driver.continue_sequences(events, lake)
    assert {(r["user_idx"], r["item_idx"]): r["seq"] for r in by_arrow.to_pylist()} == want
    by_spark = continue_sequences(spark.createDataFrame(events.to_pandas(), schemas.EVENTS), lake.read("events"))
    assert {(r["user_idx"], r["item_idx"]): r["seq"] for r in by_spark.collect()} == want

    rows = pa.table({"source_file": ["b.csv", "a.csv", "b.csv", "a.csv"],
                     "source_line": pa.array([2, 9, 1, 3], pa.int64())})
    assert driver.in_arrival_order(rows).column("source_line").to_pylist() == [4, 2, 3, 1]
    spark_rows = in_arrival_order(spark.createDataFrame(rows.to_pandas())).collect()
    assert sorted((r["source_file"], r["source_line"]) for r in spark_rows) == \
        [("a.csv", 1), ("a.csv", 2), ("b.csv", 3), ("b.csv", 4)]


@pytest.mark.parametrize("order", ["chronological", "arbitrary"])
def test_replay_holds_out_a_share_of_a_source_without_time(spark, tmp_path, order):
    from sparkrec.stream.replay import held_out, kept

    (tmp_path / "interactions.csv").write_text(TRAIN)
    (tmp_path / "items.csv").write_text(ITEMS)
    cfg = load_config(None, [*overrides(tmp_path, order), "stream.replay_fraction=0.3"])
    tail, columns, cut = held_out(cfg, spark)
    head = kept(cfg, spark, cut)
    assert columns == ["user", "item", "rating"]
    tail_rows = [(r["user"], r["item"]) for r in tail.collect()]
    head_rows = [(r["user"], r["item"]) for r in head.collect()]
    assert len(tail_rows) + len(head_rows) == 17 and not set(tail_rows) & set(head_rows)
    assert 3 <= len(tail_rows) <= 7
    if order == "chronological":  # the file's last lines, in file order
        in_file = [tuple(line.split(",")[:2]) for line in TRAIN.splitlines()[1:]]
        assert tail_rows == in_file[-len(tail_rows):]
    else:  # a seeded shuffle: not the file's tail, the same on every run and in every directory
        assert tail_rows != [r for r in tail_rows if r[0] == "u2"]
        assert tail_rows == [(r["user"], r["item"]) for r in held_out(cfg, spark)[0].collect()]
        elsewhere = tmp_path / "another" / "checkout"
        elsewhere.mkdir(parents=True)
        shutil.copy(tmp_path / "interactions.csv", elsewhere / "interactions.csv")
        moved = load_config(None, [*overrides(tmp_path, order), "stream.replay_fraction=0.3",
                                   f"data.generic.interactions.path={elsewhere / 'interactions.csv'}"])
        assert tail_rows == [(r["user"], r["item"]) for r in held_out(moved, spark)[0].collect()]


def test_both_paths_continue_the_sequences_of_a_source_without_time(spark, tmp_path):
    from sparkrec.features.job import run_features
    from sparkrec.ingest.job import run_ingest
    from sparkrec.stream.batch import process_batch
    from sparkrec.stream.once import BatchTxn

    (tmp_path / "interactions.csv").write_text(TRAIN)
    (tmp_path / "items.csv").write_text(ITEMS)
    cfg = load_config(None, overrides(tmp_path, "arbitrary"))
    lake = DeltaRsLake(spark, cfg.lake.root, cfg.namespace, context=RunContext(stage="fixture"))
    run_ingest(cfg, spark, lake)
    run_features(cfg, spark, lake)
    shutil.copytree(tmp_path / "lake", tmp_path / "pristine")
    batch = tmp_path / "batch.csv"
    # u0 re-rates item 2 and takes two new items; u3 is new
    batch.write_text(HEADER + "u0,12,8\nu0,2,3\nu3,4,9\nu0,11,6\n")
    before = {r["user_idx"]: r["last"] for r in lake.read("events").groupBy("user_idx").agg(
        F.max("seq").alias("last")).collect()}
    tables = {}
    for driver_bytes in (0, 4_000_000):
        shutil.rmtree(tmp_path / "lake")
        shutil.copytree(tmp_path / "pristine", tmp_path / "lake")
        run_cfg = load_config(None, [*overrides(tmp_path, "arbitrary"), f"stream.driver_max_bytes={driver_bytes}"])
        lake = DeltaRsLake(spark, run_cfg.lake.root, run_cfg.namespace, context=RunContext(stage="test"))
        report = process_batch(run_cfg, spark, lake, [str(batch)], "csv", BatchTxn("timeless", 0), refresh=False)
        assert report.in_driver == bool(driver_bytes) and report.accepted == 4
        index = {r["user_id"]: r["user_idx"] for r in lake.read("user_index").collect()}
        items = {r["item_id"]: r["item_idx"] for r in lake.read("item_index").collect()}
        events = {(r["user_idx"], r["item_idx"]): (r["seq"], r["rating"]) for r in lake.read("events").collect()}
        u0 = index["u0"]
        assert len(events) == 20  # the re-rating updated its pair's event, it added none
        assert events[(u0, items["2"])][1] == 3.0
        # the new pairs follow u0's latest event in arrival order; the re-rated pair kept its place
        assert events[(u0, items["12"])][0] == before[u0] + 1 and events[(u0, items["11"])][0] == before[u0] + 2
        assert events[(index["u3"], items["4"])][0] == 1
        hist = lake.read("user_histories").filter(F.col("user_idx") == u0).collect()[0]
        assert hist["item_idxs"][-2:] == [items["12"], items["11"]]
        tables[driver_bytes] = events
    assert tables[0] == tables[4_000_000]
