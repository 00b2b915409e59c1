"""Streaming benchmark: end-to-end latency, sustained rate and prequential HitRate@K.

Setup in a temporary lake: the dataset's first ``1 - stream.replay_fraction`` of events by time
is ingested (the rest are held out by ``ingest.timestamp_max``), featurised, trained on (a short
local run) and recommended for. Then ``sparkrec replay`` lands the held-out events at ``--rate``
events/s while ``sparkrec stream`` folds them in, in this process.

Reported:
- latency p50 / p95: per micro-batch, the oldest file's landing -> the batch's last commit
  (``stream_batches.lag_seconds``), i.e. event landed -> refreshed list committed;
- sustained rate: events accepted / seconds the stream was busy, and the same over the full
  batches only (``steady_events_per_s``: not the first, one-file warm-up batch, nor the tail after
  landing stopped); the backlog does not grow while the steady rate is at or above ``--rate``, and
  ``drain_seconds`` (last file landed -> last commit) stays about one or two batches;
- prequential HitRate@K: each arriving event's item in its user's list at the moment it arrived:
  the list refreshed by the stream (the version before the event's batch) vs the list frozen at
  training time (the version before the stream's first commit).

    python benchmarks/stream.py --dataset movielens --rate 100 --events 2000

Measured (2026-12-02, quiet machine, `--dataset movielens --rate 100 --events 1000000 --batch 50
--epochs 2`; the README's streaming section has the table): 20,178 events in 20 micro-batches of
~10 s; latency p50 20.6 s / p95 25.1 s (was 60.3 / 61.7 s before MERGEs of small sources and
partial-refresh scoring moved to the driver); it kept up with the 100 events/s; prequential
HitRate@20 0.0139 stream-refreshed vs 0.0048 frozen (2.89x). Target not met: p95 <= 5 s.
Sustained rate (2026-12-03, `--rate 2000 --batch 500 --epochs 2 --replay-fraction 0.9`: the last
90% of events, 90,761, so that full batches form): full batches of 41,000 and 47,000 events took
21.8 and 21.3 s, 2,043 events/s over them, and the stream finished 34.8 s after the last file
landed: it keeps up with 2,000 events/s, at ~40 s latency.
Small batches in the driver (2026-12-06, `--rate 100 --events 6000 --epochs 1`, then with
`--set stream.driver_max_bytes=0` back to back): p50 3.30 s / p95 4.01 s in 33 batches of 1.1-2.0 s,
against 14.29 / 15.01 s through Spark; `--events 15000`: p50 3.79 / p95 4.60 s over 71 batches
(compaction every 20); `--rate 2000 --batch 500 --epochs 2 --replay-fraction 0.9`: 2,309.9 events/s
over the full batches, p95 6.4 s. Target p95 <= 5 s met on ml-latest-small.
Book-Crossing (2026-12-07, `--dataset bookcrossing --rate 100 --events 6000 --epochs 1 --keep-setup`; the
source has no time, so a seeded 20% of its ratings is held out and the rest written as the training copy):
p50 38.5 s / p95 50.7 s (batches of ~1,500 users each rewrite the 1.6M-row lists table), 243.5 events/s
sustained at `--rate 2000`. Targets not met on this catalogue. Later that day, with the lists table
clustered by user (a refresh rewrites only its users' files), the quarantine and interactions MERGEs off
Spark, and the replay started once the query runs (`stream-bookcrossing-clustered.txt`): p50 42.0 s /
p95 49.2 s; full batches ran at ~98 events/s, under the landing rate, so batches still grow. With the
small batches' validation checking items against a broadcast set (4882447; the same saved setup, old code
right after): Book-Crossing p50 12.17 s / p95 13.40 s (before: 16.67 / 19.07 s), keeping up at 106.5
events/s; ml-latest-small p50 1.91 / p95 2.48 s (before: 2.32 / 2.88 s); Book-Crossing at `--rate 2000
--events 20000 --batch 500`: 209.2 events/s sustained (`benchmarks/results/2026-12-07/*known-set*.txt`).
The Arrow MERGE joining only the source's groups (c565f00), new then old code on one saved setup on a
slower day: Book-Crossing p50 14.23 / p95 16.55 s against 17.77 / 18.93 s
(`stream-bookcrossing-merge-prefilter.txt`).
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from pyspark.sql import functions as F

from sparkrec.config import Config, load_config
from sparkrec.features.job import run_features
from sparkrec.ingest.job import run_ingest
from sparkrec.ingest.presets import resolve_source
from sparkrec.lake import DeltaRsLake, Lake, RunContext
from sparkrec.logs import setup_logging
from sparkrec.model.job import run_train
from sparkrec.recommend import run_recommend
from sparkrec.session import get_spark
from sparkrec.stream import run_replay, run_stream
from sparkrec.stream.batch import BATCHES
from sparkrec.stream.job import checkpoint_location
from sparkrec.stream.prequential import TABLE, prequential_rows
from sparkrec.stream.replay import encode_rows, held_out, kept


def prequential(lake: Lake, k: int) -> dict[str, float]:
    """HitRate@k and NDCG@k of the stream-refreshed and the frozen lists over the streamed
    events, as `sparkrec evaluate --prequential` computes them (ranks recorded at arrival)."""
    if not lake.exists(TABLE):
        return {}
    rows = {(m, metric): (v, n) for m, slc, metric, _, v, n in prequential_rows(lake, [k], 1) if slc == "all"}
    out: dict[str, float] = {"events": rows[("stream", "hitrate")][1]}
    for metric in ("hitrate", "ndcg"):
        stream, frozen = rows[("stream", metric)][0], rows[("frozen", metric)][0]
        out |= {f"{metric}@{k}_stream": round(stream, 4), f"{metric}@{k}_frozen": round(frozen, 4),
                f"{metric}@{k}_ratio": round(stream / frozen, 3) if frozen else float("nan")}
    return out


def training_copy(cfg: Config, spark: Any, cut: float, target: Path) -> list[str]:
    """A copy of the dataset without its replayed part (``replay.kept``): the interactions file
    rewritten in its own format, the other files linked; returns the overrides that point the
    batch stages at it. For sources without time (Book-Crossing)."""
    src = resolve_source(cfg.data)
    spec = src.interactions
    original = Path(spec.path)
    target.mkdir(parents=True, exist_ok=True)
    fmt = spec.format
    with open(target / original.name, "wb") as out:
        rows = kept(cfg, spark, cut).toLocalIterator()
        first = True
        for chunk in iter(lambda: list(itertools.islice(rows, 100_000)), []):
            data = encode_rows(chunk, list(chunk[0].asDict()), fmt, cfg)
            if not first and fmt == "csv":  # one header, at the top
                data = data.split(b"\n", 1)[1]
            out.write(data)
            first = False
    if cfg.data.dataset == "generic":
        return [f"data.generic.interactions.path={target / original.name}"]
    for other in original.parent.iterdir():  # a preset reads its files from one folder
        if other.name != original.name:
            (target / other.name).symlink_to(other.resolve())
    return [f"data.paths.{cfg.data.dataset}={target}"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="sample", choices=["sample", "movielens", "bookcrossing"])
    ap.add_argument("--rate", type=float, default=100.0, help="events per second landed")
    ap.add_argument("--events", type=int, default=2000, help="held-out events to replay (at most)")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--batch", type=int, default=50, help="events per landed file")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--replay-fraction", type=float, default=0.2,
                    help="stream.replay_fraction: the share of events held out and replayed (raise it to "
                         "measure the sustained rate: ml-latest-small's last 20%% is one or two big batches)")
    ap.add_argument("--files-per-batch", type=int, default=1000, help="stream.max_files_per_trigger")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a config override for every stage (e.g. stream.interpreted_sql=false); repeatable")
    ap.add_argument("--keep-setup", action="store_true",
                    help="with --workdir: save the lake after the setup stages, and on a later run with the same "
                         "options stream into a fresh copy of it instead of ingesting and training again")
    ap.add_argument("--rerun-recommend", action="store_true",
                    help="with --keep-setup and a saved setup: run the recommend stage on it again (after a change "
                         "to how the lists are written) and save the result as the setup")
    args = ap.parse_args()
    setup_logging("WARNING")
    root = Path(args.workdir or tempfile.mkdtemp(prefix="sparkrec-stream-bench-"))
    common = [f"lake.root={root / 'lake'}", f"data.dataset={args.dataset}", f"train.workdir={root / 'work'}",
              f"train.mlflow_uri={root / 'ml'}", "train.progress=false", "train.backend=local",
              f"train.epochs={args.epochs}", "train.blend_trials=4", "model.history=20",
              f"stream.path={root / 'landing'}", f"stream.replay_batch={args.batch}", "stream.trigger_seconds=0",
              f"stream.max_files_per_trigger={args.files_per_batch}",
              f"stream.replay_fraction={args.replay_fraction}", *args.set]
    cfg = load_config(None, common)
    spark = get_spark(cfg.spark)
    lake = DeltaRsLake(spark, cfg.lake.root, cfg.namespace, context=RunContext(stage="bench"))
    saved, marker = root / "setup-lake", root / "setup.json"
    # what the setup depends on: not the stream's own options, but the share held out from it
    setup_options = [o for o in common if not o.startswith("stream.") or o.startswith("stream.replay_fraction=")]
    if args.keep_setup and marker.exists():  # the lake as the last setup left it, before any stream
        if json.loads(marker.read_text()) != setup_options:
            raise SystemExit(f"{marker} was set up with other options: use another --workdir")
        for stale in (root / "lake", root / "landing", Path(checkpoint_location(cfg))):
            shutil.rmtree(stale, ignore_errors=True)
        shutil.copytree(saved, root / "lake")
        print(f"setup reused from {saved}")
        if args.rerun_recommend:
            t = time.perf_counter()
            run_recommend(cfg, spark, lake)
            print(f"recommend stage run again on the setup: {time.perf_counter() - t:.0f} s")
            shutil.rmtree(saved)
            shutil.copytree(root / "lake", saved)
    else:
        _, _, cut = held_out(cfg, spark)
        if resolve_source(cfg.data).interactions.columns.timestamp is not None:
            batch_cfg = load_config(None, [*common,
                                           f"ingest.timestamp_max='{dt.datetime.fromtimestamp(cut - 1, dt.UTC)}'"])
        else:  # no time to hold the replayed part out by: the batch stages read a copy without it
            batch_cfg = load_config(None, [*common, *training_copy(cfg, spark, cut, root / "train-data")])
        t = time.perf_counter()
        for stage in (run_ingest, run_features, run_train, run_recommend):
            stage(batch_cfg, spark, lake)
        print(f"setup {time.perf_counter() - t:.0f} s")
        if args.keep_setup:
            shutil.copytree(root / "lake", saved)
            marker.write_text(json.dumps(setup_options))

    ran: list[dict[str, Any]] = []
    Path(cfg.stream.path).mkdir(parents=True, exist_ok=True)  # the query's source must exist before it starts
    stream = threading.Thread(target=lambda: ran.append(run_stream(cfg, spark, lake)), daemon=True)
    stream.start()
    # a steady rate into a running query: the stream's start (the served model loaded, ~30 s on
    # Book-Crossing's catalogue) is not part of any event's latency
    while not spark.streams.active:
        if not stream.is_alive():
            raise SystemExit("the stream stopped before its query started (its error is above)")
        time.sleep(0.2)
    replayed = run_replay(cfg, spark, args.rate, args.events)
    landed_all = time.time()
    while not (lake.exists(BATCHES) and
               (lake.read(BATCHES).agg(F.sum("read")).collect()[0][0] or 0) >= replayed["events"]):
        time.sleep(1)
    for query in spark.streams.active:
        query.stop()
    stream.join()

    rows = lake.read(BATCHES).toPandas().sort_values("batch_id")
    print(rows[["batch_id", "files", "read", "users_refreshed", "seconds", "lag_seconds"]].to_string(index=False))
    lag = rows["lag_seconds"].dropna().to_numpy()
    busy = float(rows["seconds"].sum())
    steady = rows.iloc[1:-1] if len(rows) >= 3 else rows
    result: dict[str, Any] = {
        "dataset": args.dataset, "overrides": args.set, "rate": args.rate, "events": replayed["events"],
        "batches": len(rows),
        "latency_p50_s": round(float(np.percentile(lag, 50)), 2),
        "latency_p95_s": round(float(np.percentile(lag, 95)), 2),
        "sustained_events_per_s": round(float(rows["read"].sum()) / max(busy, 1e-9), 1),
        # the batches between the first (warm-up, one file) and the last (the tail after landing
        # stopped): the throughput of full batches, which must be >= --rate for the backlog to hold
        "steady_events_per_s": round(float(steady["read"].sum()) / max(float(steady["seconds"].sum()), 1e-9), 1),
        # the last batch's end after the last file landed: about one batch when the stream keeps up
        "drain_seconds": round((rows["committed_at"].max().timestamp() - landed_all), 1),
        **prequential(lake, cfg.recommend.k),
        "batches_in_driver": ran[0]["batches_in_driver"] if ran else None,
        "mean_step_seconds": ran[0]["mean_step_seconds"] if ran else None}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
