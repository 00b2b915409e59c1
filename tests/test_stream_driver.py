"""The driver's micro-batch path (``sparkrec.stream.driver``) writes what the Spark path writes.

The same landed files go through ``process_batch`` twice, on two copies of one trained lake:
once with ``stream.driver_max_bytes=0`` (every step a Spark query) and once on the driver path
(Arrow + delta-rs). After each batch every table either path writes must hold the same rows.
The batches cover what differs between the two implementations: new users and items (index
numbering), duplicates and rejected rows (counts, quarantine), a re-delivered event (provenance
carried over), a re-rating (a MERGE update), a user whose only event is negative, and lists
rescored with the served hybrid (scores, ranks, explanations, evidence).
"""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
from test_stream import HEADER, ITEMS, TRAIN, event, overrides

from sparkrec.config import load_config
from sparkrec.lake import DeltaRsLake, RunContext

# (table, key columns, columns whose value is a time of writing, not data)
TABLES = [("interactions", ["event_id"], []), ("quarantine", ["record_id"], []),
          ("user_index", ["user_id"], []), ("item_index", ["item_id"], []),
          ("events", ["user_idx", "item_idx", "seq"], []), ("user_histories", ["user_idx"], []),
          ("recommendations", ["user_id", "rank"], ["generated_at"]),
          ("stream_prequential", ["event_id"], ["arrived_at"]),
          ("stream_batches", ["batch_id"], ["seconds", "lag_seconds", "committed_at"])]

BATCHES = [
    # known users' new events, a new user, a rejected row of each kind, a duplicate, an unknown item,
    # a rejected line twice (the second copy has a quarantine key of its own)
    [event("u1", 61, 1), event("u1", 62, 2), event("u2", 5, 3, rating="5"), event("u77", 7, 4),
     event("u77", 8, 5), event("u77", 8, 5), "u1,,4,1600000006\n", "u1,,4,1600000006\n", event("u2", 999, 7),
     event("u2", 63, 8, rating="x"), event("u3", 64, 9, rating="9")],
    # a re-delivered event (same content: keeps its first file and line), a re-rating, a new
    # user with one negative event, a new item id the catalogue has but no event had
    [event("u1", 61, 1), event("u2", 5, 3, rating="2"), event("u78", 9, 10, rating="1"),
     event("u4", 65, 11), event("u40", 120, 12)],
]


@pytest.fixture(scope="module")
def trained(spark, tmp_path_factory):
    from sparkrec.features.job import run_features
    from sparkrec.ingest.job import run_ingest
    from sparkrec.model.job import run_train
    from sparkrec.recommend import run_recommend

    root = tmp_path_factory.mktemp("stream-driver")
    # item 120 is in the catalogue but no user had it: its index entry is new to the stream
    (root / "interactions.csv").write_text(HEADER + "".join(
        line for line in TRAIN.splitlines(keepends=True)[1:] if line.split(",")[1] != "120"))
    (root / "items.csv").write_text(ITEMS)
    (root / "landing").mkdir()
    cfg = load_config(None, overrides(root))
    lake = DeltaRsLake(spark, cfg.lake.root, cfg.namespace, context=RunContext(stage="fixture"))
    for stage in (run_ingest, run_features, run_train, run_recommend):
        stage(cfg, spark, lake)
    return root


def rows(lake, table: str, keys: list[str], volatile: list[str]) -> pd.DataFrame:
    df = lake.read(table).drop(*volatile).toPandas()
    df = df.sort_values(keys).reset_index(drop=True)
    return df.map(plain)


def plain(v):
    """Arrays and structs as lists and dicts, comparable with ==."""
    if isinstance(v, np.ndarray | list | tuple) and not hasattr(v, "asDict"):
        return [plain(x) for x in v]
    if hasattr(v, "asDict"):
        return {k: plain(x) for k, x in v.asDict().items()}
    if isinstance(v, dict):
        return {k: plain(x) for k, x in v.items()}
    return v


def same(a: pd.DataFrame, b: pd.DataFrame, table: str) -> None:
    assert list(a.columns) == list(b.columns), table
    assert len(a) == len(b), (table, len(a), len(b))
    for col in a.columns:
        if col == "score":
            np.testing.assert_allclose(a[col].to_numpy(), b[col].to_numpy(), rtol=1e-5, err_msg=table)
        else:
            left, right = a[col].tolist(), b[col].tolist()
            diff = [(i, x, y) for i, (x, y) in enumerate(zip(left, right, strict=True))
                    if not (x == y or (pd.isna(x) is True and pd.isna(y) is True))]
            assert not diff, (table, col, len(diff), diff[:3])


def run_batches(spark, root, driver_bytes: int, refresher_too: bool) -> list[tuple[object, dict]]:
    """Each batch's report and every table's rows after it, on the lake as the fixture left it."""
    from sparkrec.stream.batch import in_driver, process_batch
    from sparkrec.stream.driver import KnownItems, Refresher
    from sparkrec.stream.job import compact_tables
    from sparkrec.stream.once import BatchTxn

    cfg = load_config(None, [*overrides(root), f"stream.driver_max_bytes={driver_bytes}",
                             "features.weights.positive_min_rating=3"])
    lake = DeltaRsLake(spark, cfg.lake.root, cfg.namespace, context=RunContext(stage="test"))
    refresher = Refresher(cfg, lake) if refresher_too else None
    known = KnownItems() if driver_bytes else None  # the driver path as the query runs it: items by set
    out = []
    for n, lines in enumerate(BATCHES):
        path = root / f"batch-{n}.csv"
        path.write_text(HEADER + "".join(lines))
        assert in_driver(cfg, [str(path)]) == in_driver(cfg, [f"file:{path}"]) == bool(driver_bytes)
        report = process_batch(cfg, spark, lake, [str(path)], "csv", BatchTxn("test-driver-path", n),
                               refresher=refresher, known=known)
        assert report.in_driver == bool(driver_bytes)
        out.append((report, {t: rows(lake, t, keys, volatile) for t, keys, volatile in TABLES}))
        if driver_bytes:  # the long-running query's compaction changes no table's rows
            compacting = cfg.model_copy(deep=True)
            compacting.stream.compact_min_files = 2
            assert sum(compact_tables(lake, compacting).values()) > 0
    if driver_bytes:  # the batches tested items by the set; a replayed batch commits nothing twice
        assert known is not None and known(spark, lake) is not None
        again = process_batch(cfg, spark, lake, [str(root / "batch-0.csv")], "csv", BatchTxn("test-driver-path", 0),
                              refresher=refresher)
        assert {"interactions", "events", "recommendations", "stream_batches"} <= set(again.skipped)
    return out


def test_the_driver_path_writes_what_the_spark_path_writes(spark, trained):
    pristine = trained / "pristine"
    shutil.copytree(trained / "lake", pristine)
    by_spark = run_batches(spark, trained, 0, False)
    shutil.rmtree(trained / "lake")
    shutil.copytree(pristine, trained / "lake")  # the same location: the served run's lake
    by_driver = run_batches(spark, trained, 4_000_000, True)
    for n, ((spark_report, spark_rows), (driver_report, driver_rows)) in enumerate(
            zip(by_spark, by_driver, strict=True)):
        for field in ("read", "accepted", "quarantined", "reasons", "users_refreshed", "skipped"):
            assert getattr(spark_report, field) == getattr(driver_report, field), (n, field)
        assert set(spark_report.steps) == set(driver_report.steps)
        for table, _, _ in TABLES:
            same(spark_rows[table], driver_rows[table], table)
