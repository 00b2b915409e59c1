"""The delta-rs engine's commit protocol with two writers at once and after crashes, on real
Spark and real Delta tables on disk.

The race is made certain, not left to timing: each writer waits for the other after planning
and writing its files, just before its first commit (a barrier in a subclass), so both plan
on the same version and exactly one of them loses.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from deltalake import DeltaTable
from pyspark.sql import Row
from pyspark.sql import functions as F

from sparkrec.features.indexing import extend_index
from sparkrec.lake import DeltaRsLake, LakeError, RunContext


class RacingLake(DeltaRsLake):
    """A real delta-rs lake whose first file write waits for the other writer's."""

    barrier: threading.Barrier

    def _write_files(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        result = super()._write_files(*args, **kwargs)
        if not getattr(self, "_raced", False):
            self._raced = True
            with contextlib.suppress(threading.BrokenBarrierError):
                self.barrier.wait(timeout=120)
        return result


def _racing(spark, root, run_id, barrier, retries=5):
    lake = RacingLake(spark, str(root), "test", context=RunContext(stage="test", run_id=run_id))
    lake.barrier, lake.commit_retries = barrier, retries
    return lake


def _both(*calls):
    """Runs the calls at once; returns each one's result or exception."""
    def run(call):
        try:
            return call()
        except Exception as exc:  # the test inspects it
            return exc

    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(run, calls))


def _kv(spark, keys, tag):
    return spark.createDataFrame([Row(k=k, v=f"{tag}{k}") for k in keys], "k long, v string")


def _data_files(lake, table):
    folder = lake.location(table)
    return sorted(f for f in os.listdir(folder) if f.endswith(".parquet"))


def _active_files(lake, table):
    return sorted(os.path.basename(u) for u in DeltaTable(lake.location(table)).file_uris())


def _logged_files(lake, table):
    """Every file some version of the table references: what may stay on disk."""
    where = lake.location(table)
    versions = range(DeltaTable(where).version() + 1)
    return {os.path.basename(u) for v in versions for u in DeltaTable(where, version=v).file_uris()}


def _plain(spark, root):
    return DeltaRsLake(spark, str(root), "test", context=RunContext(stage="test"))


def test_concurrent_merges_never_duplicate_keys(spark, tmp_path):
    barrier = threading.Barrier(2)
    a, b = (_racing(spark, tmp_path, run, barrier) for run in ("a", "b"))
    _plain(spark, tmp_path).overwrite("t", _kv(spark, range(10), "x"))
    results = _both(lambda: a.upsert("t", _kv(spark, range(10, 20), "a"), ["k"]),
                    lambda: b.upsert("t", _kv(spark, range(15, 25), "b"), ["k"]))
    assert not [r for r in results if isinstance(r, Exception)], results
    rows = a.read("t").collect()
    assert len(rows) == len({r.k for r in rows}) == 25  # one row per key: the loser re-planned
    got = {r.k: r.v for r in rows}
    first = "a" if results[0].version == 1 else "b"  # who committed first; the other updated it
    last = "b" if first == "a" else "a"
    overlap = {k: got[k] for k in range(15, 20)}
    assert overlap == {k: f"{last}{k}" for k in range(15, 20)}
    loser = results[1] if first == "a" else results[0]
    assert (loser.version, loser.updated, loser.inserted) == (2, 5, 5)
    assert set(_data_files(a, "t")) == _logged_files(a, "t")  # the lost attempt's files are gone


def test_a_conflict_without_retries_fails_clearly_and_leaves_no_files(spark, tmp_path):
    barrier = threading.Barrier(2)
    a, b = (_racing(spark, tmp_path, run, barrier, retries=0) for run in ("a", "b"))
    _plain(spark, tmp_path).overwrite("t", _kv(spark, range(5), "x"))
    results = _both(lambda: a.upsert("t", _kv(spark, range(5, 10), "a"), ["k"]),
                    lambda: b.upsert("t", _kv(spark, range(5, 10), "b"), ["k"]))
    errors = [r for r in results if isinstance(r, Exception)]
    assert len(errors) == 1 and isinstance(errors[0], LakeError)
    assert "table 't': another writer committed up to version 1 after this write read version 0" in str(errors[0])
    rows = a.read("t").collect()
    assert len(rows) == len({r.k for r in rows}) == 10
    assert set(_data_files(a, "t")) == _logged_files(a, "t")


def test_concurrent_index_extensions_hand_out_each_index_once(spark, tmp_path):
    barrier = threading.Barrier(2)
    a, b = (_racing(spark, tmp_path, run, barrier) for run in ("a", "b"))
    ids = lambda names: spark.createDataFrame([(n,) for n in names], "user_id string")  # noqa: E731
    extend_index(_plain(spark, tmp_path), "user_index", ids([f"old{i}" for i in range(5)]), "user_id", "user_idx")
    results = _both(lambda: extend_index(a, "user_index", ids(["x1", "x2", "x3"]), "user_id", "user_idx"),
                    lambda: extend_index(b, "user_index", ids(["x2", "y1", "y2"]), "user_id", "user_idx"))
    assert not [r for r in results if isinstance(r, Exception)], results
    index = {r.user_id: r.user_idx for r in a.read("user_index").collect()}
    assert a.read("user_index").count() == len(index) == 10
    assert sorted(index.values()) == list(range(10))  # dense, no index twice
    assert {index[f"old{i}"] for i in range(5)} == set(range(5))  # existing ids never moved


def _age(path, hours):
    old = time.time() - hours * 3600
    os.utime(path, (old, old))


def test_vacuum_deletes_unreferenced_files_older_than_the_retention(spark, lake, tmp_path):
    from sparkrec.cli import main

    lake.overwrite("t", _kv(spark, range(4), "x"))
    lake.overwrite("t", _kv(spark, range(4), "y"))  # v0's files are now only in history
    folder = lake.location("t")
    for name in os.listdir(folder):
        _age(os.path.join(folder, name), 400)
    fresh, old = (os.path.join(folder, f"part-{age}-c000.zstd.parquet") for age in ("fresh", "old"))
    for path in (fresh, old):
        with open(path, "wb") as fh:
            fh.write(b"orphan of a killed write")
    _age(old, 400)
    killed = lake.location("killed_first_write")  # a first write killed before its commit: no log
    os.makedirs(killed)
    with open(os.path.join(killed, "part-dead-c000.zstd.parquet"), "wb") as fh:
        fh.write(b"x")
    _age(os.path.join(killed, "part-dead-c000.zstd.parquet"), 400)
    active, present = _active_files(lake, "t"), _data_files(lake, "t")

    conf = tmp_path / "c.yaml"
    conf.write_text(f"lake: {{root: {lake.root}, namespace: test, vacuum_retention_hours: 168}}\n"
                    "spark: {master: 'local[2]'}\n")
    assert main(["vacuum", "--conf", str(conf)]) == 0

    assert _active_files(lake, "t") == active
    # Only the old orphan goes: the fresh one may belong to a write in progress, and v0's files
    # were removed from the table just now (time travel keeps them for the retention).
    assert _data_files(lake, "t") == [f for f in present if f != "part-old-c000.zstd.parquet"]
    assert os.listdir(killed) == []
    assert {r.v for r in lake.read("t").collect()} == {f"y{k}" for k in range(4)}
    assert lake.read("t", version=0).count() == 4


def test_a_first_write_killed_before_its_commit_does_not_block_the_table(spark, lake):
    folder = lake.location("t")
    os.makedirs(os.path.join(folder, "_delta_log"))
    _kv(spark, range(3), "dead").toPandas().to_parquet(os.path.join(folder, "part-dead-c000.zstd.parquet"))
    assert not lake.exists("t")
    with pytest.raises(LakeError, match="does not exist"):
        lake.read("t")
    result = lake.upsert("t", _kv(spark, range(2), "x"), ["k"])
    assert (result.version, result.inserted) == (0, 2)
    assert sorted((r.k, r.v) for r in lake.read("t").collect()) == [(0, "x0"), (1, "x1")]


def test_a_failed_write_deletes_the_files_it_wrote(spark, lake):
    # Last in the module: once, on the old code, the job right after this one's failed task
    # lost its Python worker ("Socket is closed").
    lake.overwrite("t", _kv(spark, range(4), "x"))

    @F.udf("string")
    def explode_on_7(k):  # a task failure after other tasks have written their files
        if k == 7:
            time.sleep(2)
            raise ValueError("boom")
        return "y"

    bad = _kv(spark, range(4, 8), "y").repartition(4).withColumn("v", explode_on_7("k"))
    with pytest.raises(Exception, match="boom"):
        lake.append("t", bad)
    assert _data_files(lake, "t") == _active_files(lake, "t")
    assert lake.read("t").count() == 4 and lake.version("t") == 0
