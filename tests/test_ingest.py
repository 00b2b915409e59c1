"""Ingestion on real Spark + real Delta: every row accepted or quarantined with its reason."""

from __future__ import annotations

import base64
import logging
import os

import pandas as pd
import pytest
from pyspark.sql import functions as F

from sparkrec.config import load_config
from sparkrec.ingest.job import run_ingest
from sparkrec.ingest.reader import InputError
from sparkrec.lake import DeltaRsLake, RunContext

INTERACTIONS = """user,item,rating,ts
1,10,4.0,1500000000
2,10,5.0,1500000001
,10,3.0,1500000002
3,abc,3.0,1500000003
3,10,eleven,1500000004
3,10,9.0,1500000005
3,10,4.0,notatime
3,10,4.0,99999999999
1,10,4.0,1500000000
1,10,2.0,1500000000
4,99,3.0,1500000000
5,11,3.0,1500000000,extra
6,"11",2.5,1500000100
7,11,,1500000200
"""
EXPECTED_REASONS = {  # line -> reason
    4: "missing_user_id", 5: "malformed_item_id", 6: "unparsable_rating", 7: "rating_out_of_range",
    8: "unparsable_timestamp", 9: "timestamp_out_of_range", 10: "duplicate_row", 11: "duplicate_event",
    12: "unknown_item", 13: "wrong_field_count",
}
ITEMS = """id,title,genre,year,lang
10,"Alpha, the movie",Drama|Comedy,1999,en
11,Beta,Action,0,fr
11,Beta remake,Action,2000,fr
,Nameless,Drama,2000,de
12,Gamma &amp; Delta,,2001,en
"""


def _generic_config(tmp_path, fmt="csv", inter="interactions.csv"):
    return load_config(None, [
        f"lake.root={tmp_path / 'lake'}", "data.dataset=generic",
        f"data.generic.interactions.path={tmp_path / inter}", f"data.generic.interactions.format={fmt}",
        "data.generic.interactions.columns={user: user, item: item, rating: rating, timestamp: ts}",
        f"data.generic.items.path={tmp_path / 'items.csv'}",
        "data.generic.items.columns={id: id, title: title, genres: genre, year: year, categorical_fields: [lang]}",
        "data.generic.rating_min=0.5", "data.generic.rating_max=5", "data.generic.item_id_pattern='\\d+'",
        "data.generic.unescape_html=true",
    ])


@pytest.fixture()
def generic(tmp_path):
    (tmp_path / "interactions.csv").write_text(INTERACTIONS)
    (tmp_path / "items.csv").write_text(ITEMS)
    return tmp_path


def _lake(spark, cfg, run="r1"):
    return DeltaRsLake(spark, cfg.lake.root, cfg.namespace, context=RunContext(stage="ingest", run_id=run))


def test_every_row_is_accepted_or_quarantined_with_its_reason(spark, generic):
    cfg = _generic_config(generic)
    lake = _lake(spark, cfg)
    report = run_ingest(cfg, spark, lake)
    inter = report.table("interactions")
    assert inter.read == 14 and inter.adds_up
    assert inter.accepted == 4 and inter.quarantined == 10
    q = lake.read("quarantine").filter("target_table = 'interactions'").toPandas()
    assert dict(zip(q.source_line, q.reason, strict=True)) == EXPECTED_REASONS
    assert q.source_file.str.endswith("interactions.csv").all()
    bad_rating = q[q.reason == "rating_out_of_range"].iloc[0]
    assert (bad_rating.field, bad_rating.value, bad_rating.raw) == ("rating", "9.0", "3,10,9.0,1500000005")

    accepted = lake.read("interactions").toPandas().sort_values("source_line")
    assert accepted.source_line.tolist() == [2, 3, 14, 15]
    assert accepted.rating.isna().tolist() == [False, False, False, True]  # a missing rating is implicit

    items = report.table("items")
    assert (items.read, items.accepted, items.reasons) == (5, 3, {"duplicate_item_id": 1, "missing_item_id": 1})
    assert items.cleaned == {"year_cleared": 1}
    rows = {r.item_id: r for r in lake.read("items").collect()}
    assert rows["10"].title == "Alpha, the movie" and rows["10"].genres == ["Drama", "Comedy"]
    assert rows["11"].year is None and rows["11"].attributes == {"lang": "fr"}
    assert rows["12"].title == "Gamma & Delta" and rows["12"].genres == []


def test_reingesting_adds_nothing_and_new_rows_merge(spark, generic):
    cfg = _generic_config(generic)
    cfg.ingest.skip_unchanged = False  # the MERGE itself, on unchanged input
    run_ingest(cfg, spark, _lake(spark, cfg, "r1"))
    lake = _lake(spark, cfg, "r2")
    second = run_ingest(cfg, spark, lake)
    inter = second.table("interactions")
    assert (inter.inserted, inter.updated, inter.unchanged) == (0, 0, 4)
    assert lake.read("interactions").count() == 4 and lake.read("quarantine").count() == 12
    for table in ("interactions", "items", "quarantine"):
        history = lake.history(table)
        assert [h["sparkrec.run_id"] for h in history] == ["r2", "r1"]  # one commit per run
    assert lake.read("ingest_runs").count() == 4

    with open(generic / "interactions.csv", "a") as fh:
        fh.write("8,12,3.5,1500000300\n")
    third = run_ingest(cfg, spark, _lake(spark, cfg, "r3"))
    assert third.table("interactions").inserted == 1
    assert lake.read("interactions", version=1).count() == 4 and lake.read("interactions").count() == 5


def test_unchanged_inputs_are_skipped_until_a_file_or_the_mapping_changes(spark, generic):
    cfg = _generic_config(generic)
    run_ingest(cfg, spark, _lake(spark, cfg, "r1"))
    lake = _lake(spark, cfg, "r2")
    second = run_ingest(cfg, spark, lake)
    assert all(t.skipped and t.read == 0 and t.adds_up for t in second.tables)
    assert "unchanged input since its last ingest: skipped" in second.render()
    for table in ("interactions", "items", "quarantine"):
        assert [h["sparkrec.run_id"] for h in lake.history(table)] == ["r1"]  # nothing read, nothing written
    runs_before = lake.read("ingest_runs").count()

    with open(generic / "interactions.csv", "a") as fh:  # one file grows: only its table is read
        fh.write("8,12,3.5,1500000300\n")
    third = run_ingest(cfg, spark, _lake(spark, cfg, "r3"))
    assert third.table("items").skipped and not third.table("interactions").skipped
    assert third.table("interactions").inserted == 1 and third.table("interactions").adds_up
    assert lake.read("ingest_runs").count() == runs_before + 1

    cfg.data.generic.rating_max = 4  # the same files under other rules: read again
    fourth = run_ingest(cfg, spark, _lake(spark, cfg, "r4"))
    assert not any(t.skipped for t in fourth.tables) and all(t.adds_up for t in fourth.tables)


def test_parquet_input_reports_row_offsets(spark, generic):
    pd.DataFrame({"user": ["1", "2", None], "item": ["10", "11", "10"], "rating": [4.0, 3.0, 2.0],
                  "ts": [1500000000, 1500000001, 1500000002]}).to_parquet(generic / "inter.parquet")
    cfg = _generic_config(generic, fmt="parquet", inter="inter.parquet")
    lake = _lake(spark, cfg)
    report = run_ingest(cfg, spark, lake)
    assert report.table("interactions").accepted == 2
    q = lake.read("quarantine").filter("target_table = 'interactions'").collect()
    assert [(r.source_line, r.reason) for r in q] == [(2, "missing_user_id")]


def test_missing_column_is_named(spark, generic):
    cfg = _generic_config(generic)
    cfg.data.generic.interactions.columns.rating = "stars"
    with pytest.raises(ValueError, match=r"interactions.csv: column 'stars' \(configured for rating\)"):
        run_ingest(cfg, spark, _lake(spark, cfg))


def test_sample_dataset_ingests_cleanly(spark, tmp_path):
    cfg = load_config(None, [f"lake.root={tmp_path}"])
    report = run_ingest(cfg, spark, _lake(spark, cfg))
    inter = report.table("interactions")
    assert inter.read == 23620 and inter.quarantined == 0
    assert report.table("items").accepted == 6003
    assert all(t.adds_up for t in report.tables)


# --------------------------------------------------------------------------- strict input (issue 15, finding 3)
def _events_config(tmp_path, path, *extra):
    """Interactions only (no items, no rating range): each rule shows on its own."""
    return load_config(None, [
        f"lake.root={tmp_path / 'lake'}", "data.dataset=generic", f"data.generic.interactions.path={path}",
        "data.generic.interactions.columns={user: user, item: item, rating: rating, timestamp: ts}", *extra])


def _reasons(lake):
    q = lake.read("quarantine").toPandas()
    return dict(zip(q.source_line, q.reason, strict=True)), q


def test_strict_rows_fields_timestamps_finite_ratings_and_bytes(spark, tmp_path):
    lines = [b"user,item,rating,ts", b"U1,I0012", b"U2,I1,3.0,", b"U3,I1,inf,1500000000",
             b"U4,I1,nan,1500000000", b"U5,I1,1e308,1500000000", b"Zo\xeb,I1,4.0,1500000000",
             b"Zo\xe9,I1,4.0,1500000000", b"U6,I1,4.0,1500000000,x", b"U7,I1,2.0,1500000000"]
    (tmp_path / "events.csv").write_bytes(b"\n".join(lines) + b"\n")
    cfg = _events_config(tmp_path, tmp_path / "events.csv")
    lake = _lake(spark, cfg)
    report = run_ingest(cfg, spark, lake).table("interactions")
    assert (report.read, report.accepted, report.quarantined) == (9, 1, 8) and report.adds_up
    reasons, q = _reasons(lake)
    assert reasons == {2: "wrong_field_count", 3: "missing_timestamp", 4: "non_finite_rating",
                       5: "non_finite_rating", 6: "non_finite_rating", 7: "invalid_encoding",
                       8: "invalid_encoding", 9: "wrong_field_count"}
    raw = dict(zip(q.source_line, q.raw, strict=True))
    assert raw[7] == "base64:" + base64.b64encode(b"Zo\xeb,I1,4.0,1500000000").decode()
    assert raw[8] != raw[7]  # the original bytes survive: Zoë and Zoé stay two records
    assert [r.user_id for r in lake.read("interactions").collect()] == ["U7"]


def test_parquet_native_timestamps_are_accepted(spark, tmp_path):
    when = pd.to_datetime(["2017-07-14 02:40:00", "2020-01-01 00:00:00.250"], format="ISO8601", utc=True)
    pd.DataFrame({"user": ["1", "2"], "item": ["10", "11"], "rating": [4.0, 3.0], "ts": when}).to_parquet(
        tmp_path / "events.parquet", coerce_timestamps="us")  # Spark 3.5 cannot read nanoseconds
    cfg = _events_config(tmp_path, tmp_path / "events.parquet", "data.generic.interactions.format=parquet")
    lake = _lake(spark, cfg)
    assert run_ingest(cfg, spark, lake).table("interactions").accepted == 2
    micros = lake.read("interactions").selectExpr("user_id", "unix_micros(event_time) AS us").collect()
    assert {r.user_id: r.us for r in micros} == {"1": when[0].value // 1000, "2": when[1].value // 1000}


def test_a_wholly_quarantined_table_warns_and_can_fail(spark, generic, caplog):
    (generic / "items.csv").write_text("id,title,genre,year,lang\n900,Nothing,Drama,2000,en\n")
    cfg = _generic_config(generic)
    ours = logging.getLogger("sparkrec")  # it does not propagate to the root, where caplog listens
    ours.addHandler(caplog.handler)
    try:
        run_ingest(cfg, spark, _lake(spark, cfg, "r1"))
    finally:
        ours.removeHandler(caplog.handler)
    assert any("every row of interactions was quarantined" in r.getMessage() for r in caplog.records)
    cfg.ingest.fail_on_all_quarantined = True
    with pytest.raises(InputError, match="every row of interactions was quarantined"):
        run_ingest(cfg, spark, _lake(spark, cfg, "r2"))


# --------------------------------------------------------------------------- re-runs (issue 15, finding 4)
def test_a_line_inserted_above_is_no_update_and_adds_no_quarantine_copies(spark, generic):
    cfg = _generic_config(generic)
    lake = _lake(spark, cfg, "r1")
    run_ingest(cfg, spark, lake)
    header, *rows = INTERACTIONS.splitlines()
    (generic / "interactions.csv").write_text("\n".join([header, "9,12,3.5,1500000300", *rows]) + "\n")
    inter = run_ingest(cfg, spark, _lake(spark, cfg, "r2")).table("interactions")
    assert (inter.inserted, inter.updated, inter.unchanged) == (1, 0, 4)
    assert lake.read("quarantine").count() == 12  # 10 interactions + 2 items, once each
    lines = sorted(r.source_line for r in lake.read("interactions").collect())
    assert lines == [2, 2, 3, 14, 15]  # kept rows keep where they were first seen


def _three_versions(tmp_path):
    """The same event in three files; by name a < b < c, by modification time c < a < b."""
    for name, rating, mtime in (("a", 2, 1_650_000_000), ("b", 5, 1_700_000_000), ("c", 3, 1_600_000_000)):
        path = tmp_path / f"events_{name}.csv"
        path.write_text(f"user,item,rating,ts\n1,10,{rating},1500000000\n{name},10,4,1500000000\n")
        os.utime(path, (mtime, mtime))
    return str(tmp_path / "events_*.csv")


@pytest.mark.parametrize(("rule", "kept", "reasons"), [
    ("first", 2.0, ["duplicate_event"] * 2),  # the first file by name
    ("last_by_file_time", 5.0, ["duplicate_event"] * 2),  # the most recently modified file
    ("reject", None, ["conflicting_event"] * 3),
])
def test_conflicting_versions_follow_the_configured_rule(spark, tmp_path, rule, kept, reasons):
    cfg = _events_config(tmp_path, _three_versions(tmp_path), f"ingest.conflicts={rule}")
    lake = _lake(spark, cfg)
    report = run_ingest(cfg, spark, lake).table("interactions")
    assert report.adds_up and report.read == 6
    assert sorted(r.reason for r in lake.read("quarantine").collect()) == reasons
    ratings = {r.user_id: r.rating for r in lake.read("interactions").collect()}
    assert ratings.get("1") == kept and {ratings[u] for u in "abc"} == {4.0}


@pytest.mark.parametrize("files", [
    ["user,item,rating\n1,2,3\n"],  # plain: read here
    [" user ; item\n1;2\n"],  # names are trimmed, another separator
    ['"user","item"\n1,2\n', "user,item\n"],  # quoted, and files that disagree: Spark decides
    ["\ufeffuser,item\n1,2\n"],  # a byte-order mark: Spark decides
    ["user,,item\n1,2,3\n"],  # an empty name: Spark names it
])
def test_a_csv_header_read_without_spark_is_the_one_spark_reads(spark, tmp_path, files):
    """Streaming batches read their few small files' header in Python; it must be Spark's."""
    from sparkrec.config import CsvOptions
    from sparkrec.ingest.reader import _header, _plain_local_header

    sep = ";" if ";" in files[0] else ","
    opts = CsvOptions(sep=sep)
    paths = []
    for n, text in enumerate(files):
        (tmp_path / f"f{n}.csv").write_text(text, encoding="utf-8")
        paths.append(str(tmp_path / f"f{n}.csv"))
    plain = _plain_local_header([f"file:{p}" for p in paths], opts)
    by_spark = [c.strip() for c in spark.read.options(sep=sep, header="true").csv(paths[:1]).columns]
    if plain is not None:
        assert plain == by_spark
    assert _header(spark, paths[:1], opts) == by_spark
    assert (plain is not None) == (files in (["user,item,rating\n1,2,3\n"], [" user ; item\n1;2\n"]))


@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_lines_are_numbered_alike_across_blocks_and_in_one_window(spark, tmp_path, fmt):
    """A big file is read in several blocks, numbered by block offsets; a micro-batch's small
    files by one window per file (``small_files``). Both must give every row its physical line,
    blank lines (skipped) counted, the header being a file's first non-blank line."""
    from sparkrec.config import CsvOptions
    from sparkrec.ingest.reader import LINE, read_input

    paths = []
    for f in range(2):
        lines = (["", "line,value"] if f else ["line,value"]) if fmt == "csv" else []
        for n in range(1, 1500):
            if fmt == "csv" and n % 100 == 0:
                lines.append("  ")
            physical = len(lines) + 1
            lines.append(f"{physical},{'x' * (n % 7)}" if fmt == "csv" else f'{{"line": "{physical}", "value": "v"}}')
        path = tmp_path / f"f{f}.{fmt}"
        path.write_text("\n".join(lines) + "\n")
        paths.append(str(path))
    before = spark.conf.get("spark.sql.files.maxPartitionBytes")
    spark.conf.set("spark.sql.files.maxPartitionBytes", "4096")  # several blocks a file
    try:
        blocks = spark.read.text(paths).select("_metadata.file_path", "_metadata.file_block_start").distinct()
        assert blocks.count() >= 6
        for small in (False, True):
            raw = read_input(spark, paths, fmt, CsvOptions(), small_files=small)
            rows = raw.df.select(F.col("line").cast("long").alias("line"), LINE).toPandas()
            assert len(rows) == 2 * 1499 and (rows["line"] == rows[LINE]).all(), small
    finally:
        spark.conf.set("spark.sql.files.maxPartitionBytes", before)
