"""Ingest + features on a full dataset, against a plain CSV -> parquet copy in the same run.

Prints wall times, rows/s, the cost ratio of validation + Delta over a plain
``spark.read.csv(...).write.parquet(...)`` of the same files (each side run twice: first runs
compared, then second runs, since a JVM's first run pays its JIT warm-up), a no-op re-ingest,
and peak driver memory: the Python driver's RSS and, in local mode, the JVM's RSS (which holds
the driver and the executors together).

    python benchmarks/ingest_features.py                       # full Book-Crossing
    python benchmarks/ingest_features.py --dataset movielens
"""

from __future__ import annotations

import argparse
import resource
import shutil
import tempfile
import threading
import time
from pathlib import Path

import psutil

from sparkrec.config import Config, load_config
from sparkrec.features.job import run_features
from sparkrec.ingest.job import run_ingest
from sparkrec.ingest.presets import resolve_source
from sparkrec.lake import DeltaRsLake, RunContext
from sparkrec.logs import setup_logging
from sparkrec.session import get_spark


class PeakRss(threading.Thread):
    """Samples the RSS of the JVM child processes (local-mode Spark) every 0.2 s."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        me = psutil.Process()
        while not self._stop_event.is_set():
            total = sum(c.memory_info().rss for c in me.children(recursive=True) if "java" in c.name())
            self.peak = max(self.peak, total)
            time.sleep(0.2)

    def stop(self) -> int:
        self._stop_event.set()
        self.join()
        return self.peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dataset", default="bookcrossing", choices=["bookcrossing", "movielens", "sample"])
    parser.add_argument("--workdir", default=None, help="scratch directory (default: a temp dir)")
    args = parser.parse_args()
    setup_logging("WARNING")
    work = Path(args.workdir or tempfile.mkdtemp(prefix="sparkrec-bench-"))

    def config(lake: str) -> Config:
        return load_config(Path(__file__).resolve().parents[1] / "conf" / "local.yaml",
                           [f"lake.root={work / lake}", f"data.dataset={args.dataset}", "logging.level=WARNING"])

    cfg = config("lake")
    spark = get_spark(cfg.spark)
    rss = PeakRss()
    rss.start()
    src = resolve_source(cfg.data)
    inputs = [s for s in (src.items, src.users, src.interactions, src.tags) if s is not None]

    # Warm the OS page cache so neither side pays the first disk read.
    for spec in inputs:
        spark.read.text(spec.path).count()

    def plain_copy() -> float:
        t0 = time.perf_counter()
        for i, spec in enumerate(inputs):
            opts = spec.csv
            (spark.read.options(sep=opts.sep, quote=opts.quote, escape=opts.escape, encoding=opts.encoding,
                                header=True)
             .csv(spec.path).write.mode("overwrite").parquet(str(work / f"plain_{i}")))
        return time.perf_counter() - t0

    # Each side twice: the first run in this JVM pays its JIT warm-up (a first plain copy took
    # 8.5 s, the next two 4.3 and 4.2 s), so first is compared with first and second with second.
    plain_cold, plain_s = plain_copy(), plain_copy()

    lake = DeltaRsLake(spark, cfg.lake.root, cfg.namespace, context=RunContext(stage="ingest"))
    t0 = time.perf_counter()
    report = run_ingest(cfg, spark, lake)
    ingest_cold = time.perf_counter() - t0
    warm_cfg = config("lake-warm")
    t0 = time.perf_counter()
    run_ingest(warm_cfg, spark, DeltaRsLake(spark, warm_cfg.lake.root, cfg.namespace,
                                            context=RunContext(stage="ingest")))
    ingest_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    features = run_features(cfg, spark, lake.with_context(RunContext(stage="features")))
    features_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    again = run_ingest(cfg, spark, lake.with_context(RunContext(stage="ingest")))
    again_s = time.perf_counter() - t0
    jvm_peak = rss.stop()
    py_peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    rows = sum(t.read for t in report.tables)
    print(f"\n== ingest + features benchmark: {args.dataset} (Spark {spark.version}, "
          f"{spark.sparkContext.defaultParallelism} cores, delta-rs engine) ==")
    print(report.render())
    print(f"\nrows read (all input files)          {rows:>12,}")
    print(f"interactions: accepted + quarantined {report.table('interactions').accepted:,} + "
          f"{report.table('interactions').quarantined:,} = "
          f"{report.table('interactions').accepted + report.table('interactions').quarantined:,}")
    print(f"plain csv -> parquet, first          {plain_cold:>10.1f} s  {rows / plain_cold:>10,.0f} rows/s")
    print(f"ingest, first (validate + quarantine + Delta) {ingest_cold:>5.1f} s  {rows / ingest_cold:>10,.0f} rows/s"
          f"  ratio {ingest_cold / plain_cold:.2f} x")
    print(f"plain csv -> parquet, second         {plain_s:>10.1f} s  {rows / plain_s:>10,.0f} rows/s")
    print(f"ingest, second (into a fresh lake)   {ingest_s:>10.1f} s  {rows / ingest_s:>10,.0f} rows/s")
    print(f"features (indices, tables, splits)   {features_s:>10.1f} s  ({features['events']:,} events)")
    total = ingest_s + features_s
    print(f"ingest + features                    {total:>10.1f} s  {rows / total:>10,.0f} rows/s")
    print(f"ratio ingest / plain, second runs    {ingest_s / plain_s:>10.2f} x")
    print(f"ratio (ingest + features) / plain, second runs {total / plain_s:>4.2f} x")
    inserted = sum(t.inserted + t.updated for t in again.tables)
    print(f"second ingest (same input)           {again_s:>10.1f} s  rows inserted or updated: {inserted}, "
          f"tables skipped as unchanged: {sum(t.skipped for t in again.tables)}/{len(again.tables)}")
    print(f"ratio no-op re-ingest / first ingest {again_s / ingest_cold:>10.3f} x  (target <= 0.2)")
    print(f"ratio ingest / plain (target <= 2)   {ingest_s / plain_s:>10.2f} x second runs, "
          f"{ingest_cold / plain_cold:.2f} x first runs")
    print(f"peak driver memory: python {py_peak_kb / 1024:,.0f} MiB, "
          f"JVM (local mode: driver + executors) {jvm_peak / 2**20:,.0f} MiB")
    spark.stop()
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
