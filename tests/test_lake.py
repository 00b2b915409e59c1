"""The delta-rs engine against real Delta tables on disk, checked with deltalake itself."""

import datetime as dt
import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from deltalake import DeltaTable
from pyspark.sql import Row
from pyspark.sql import functions as F

from sparkrec.arrowframes import collect_arrow
from sparkrec.lake import (
    DeltaRsLake,
    LakeError,
    RunContext,
    SchemaMismatchError,
    arrowmerge,
    delta_jars_available,
    deltars,
)

UTC = dt.UTC


@pytest.fixture(params=["driver", "spark"])
def merge_path(request, monkeypatch):
    """Every MERGE test runs twice: planned in the driver with Arrow (small sources, the
    default here) and planned in Spark (what larger sources take)."""
    if request.param == "spark":
        monkeypatch.setattr(deltars, "DRIVER_MERGE_ROWS", -1)
    return request.param


def _rows(spark, keys, tag):
    return spark.createDataFrame([Row(k=k, v=f"{tag}{k}", ts=dt.datetime(2020, 1, 1, tzinfo=UTC),
                                      vec=[float(k), 1.0], attrs={"a": tag}) for k in keys])


def test_overwrite_read_and_real_delta_log(spark, lake):
    result = lake.overwrite("t", _rows(spark, range(10), "x").repartition(3))
    assert result.version == 0 and result.rows_written == 10
    assert lake.read("t").count() == 10
    dt_ = DeltaTable(lake.location("t"))  # a real Delta table, read by an independent reader
    assert dt_.version() == 0 and len(dt_.file_uris()) == 3
    assert [f.name for f in dt_.schema().fields] == ["k", "v", "ts", "vec", "attrs"]


@pytest.mark.usefixtures("merge_path")
def test_upsert_rewrites_only_changed_keys_and_time_travels(spark, lake):
    lake.overwrite("t", _rows(spark, range(10), "x"))
    result = lake.upsert("t", _rows(spark, range(8, 13), "y"), ["k"])
    assert (result.inserted, result.updated, result.unchanged) == (3, 2, 0)
    got = {r.k: r.v for r in lake.read("t").collect()}
    assert got == {**{k: f"x{k}" for k in range(8)}, **{k: f"y{k}" for k in range(8, 13)}}
    again = lake.upsert("t", _rows(spark, range(8, 13), "y"), ["k"])
    assert (again.inserted, again.updated, again.unchanged, again.rows_written) == (0, 0, 5, 0)
    assert lake.version("t") == 2  # one commit per write, even an empty one
    assert lake.read("t", version=0).count() == 10 and lake.read("t").count() == 13
    history = lake.history("t")
    assert [h["version"] for h in history] == [2, 1, 0]
    assert history[1]["sparkrec.operation"] == "merge" and history[1]["sparkrec.updated"] == "2"
    assert all(h["sparkrec.stage"] == "test" for h in history)


@pytest.mark.usefixtures("merge_path")
def test_upsert_rejects_duplicate_source_keys(spark, lake):
    lake.overwrite("t", _rows(spark, range(3), "x"))
    with pytest.raises(LakeError, match="one row per key"):
        lake.upsert("t", _rows(spark, [1, 1], "z"), ["k"])


def test_upsert_creating_a_table_rejects_duplicate_keys_and_leaves_nothing(spark, lake):
    """A new table's keys are checked on the files just written: a failed check leaves no
    table and none of its files."""
    with pytest.raises(LakeError, match="one row per key"):
        lake.upsert("fresh", _rows(spark, [1, 2, 1], "z"), ["k"])
    assert not lake.exists("fresh")
    folder = Path(lake.location("fresh"))
    assert not folder.exists() or not list(folder.rglob("*.parquet"))
    assert lake.upsert("fresh", _rows(spark, [1, 2], "z"), ["k"]).inserted == 2


def _ranked(spark, lists, tag):
    return spark.createDataFrame([Row(g=g, r=r, v=f"{tag}{g}{r}") for g, n in lists.items() for r in range(1, n + 1)])


@pytest.mark.usefixtures("merge_path")
def test_upsert_replace_within_deletes_ranks_a_group_no_longer_has(spark, lake):
    lake.overwrite("ranked", _ranked(spark, {"a": 5, "b": 5}, "x"))
    result = lake.upsert("ranked", _ranked(spark, {"a": 3, "c": 2}, "y"), ["g", "r"], replace_within=["g"])
    assert (result.inserted, result.updated, result.deleted) == (2, 3, 2)
    got = sorted((r.g, r.r, r.v) for r in lake.read("ranked").collect())
    assert got == sorted([("a", r, f"ya{r}") for r in (1, 2, 3)] + [("b", r, f"xb{r}") for r in range(1, 6)]
                         + [("c", r, f"yc{r}") for r in (1, 2)])
    assert lake.version("ranked") == 1  # deletes and updates in one commit
    assert lake.history("ranked")[0]["sparkrec.deleted"] == "2"
    with pytest.raises(LakeError, match="must be columns of the MERGE keys"):
        lake.upsert("ranked", _ranked(spark, {"a": 1}, "z"), ["g", "r"], replace_within=["v"])


def _mixed(spark, groups, tag, changed=()):
    """Rows of every column kind a MERGE must compare: nulls, NaN, lists and maps."""
    return spark.createDataFrame([
        Row(g=g, r=r, v=None if r == 2 else f"{tag if g in changed else 'x'}{g}{r}",
            x=float("nan") if r == 3 else r / 2, vec=[float(g), float(r)], attrs={"g": str(g)})
        for g, n in groups.items() for r in range(1, n + 1)])


def test_driver_and_spark_merges_agree_and_the_driver_rewrites_only_matching_files(spark, tmp_path, monkeypatch):
    lakes = {p: DeltaRsLake(spark, str(tmp_path / p), "test", context=RunContext(stage="test"))
             for p in ("driver", "spark")}
    base = _mixed(spark, {g: 4 for g in range(20)}, "x").repartitionByRange(4, "g")
    for lk in lakes.values():
        lk.overwrite("t", base)
    # groups 6-7: identical; 8: one rank fewer; 9: changed text; 30: new
    source = _mixed(spark, {6: 4, 7: 4, 8: 3, 9: 4, 30: 2}, "y", changed=(9,))
    # file statistics leave the driver one of the four files (groups 5-9) to read
    candidates = lakes["driver"]._files_for(DeltaTable(lakes["driver"].location("t")),
                                             arrowmerge.sorted_values(collect_arrow(source), ["g"]))
    assert len(candidates) == 1
    results = {}
    for path, lk in lakes.items():
        monkeypatch.setattr(deltars, "DRIVER_MERGE_ROWS", 100_000 if path == "driver" else -1)
        before = set(DeltaTable(lk.location("t")).file_uris())
        results[path] = lk.upsert("t", source, ["g", "r"], replace_within=["g"])
        assert len(before - set(DeltaTable(lk.location("t")).file_uris())) == 1  # only that file is rewritten
    counts = {p: (r.inserted, r.updated, r.unchanged, r.deleted) for p, r in results.items()}
    assert counts["driver"] == counts["spark"] == (2, 3, 12, 1)

    def rows(lk):
        return sorted((r.g, r.r, r.v, None if r.x != r.x else r.x, tuple(r.vec), tuple(r.attrs.items()))
                      for r in lk.read("t").collect())

    assert rows(lakes["driver"]) == rows(lakes["spark"])
    assert len(rows(lakes["driver"])) == 80 - 1 + 2


def test_arrow_rows_are_read_merged_and_appended_as_spark_rows_are(spark, lake):
    """The driver's Arrow API (a streaming micro-batch's): the same table contents as the
    DataFrame calls, and a read that skips files whose statistics rule them out."""
    import pyarrow as pa
    from pyspark.sql import types as T

    lake.overwrite("t", _ranked(spark, {g: 3 for g in range(8)}, "x").repartition(4, "g"))
    got = lake.read_arrow("t", ["g", "r"], where={"g": [2, 5]})
    assert sorted(zip(got.column("g").to_pylist(), got.column("r").to_pylist(), strict=True)) == [
        (g, r) for g in (2, 5) for r in (1, 2, 3)]
    source = collect_arrow(_ranked(spark, {2: 2, 9: 1}, "y"))
    result = lake.upsert_arrow("t", source, ["g", "r"], replace_within=["g"])
    assert (result.inserted, result.updated, result.deleted) == (1, 2, 1)
    expected = _ranked(spark, {**{g: 3 for g in range(8)}, 2: 2, 9: 1}, "x").collect()
    assert sorted((r["g"], r["r"]) for r in lake.read("t").collect()) == sorted((r["g"], r["r"]) for r in expected)
    assert {r["v"] for r in lake.read("t").filter("g = 2").collect()} == {"y21", "y22"}
    schema = T.StructType([T.StructField("a", T.LongType()), T.StructField("b", T.StringType())])
    lake.append_arrow("new", pa.table({"b": ["x"], "a": [1]}), schema)  # creates it; columns by name
    lake.append_arrow("new", pa.table({"a": [2], "b": ["y"]}), schema)
    assert sorted(tuple(r) for r in lake.read("new").collect()) == [(1, "x"), (2, "y")]
    with pytest.raises(SchemaMismatchError, match="lack column"):
        lake.append_arrow("new", pa.table({"a": [3]}), schema)


def test_files_with_nested_columns_keep_their_statistics(spark, lake, monkeypatch):
    """A struct, list or map column must not cost a file its statistics: delta-rs drops a file's
    whole statistics when one null count is malformed, and without a record count or min/max a
    MERGE can neither prune nor size its candidate files (a streamed refresh of Book-Crossing's
    1.6M explained rows fell back to rewriting them all through Spark, 27 s a batch)."""
    from sparkrec.lake import deltars

    df = _mixed(spark, {g: 3 for g in range(8)}, "x").withColumn("s", F.struct(F.col("r").alias("a"), F.col("v")))
    lake.overwrite("nested", df.repartitionByRange(4, "g"))
    actions = DeltaTable(lake.location("nested")).get_add_actions(flatten=True)
    assert sum(actions.column("num_records").to_pylist()) == 24
    assert None not in actions.column("min.g").to_pylist()
    # the MERGE of two groups reads the one file holding them, planned in the driver
    monkeypatch.setattr(deltars, "DRIVER_MERGE_TARGET_ROWS", 10)
    result = lake.upsert("nested", df.filter("g in (2, 3)"), ["g", "r"])
    assert (result.updated, result.unchanged) == (0, 6)
    # a file whose statistics lack its count is sized by its Parquet footer, not guessed
    candidates = lake._files_for(DeltaTable(lake.location("nested")), {"g": np.array([2, 3])},
                                 count_rows=lambda path: lake._footer_rows("nested", path))
    assert candidates is not None and sum(lake._footer_rows("nested", p) for p in candidates) == 6


def test_schema_is_enforced(spark, lake):
    lake.overwrite("t", _rows(spark, range(3), "x"))
    with pytest.raises(SchemaMismatchError, match="missing \\['v'\\]"):
        lake.append("t", _rows(spark, [5], "x").drop("v"))
    with pytest.raises(SchemaMismatchError, match="column 'k' has type string"):
        lake.append("t", _rows(spark, [5], "x").withColumn("k", F.col("k").cast("string")))


def test_empty_tables_and_missing_tables(spark, lake):
    lake.overwrite("e", _rows(spark, range(3), "x").limit(0))
    assert lake.exists("e") and lake.read("e").count() == 0
    assert not lake.exists("nope")
    with pytest.raises(LakeError, match="does not exist"):
        lake.read("nope")


def test_spark_delta_commit_settings_do_not_outlive_the_write(spark, tmp_path):
    """Needs no Delta jar: the settings are session conf. Set during the write (the write
    fails here without the jar, which must still clear them), gone after it."""
    from sparkrec.lake import RunContext, SparkDeltaLake
    from sparkrec.lake.sparkdelta import TXN_KEYS, USER_METADATA

    lake = SparkDeltaLake(spark, str(tmp_path), "test", context=RunContext("stream", txn=("app", 7)))
    with lake._commit_metadata("append", rows=3):
        assert json.loads(spark.conf.get(USER_METADATA))["sparkrec.rows"] == "3"
        assert [spark.conf.get(k) for k in TXN_KEYS] == ["app", "7"]
    with pytest.raises(RuntimeError), lake._commit_metadata("merge", inserted=1):
        raise RuntimeError("the write failed")
    assert [spark.conf.get(k, None) for k in (USER_METADATA, *TXN_KEYS)] == [None, None, None]


def test_spark_delta_engine(spark, tmp_path):
    if not delta_jars_available(spark):
        pytest.skip("spark-delta engine: the io.delta jars are not on this JVM's classpath "
                    "(Maven is unreachable here); run with --packages io.delta:delta-spark_2.12:3.3.2")
    from sparkrec.lake import SparkDeltaLake

    lake = SparkDeltaLake(spark, str(tmp_path), "test")
    lake.overwrite("t", _rows(spark, range(5), "x"))
    result = lake.upsert("t", _rows(spark, range(3, 7), "y"), ["k"])
    assert (result.inserted, result.updated) == (2, 2)
    lake.overwrite("ranked", _ranked(spark, {"a": 5, "b": 5}, "x"))
    shrunk = lake.upsert("ranked", _ranked(spark, {"a": 3}, "y"), ["g", "r"], replace_within=["g"])
    assert (shrunk.updated, shrunk.deleted) == (3, 2) and lake.read("ranked").count() == 8
    assert lake.read("t", version=0).count() == 5


def test_compaction_keeps_rows_transactions_and_readers(spark, lake):
    """OPTIMIZE on delta-rs: a stream's many small files become one, in a commit that changes
    no rows, keeps the application transactions and is no 'last write' of the data."""
    from dataclasses import replace

    for n in range(6):
        writer = lake.with_context(replace(lake.context, txn=("app", n)))
        writer.append("c", _rows(spark, [n], "x").coalesce(1))
    before = sorted(tuple(r) for r in lake.read("c").select("k", "v").collect())
    assert lake.compact("c", min_files=7) == 0  # too few files: nothing done
    version = lake.version("c")
    assert lake.compact("c", min_files=6) == 6
    assert lake.version("c") == version + 1 and len(DeltaTable(lake.location("c")).file_uris()) == 1
    assert sorted(tuple(r) for r in lake.read("c").select("k", "v").collect()) == before
    assert lake.transaction_version("c", "app") == 5
    assert lake.history("c")[0]["sparkrec.operation"] == "optimize"
    assert lake.last_write("c")["version"] == version


def test_the_frozen_lists_are_the_last_batch_written_not_a_compaction(spark, lake):
    from dataclasses import replace

    from sparkrec.stream.prequential import FrozenLists, frozen_version

    lake.overwrite("recommendations", _ranked(spark, {1: 2}, "batch").coalesce(1))
    tracked = FrozenLists()  # a long-running query's: after its first look, only newer commits
    assert tracked(lake) == 0

    def stream_writes(n: int) -> None:
        stream = lake.with_context(replace(lake.context, txn=("stream", n)))
        stream.append("recommendations", _ranked(spark, {10 + n: 1}, "s").coalesce(1))

    for n in range(3):
        stream_writes(n)
    assert lake.compact("recommendations", min_files=2) > 0
    assert frozen_version(lake) == tracked(lake) == 0
    lake.upsert("recommendations", _ranked(spark, {1: 3}, "batch"), ["g", "r"])  # a batch refresh
    stream_writes(3)
    assert frozen_version(lake) == tracked(lake) == lake.version("recommendations") - 1


def _files(lake, table):
    """Each file's path, rows and min/max of ``g``, as the Delta log records them."""
    import pyarrow as pa

    actions = pa.table(DeltaTable(lake.location(table)).get_add_actions(flatten=True)).to_pylist()
    return {a["path"]: (a["num_records"], a.get("min.g"), a.get("max.g")) for a in actions}


def test_a_clustered_table_keeps_narrow_ranges_through_merges_and_compaction(spark, lake):
    """Why: a streamed refresh MERGEs a few users' lists; in files of narrow user ranges it
    rewrites only theirs (Book-Crossing's 1.6M rows were rewritten whole every batch)."""
    import pyarrow as pa

    from sparkrec.lake import Clustering

    clustering = Clustering(("g",), file_rows=20)
    groups = {f"u{g:03d}": 4 for g in range(40)}  # 160 rows: 8 files of 5 whole groups each
    lake.overwrite("c", _ranked(spark, groups, "x").repartition(3), clustering)
    files = _files(lake, "c")
    assert sorted(n for n, _, _ in files.values()) == [20] * 8
    ranges = sorted((lo, hi) for _, lo, hi in files.values())
    assert all(hi < next_lo for (_, hi), (next_lo, _) in itertools.pairwise(ranges))  # disjoint
    # string statistics are written only when short: the longer ones would bloat the log
    lake.overwrite("long", spark.createDataFrame([Row(g="a", v="x" * 40)]))
    stats = pa.table(DeltaTable(lake.location("long")).get_add_actions(flatten=True)).to_pylist()[0]
    assert stats["min.g"] == "a" and stats.get("min.v") is None

    # three users refreshed (one rank fewer for u012), one new user in the middle of the range
    source = collect_arrow(_ranked(spark, {"u005": 4, "u012": 3, "u031": 4, "u020a": 2}, "y"))
    before = _files(lake, "c")
    result = lake.upsert_arrow("c", source, ["g", "r"], replace_within=["g"])
    assert (result.inserted, result.updated, result.deleted) == (2, 11, 1)
    after = _files(lake, "c")
    removed, added = set(before) - set(after), set(after) - set(before)
    assert len(removed) == 3 and len(added) == 4  # each rewritten in place of itself, plus the new user's
    for path in removed:
        _, lo, hi = before[path]
        assert sum(1 for p in added if lo <= after[p][1] and after[p][2] <= hi) >= 1
    expected = {**{(g, r): f"x{g}{r}" for g, n in groups.items() for r in range(1, n + 1)
                   if g not in ("u005", "u012", "u031")},
                **{(g, r): f"y{g}{r}" for g, n in {"u005": 4, "u012": 3, "u031": 4, "u020a": 2}.items()
                   for r in range(1, n + 1)}}
    assert {(r.g, r.r): r.v for r in lake.read("c").collect()} == expected

    # more new users: small files, which the clustered compaction merges in order, alone
    for n in range(3):
        lake.upsert_arrow("c", pa.table({"g": [f"v{n}"], "r": [1], "v": ["z"]}), ["g", "r"], replace_within=["g"])
    full = {p for p, (n, _, _) in _files(lake, "c").items() if n >= 10}
    last = lake.last_write("c")["version"]
    assert lake.compact("c", min_files=2, clustering=clustering) == 4
    compacted = _files(lake, "c")
    assert full <= set(compacted)  # the narrow files are left as they are
    assert sum(1 for n, _, _ in compacted.values() if n < 10) == 1
    assert len(expected) + 3 == lake.read("c").count()
    assert lake.last_write("c")["version"] == last  # a compaction is no write of the data
