"""New catalogue items arriving on the stream's second source are recommendable in that batch.

The tiny two-genre catalogue of ``test_stream``, with its item text embedded, plus one item
nobody watched ("Midnight Harvest", cold at training). The stream then brings a new item with
the very same text and genre: the item tower must encode it exactly as it encodes the cold
item it was trained with, so both get the same score in every list: proof that the new item is
embedded and served by the trained model's own weights, with no retraining.
"""

from __future__ import annotations

import os

import pytest
from pyspark.sql import functions as F
from test_stream import HEADER, ITEMS, TRAIN, event, overrides

from sparkrec.config import load_config
from sparkrec.lake import DeltaRsLake, RunContext

COLD = "121,Midnight Harvest,Horror\n"  # in the training catalogue, never watched
ITEMS_HEADER = "id,title,genres\n"
NEW = [ITEMS_HEADER, "122,Midnight Harvest,Horror\n", "123,Laugh Track,Comedy\n", ",No Id,Comedy\n"]


def catalogue_overrides(root) -> list[str]:
    return [*overrides(root), f"stream.items_path={root / 'items-landing'}", "recommend.k=200"]


@pytest.fixture(scope="module")
def served(spark, tmp_path_factory):
    from sparkrec.features.job import run_features
    from sparkrec.ingest.job import run_ingest
    from sparkrec.model.job import run_train
    from sparkrec.recommend import run_recommend
    from sparkrec.text import run_embed

    root = tmp_path_factory.mktemp("stream-catalogue")
    (root / "interactions.csv").write_text(TRAIN)
    (root / "items.csv").write_text(ITEMS + COLD)
    for d in ("landing", "items-landing"):
        (root / d).mkdir()
    cfg = load_config(None, catalogue_overrides(root))
    lake = DeltaRsLake(spark, cfg.lake.root, cfg.namespace, context=RunContext(stage="fixture"))
    for stage in (run_ingest, run_features, run_embed, run_train, run_recommend):
        stage(cfg, spark, lake)
    return cfg, lake, root


def scores(lake, user: str) -> dict[str, float]:
    rows = lake.read("recommendations").filter(F.col("user_id") == user).select("item_id", "score").collect()
    return {r["item_id"]: r["score"] for r in rows}


def test_new_items_are_embedded_and_recommended_in_their_batch(served):
    from sparkrec.stream.batch import process_batch
    from sparkrec.stream.driver import KnownItems, Refresher
    from sparkrec.stream.once import BatchTxn

    cfg, lake, root = served
    known = KnownItems()  # as a running query holds it: built on the catalogue before this batch grows it
    assert known(lake.spark, lake) is not None
    items_file, events_file = root / "new-items.csv", root / "events.csv"
    items_file.write_text("".join(NEW))
    # a comedy user takes the item that arrives in this very batch; a horror user one old item
    events_file.write_text(HEADER + event("u1", 123, 1) + event("u25", 61, 2))
    trained_items = lake.read("item_index").count()
    txn = BatchTxn("test-catalogue", 0)
    report = process_batch(cfg, lake.spark, lake, [str(events_file)], "csv", txn, refresher=Refresher(cfg, lake),
                           item_files=[str(items_file)], known=known)
    cat = report.catalogue
    assert cat is not None and report.in_driver
    assert (cat.read, cat.accepted, cat.quarantined, cat.reasons) == (3, 2, 1, {"missing_item_id": 1})
    assert (cat.new, cat.embedded) == (2, 2)
    assert (report.read, report.accepted, report.quarantined) == (2, 2, 0)  # item 123 is known by then
    assert lake.read("quarantine").filter((F.col("target_table") == "items")
                                          & F.col("source_file").endswith("new-items.csv")).count() == 1

    index = {r["item_id"]: r["item_idx"] for r in lake.read("item_index").collect()}
    assert sorted(index[i] for i in ("122", "123")) == [trained_items, trained_items + 1]  # after the maximum
    feats = {r["item_id"]: r for r in lake.read("item_features").filter(F.col("item_id").isin("121", "122")).collect()}
    assert feats["122"]["title"] == "Midnight Harvest" and feats["122"]["n_interactions"] == 0
    assert feats["122"]["popularity_rank"] == feats["121"]["popularity_rank"]  # both never watched
    vectors = {r["item_id"]: r["vector"] for r in lake.read("item_embeddings").filter(
        F.col("item_id").isin("121", "122")).collect()}
    assert vectors["122"] == pytest.approx(vectors["121"], abs=1e-6)

    # both refreshed users' lists (every eligible item: recommend.k=200) hold the new items,
    # and the twin of the cold item scores exactly as that item does
    for user in ("u1", "u25"):
        got = scores(lake, user)
        assert "122" in got and got["122"] == pytest.approx(got["121"], abs=1e-5), user
    assert "123" in scores(lake, "u25") and "123" not in scores(lake, "u1")  # u1 has just taken it
    told = lake.read("recommendations").filter((F.col("user_id") == "u25") & (F.col("item_id") == "122")).collect()
    assert "Horror" in told[0]["explanation"] and "New in the catalogue" in told[0]["explanation"]

    # a replayed batch commits nothing twice, catalogue tables included
    again = process_batch(cfg, lake.spark, lake, [str(events_file)], "csv", txn, item_files=[str(items_file)])
    assert again.catalogue is not None
    assert set(again.catalogue.skipped) == {"quarantine", "items", "item_features", "item_embeddings"}
    assert lake.read("items").count() == 123 and lake.read("item_index").count() == trained_items + 2

    # the batch recommend stage serves the grown catalogue too, with no retraining
    from sparkrec.recommend import run_recommend

    run_recommend(cfg, lake.spark, lake)
    full = scores(lake, "u30")
    assert {"122", "123"} <= set(full) and full["122"] == pytest.approx(full["121"], abs=1e-5)


def test_the_query_reads_both_landing_directories(served):
    from sparkrec.stream.job import run_stream

    cfg, lake, root = served
    for directory, name, text in (("items-landing", "more.csv", ITEMS_HEADER + "124,Night Shift,Horror\n"),
                                  ("landing", "events.csv", HEADER + event("u26", 124, 50))):
        tmp = root / directory / f".{name}.tmp"
        tmp.write_text(text)
        os.replace(tmp, root / directory / name)
    cfg = cfg.model_copy(deep=True)
    cfg.stream.available_now = True
    summary = run_stream(cfg, lake.spark, lake)
    assert summary["new_items"] == 1 and summary["accepted"] == 1 and summary["quarantined"] == 0
    assert lake.read("interactions").filter((F.col("user_id") == "u26") & (F.col("item_id") == "124")).count() == 1
    assert lake.read("item_embeddings").filter(F.col("item_id") == "124").count() == 1
