"""``sparkrec stream`` on real Structured Streaming, real Delta tables and a really trained model.

A tiny catalogue of two genres (Comedy 1-60, Horror 61-120) whose users each watch one genre, so
a model trained on it in seconds has something to learn, and a burst of the other genre has
something to move.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from pyspark.sql import functions as F

from sparkrec.config import load_config
from sparkrec.lake import DeltaRsLake, RunContext
from sparkrec.notebook import splits_off

HEADER = "user,item,rating,ts\n"
COMEDY, HORROR = range(1, 61), range(61, 121)
ITEMS = "id,title,genres\n" + "".join(f"{i},Film {i},{'Comedy' if i in COMEDY else 'Horror'}\n" for i in range(1, 121))
TRAIN = HEADER + "".join(
    f"u{u},{items[(u * 7 + j * 3) % 60]},{4 + j % 2},{1500000000 + 1000 * u + j}\n"
    for u in range(40) for items in [list(COMEDY) if u < 20 else list(HORROR)] for j in range(10))
ONLY_LOO = splits_off()


def overrides(root) -> list[str]:
    return [f"lake.root={root / 'lake'}", "data.dataset=generic",
            f"data.generic.interactions.path={root / 'interactions.csv'}",
            "data.generic.interactions.columns={user: user, item: item, rating: rating, timestamp: ts}",
            f"data.generic.items.path={root / 'items.csv'}",
            "data.generic.items.columns={id: id, title: title, genres: genres}",
            "data.generic.rating_min=1", "data.generic.rating_max=5", *ONLY_LOO,
            f"train.workdir={root / 'work'}", f"train.mlflow_uri={root / 'ml'}", "train.progress=false",
            "train.backend=local", "train.epochs=2", "train.blend_trials=2", "model.history=10",
            "features.history_length=20", f"stream.path={root / 'landing'}", "stream.trigger_seconds=0",
            "stream.max_files_per_trigger=1", f"stream.checkpoint={root / 'checkpoint'}"]


@pytest.fixture(scope="module")
def served(spark, tmp_path_factory):
    """The tiny catalogue ingested, featurised, trained on and recommended for."""
    from sparkrec.features.job import run_features
    from sparkrec.ingest.job import run_ingest
    from sparkrec.model.job import run_train
    from sparkrec.recommend import run_recommend

    root = tmp_path_factory.mktemp("stream")
    (root / "interactions.csv").write_text(TRAIN)
    (root / "items.csv").write_text(ITEMS)
    (root / "landing").mkdir()
    cfg = load_config(None, overrides(root))
    lake = DeltaRsLake(spark, cfg.lake.root, cfg.namespace, context=RunContext(stage="fixture"))
    run_ingest(cfg, spark, lake)
    run_features(cfg, spark, lake)
    run_train(cfg, spark, lake)
    run_recommend(cfg, spark, lake)
    return cfg, lake, root


def land(root, name: str, rows: list[str]) -> None:
    """A landing file, written under a hidden name and renamed, as producers must."""
    tmp = root / "landing" / f".{name}.tmp"
    tmp.write_text(HEADER + "".join(rows))
    os.replace(tmp, root / "landing" / name)


def event(user: str, item: int, t: int, rating: str = "4") -> str:
    return f"{user},{item},{rating},{1600000000 + t}\n"


def genre_share(lake, user: str, genre_items: range) -> float:
    recs = lake.read("recommendations").filter(F.col("user_id") == user).select("item_id").collect()
    assert recs
    return sum(int(r[0]) in genre_items for r in recs) / len(recs)


def test_a_replayed_batch_commits_nothing_twice(served):
    from sparkrec.stream.batch import BATCHES, process_batch
    from sparkrec.stream.once import BatchTxn

    cfg, lake, root = served
    path = root / "replayed.csv"
    path.write_text(HEADER + event("u1", 61, 1) + event("u1", 62, 2) + "u1,,4,1600000003\n" + event("u1", 999, 4)
                    + event("u1", 63, 5, rating="x"))
    txn = BatchTxn("test-replay", 0)
    first = process_batch(cfg, lake.spark, lake, [str(path)], "csv", txn)
    assert (first.read, first.accepted, first.quarantined) == (5, 2, 3) and first.skipped == []
    assert first.reasons == {"missing_item_id": 1, "unknown_item": 1, "unparsable_rating": 1}
    versions = {t: lake.version(t) for t in ("interactions", "events", "quarantine", "recommendations", BATCHES,
                                             "stream_prequential")}
    again = process_batch(cfg, lake.spark, lake, [str(path)], "csv", txn)
    assert {t: lake.version(t) for t in versions} == versions
    assert set(again.skipped) == set(versions) | {"user_histories"}
    quarantined = lake.read("quarantine").filter(F.col("source_file").endswith("replayed.csv")).count()
    assert quarantined == 3
    assert lake.read("interactions").filter(F.col("source_file").endswith("replayed.csv")).count() == 2


def test_a_burst_in_another_genre_moves_the_list_without_retraining(served):
    from sparkrec.model.store import resolve_run
    from sparkrec.stream.batch import process_batch
    from sparkrec.stream.once import BatchTxn

    cfg, lake, root = served
    served_run = resolve_run(cfg, lake).run_id
    before = genre_share(lake, "u3", HORROR)  # a comedy-only user
    quarantine = lake.version("quarantine") if lake.exists("quarantine") else None
    path = root / "burst.csv"
    path.write_text(HEADER + "".join(event("u3", i, 100 + n) for n, i in enumerate(range(61, 73))))
    report = process_batch(cfg, lake.spark, lake, [str(path)], "csv", BatchTxn("test-burst", 0))
    assert report.accepted == 12 and report.users_refreshed == 1
    # a clean batch commits nothing to the quarantine (an empty MERGE would cost a commit)
    assert "quarantine" not in report.steps
    assert (lake.version("quarantine") if lake.exists("quarantine") else None) == quarantine
    after = genre_share(lake, "u3", HORROR)
    assert after > before, (before, after)
    assert resolve_run(cfg, lake).run_id == served_run  # no retraining


def test_ranks_at_arrival_are_recorded_and_judged_prequentially(served, tmp_path):
    """Each accepted event's rank in the live and the frozen list before its batch refreshed
    them; `evaluate --prequential` turns them into metrics rows and a report."""
    from sparkrec.evaluation.prequential import run_prequential
    from sparkrec.stream.batch import process_batch
    from sparkrec.stream.once import BatchTxn

    cfg, lake, root = served
    before = lake.version("recommendations")
    recs = lake.read("recommendations").filter(F.col("user_id") == "u5").orderBy("rank").collect()
    listed, unlisted = recs[2]["item_id"], next(str(i) for i in COMEDY if str(i) not in {r["item_id"] for r in recs})
    path = root / "arrivals.csv"
    path.write_text(HEADER + event("u5", int(listed), 500) + event("u5", int(unlisted), 501))
    txn = BatchTxn("test-prequential", 0)
    process_batch(cfg, lake.spark, lake, [str(path)], "csv", txn)
    got = {r["item_id"]: r for r in lake.read("stream_prequential").filter(F.col("app_id") == txn.app_id).collect()}
    assert set(got) == {listed, unlisted}
    assert got[listed]["rank_live"] == 3 and got[unlisted]["rank_live"] is None
    frozen = got[listed]["frozen_version"]
    assert frozen is not None and frozen <= before
    frozen_rank = {r["item_id"]: r["rank"] for r in lake.read("recommendations", version=frozen)
                   .filter(F.col("user_id") == "u5").collect()}
    assert got[listed]["rank_frozen"] == frozen_rank.get(listed)

    summary = run_prequential(cfg, lake.spark, lake, tmp_path / "prequential.html")
    rows = lake.read("evaluation_metrics").filter(F.col("eval_id") == summary["eval_id"]).toPandas()
    assert set(rows["split"]) == {"prequential"} and set(rows["model"]) == {"stream", "frozen"}
    assert {"hitrate", "ndcg"} <= set(rows["metric"]) and "all" in set(rows["slice"])
    events = lake.read("stream_prequential").dropDuplicates(["event_id"])
    hits = events.filter(F.col("rank_live") <= 10).count() / events.count()
    overall = rows[(rows["slice"] == "all") & (rows["model"] == "stream") & (rows["metric"] == "hitrate")
                   & (rows["k"] == 10)]
    assert overall["value"].iloc[0] == pytest.approx(hits)
    assert (tmp_path / "prequential.html").read_text().count("<svg") >= 1


def test_an_unreadable_file_is_quarantined_and_the_rest_of_its_batch_goes_on(served):
    from sparkrec.stream.batch import process_batch
    from sparkrec.stream.once import BatchTxn

    cfg, lake, root = served
    good, wrong, gone = root / "good.csv", root / "wrong-columns.csv", root / "deleted.csv"
    good.write_text(HEADER + event("u7", 5, 700) + event("u7", 6, 701))
    wrong.write_text("who,what\nu7,5\n")
    report = process_batch(cfg, lake.spark, lake, [str(good), str(wrong), str(gone)], "csv",
                           BatchTxn("test-unreadable", 0))
    assert (report.read, report.accepted, report.quarantined) == (4, 2, 2)
    assert report.reasons == {"unreadable_file": 2}
    q = lake.read("quarantine").filter(F.col("reason") == "unreadable_file").collect()
    assert {r["source_file"] for r in q} == {str(wrong), str(gone)} and all(r["value"] for r in q)
    assert lake.read("interactions").filter(F.col("source_file").endswith("good.csv")).count() == 2


def streamed(lake) -> int:
    """Batches the `sparkrec stream` query (not the tests' own BatchTxn) has committed."""
    from sparkrec.stream.batch import BATCHES

    if not lake.exists(BATCHES):
        return 0
    return lake.read(BATCHES).filter(F.col("app_id").startswith("sparkrec-stream-")).count()


@pytest.mark.slow
def test_killed_stream_restarted_commits_every_event_once(served):
    """kill -9 the `sparkrec stream` process after some batches, land more, restart."""
    from sparkrec.stream.batch import BATCHES
    from sparkrec.stream.job import run_stream

    cfg, lake, root = served
    files = {f"f{n:02d}.csv": [event(f"u{(n * 3 + j) % 40}", 1 + (n * 5 + j) % 120, 1000 * n + j) for j in range(5)]
             + ([f"u{n},bad-item-{n},4,1600000000\n"] if n % 2 else []) for n in range(8)}
    for name in list(files)[:5]:
        land(root, name, files[name])
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable}
    proc = subprocess.Popen([sys.executable, "-m", "sparkrec", "stream", *overrides(root),
                             "spark.master=local[2]", "logging.level=WARNING"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 900
        while streamed(lake) < 2:  # two batches committed
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:] if proc.stderr else ""
            assert time.monotonic() < deadline, "the stream committed no batch in time"
            time.sleep(2)
        time.sleep(2)  # somewhere inside the next batch
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    for name in list(files)[5:]:
        land(root, name, files[name])
    restarted = cfg.model_copy(deep=True)
    restarted.stream.available_now = True
    run_stream(restarted, lake.spark, lake)

    landed = lake.read("interactions").filter(F.col("source_file").rlike(r"/landing/f\d\d\.csv$"))
    expected = {(u, i, str(t)) for rows in files.values() for r in rows
                for u, i, _, t in [r.strip().split(",")] if not i.startswith("bad")}
    got = landed.select("user_id", "item_id", F.unix_timestamp("event_time").cast("string")).collect()
    assert len(got) == len(set(map(tuple, got))) and set(map(tuple, got)) == {
        (u, i, str(int(t))) for u, i, t in expected}
    ranks = lake.read("recommendations").groupBy("user_id").agg(
        F.count("*").alias("n"), F.countDistinct("rank").alias("d"), F.max("rank").alias("m"))
    assert ranks.filter((F.col("n") != F.col("d")) | (F.col("m") != F.col("n"))).count() == 0
    batches = lake.read(BATCHES).filter(F.col("app_id").startswith("sparkrec-stream-"))
    totals = batches.agg(F.sum("read"), F.sum("accepted"), F.sum("quarantined"), F.countDistinct("batch_id"),
                         F.count("*")).collect()[0]
    assert totals[3] == totals[4] == 8  # one row per batch, every file one batch
    assert totals[0] == totals[1] + totals[2] and totals[2] == 4
    assert batches.filter(F.col("read") != F.col("accepted") + F.col("quarantined")).count() == 0
    q = lake.read("quarantine").filter(F.col("source_file").rlike(r"/landing/f\d\d\.csv$"))
    assert q.count() == 4 and q.select("reason").distinct().collect()[0][0] == "unknown_item"


def test_replay_lands_the_last_fifth_in_time_order_as_small_files(served, tmp_path):
    from sparkrec.stream import run_replay

    cfg, lake, _ = served
    replay_cfg = cfg.model_copy(deep=True)
    replay_cfg.stream.path, replay_cfg.stream.replay_batch = str(tmp_path / "replay"), 30
    summary = run_replay(replay_cfg, lake.spark, rate=0)
    files = sorted((tmp_path / "replay").glob("*.csv"))
    # 20% of 400 events (approxQuantile's cut may take one more), 30 a file
    assert summary["events"] in (80, 81) and summary["files"] == len(files) == 3
    times = [int(line.rsplit(",", 1)[1]) for f in files for line in f.read_text().splitlines()[1:]]
    assert len(times) == summary["events"] and times == sorted(times) and min(times) >= 1500000000 + 1000 * 31
    assert not list((tmp_path / "replay").glob(".*"))  # no half-written file left visible or hidden


def test_the_stream_runs_its_queries_interpreted_and_gives_the_session_back(spark):
    """stream.interpreted_sql sets its codegen settings for the query's life only: a setting the
    session had comes back, one it did not have is unset again."""
    from sparkrec.stream.job import INTERPRETED, session_conf

    spark.conf.set("spark.sql.codegen.wholeStage", "true")
    try:
        with session_conf(spark, INTERPRETED):
            assert spark.conf.get("spark.sql.codegen.wholeStage") == "false"
            assert spark.conf.get("spark.sql.codegen.factoryMode") == "NO_CODEGEN"
            assert spark.range(5).selectExpr("sum(id * 2)").first()[0] == 20  # interpreted, same answer
        assert spark.conf.get("spark.sql.codegen.wholeStage") == "true"
        assert spark.conf.get("spark.sql.codegen.factoryMode", None) is None
    finally:
        spark.conf.unset("spark.sql.codegen.wholeStage")
