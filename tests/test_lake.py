"""The delta-rs engine against real Delta tables on disk, checked with deltalake itself."""

import datetime as dt

import pytest
from deltalake import DeltaTable
from pyspark.sql import Row
from pyspark.sql import functions as F

from sparkrec.lake import LakeError, SchemaMismatchError, delta_jars_available

UTC = dt.UTC


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


def test_upsert_rejects_duplicate_source_keys(spark, lake):
    lake.overwrite("t", _rows(spark, range(3), "x"))
    with pytest.raises(LakeError, match="one row per key"):
        lake.upsert("t", _rows(spark, [1, 1], "z"), ["k"])


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


def test_spark_delta_engine(spark, tmp_path):
    if not delta_jars_available(spark):
        pytest.skip("spark-delta engine: the io.delta jars are not on this JVM's classpath "
                    "(Maven is unreachable here); run with --packages io.delta:delta-spark_2.12:3.3.2")
    from sparkrec.lake import SparkDeltaLake

    lake = SparkDeltaLake(spark, str(tmp_path), "test")
    lake.overwrite("t", _rows(spark, range(5), "x"))
    result = lake.upsert("t", _rows(spark, range(3, 7), "y"), ["k"])
    assert (result.inserted, result.updated) == (2, 2)
    assert lake.read("t", version=0).count() == 5
