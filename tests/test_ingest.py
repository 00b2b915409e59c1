"""Ingestion on real Spark + real Delta: every row accepted or quarantined with its reason."""

from __future__ import annotations

import pandas as pd
import pytest

from sparkrec.config import load_config
from sparkrec.ingest.job import run_ingest
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
    12: "unknown_item", 13: "malformed_record",
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
