"""Where a streamed micro-batch's seconds go, batch size held fixed.

`benchmarks/stream.py` measures latency under a landing rate, where a slow batch makes the next
one bigger; this one feeds a saved setup's replayed files to the micro-batch function itself
(`stream.batch.process_batch`, the driver path a running query takes for small batches), a fixed
number of landing files per batch, and prints each batch's steps and, with `--profile`, the
last batch's cProfile. The first batch pays the process's cold start (Spark's first jobs, the
served model loaded), so read the ones after it.

    python benchmarks/stream.py --dataset bookcrossing --rate 100 --events 6000 --epochs 1 \
        --workdir /tmp/bench/bx --keep-setup          # saves the setup and the landed files
    python benchmarks/stream_steps.py --workdir /tmp/bench/bx --files 2 --batches 6

Measured (2026-12-07, Book-Crossing setup of that day, 50 events a landing file; outputs in
`benchmarks/results/2026-12-07/stream-steps-bookcrossing.txt`):
- `--files 2` (100 events, ~85 users a batch), code of 2cd6e04: **6.3-7.6 s** a batch after the first:
  read+validate 3.0-3.3 s, quarantine 0.11-0.15 s, interactions 0.21-0.27 s, events 0.5-1.0 s, lists
  1.4-2.0 s, ranks at arrival 0.25-0.43 s. The same probe on e9e2d02 (lists table clustered, nothing
  else) gave 7.8-10.7 s with quarantine 1.1-1.8 s and interactions 1.4-1.5 s; before the clustering,
  the lists step alone rewrote the whole 1.6M-row table (~7.5 s).
- `--files 20` (1,000 events, ~760 users): 16.8-17.7 s after the first: lists 8.9-10.0 s (scoring
  ~2.5 s, explanations ~1.5 s, reading and rewriting ~520 of the table's 1,272 files, planning the
  MERGE), read+validate 3.8-4.1 s, ranks at arrival 1.5-1.7 s.
- Code of 4882447 (the items checked against a broadcast set; the batches under the query's
  interpreted SQL), a fresh setup on a quicker day (`stream-steps-bookcrossing-known-set.txt`):
  `--files 10` (500 events, ~400 users): 5.2-6.0 s, read+validate 0.7-1.0 s, lists ~2.9 s;
  500-event files, `--files 10` (5,000 events, ~2,800 users): 20 s, lists 13-15 s.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import shutil
import time
from pathlib import Path
from typing import Any

from sparkrec.config import load_config
from sparkrec.lake import DeltaRsLake, RunContext
from sparkrec.logs import setup_logging
from sparkrec.session import get_spark
from sparkrec.stream.batch import process_batch
from sparkrec.stream.driver import KnownItems, Refresher
from sparkrec.stream.job import INTERPRETED, session_conf
from sparkrec.stream.once import BatchTxn
from sparkrec.stream.prequential import FrozenLists
from sparkrec.stream.source import landing_format


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", required=True, help="a benchmarks/stream.py --keep-setup workdir, after a run")
    ap.add_argument("--files", type=int, default=2, help="landing files per batch")
    ap.add_argument("--batches", type=int, default=6)
    ap.add_argument("--profile", action="store_true", help="print the last batch's cProfile")
    ap.add_argument("--sort", default="cumulative", help="the profile's order (pstats: cumulative, tottime, ...)")
    args = ap.parse_args()
    root = Path(args.workdir)
    setup = root / "setup.json"
    if not setup.exists():
        raise SystemExit(f"{setup} not found: run benchmarks/stream.py --workdir {root} --keep-setup first")
    # the setup's own options: MLflow knows the served run by this lake's path, so it is restored there
    cfg = load_config(None, json.loads(setup.read_text()))
    shutil.rmtree(cfg.lake.root, ignore_errors=True)
    shutil.copytree(root / "setup-lake", cfg.lake.root)
    setup_logging("WARNING")
    spark = get_spark(cfg.spark)
    lake = DeltaRsLake(spark, cfg.lake.root, cfg.namespace, context=RunContext(stage="bench"))
    refresher, frozen, known = Refresher(cfg, lake), FrozenLists(), KnownItems()
    refresher.prepare()
    files = sorted(str(p) for p in (root / "landing").iterdir())
    profile = cProfile.Profile()
    # the running query's session settings (stream.interpreted_sql) and its state kept across batches
    with session_conf(spark, INTERPRETED if cfg.stream.interpreted_sql else {}):
        run_batches(args, cfg, spark, lake, files, (refresher, frozen, known), profile)
    if args.profile:
        pstats.Stats(profile).sort_stats(args.sort).print_stats(40)


def run_batches(args: argparse.Namespace, cfg: Any, spark: Any, lake: DeltaRsLake, files: list[str],
                state: tuple[Refresher, FrozenLists, KnownItems], profile: cProfile.Profile) -> None:
    refresher, frozen, known = state
    chunks = [files[n * args.files:(n + 1) * args.files] for n in range(args.batches)]
    chunks = [batch for batch in chunks if batch]
    for n, batch in enumerate(chunks):
        last = n == len(chunks) - 1
        if last and args.profile:
            profile.enable()
        started = time.perf_counter()
        report = process_batch(cfg, spark, lake, batch, landing_format(cfg), BatchTxn("bench-steps", n),
                               refresher=refresher, frozen=frozen, known=known)
        if last and args.profile:
            profile.disable()
        print(json.dumps({"batch": n, "events": report.read, "users": report.users_refreshed,
                          "seconds": round(time.perf_counter() - started, 2), "steps": report.steps}), flush=True)


if __name__ == "__main__":
    main()
