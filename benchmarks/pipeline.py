"""The whole pipeline on a full dataset against Spark ALS end to end, in one run (issue 16).

Ours: the stages of ``sparkrec pipeline`` (ingest -> features -> embed -> train -> recommend)
on ``data.dataset``, each timed, with the production settings of ``conf/local.yaml`` (training on
every event, validation carved from it) plus ``--set`` overrides. The reference: what a user of
Spark MLlib does on the same files: read the ratings CSV, index users and items
(``StringIndexer``), ``ALS(implicitPrefs=True)`` with the parameters our tuned ALS baseline selects
on this data (Book-Crossing: rank 128, regParam 0.3, alpha 1.0, 15 iterations: the
``als.best_params`` of benchmarks/quality.py's runs), ``recommendForAllUsers(k)`` and a parquet
write of the lists. Both sides read the same files from disk with a warm page cache; they run one
after the other in one process, ALS first, so neither finds the other's cached data.

Quality is not re-measured here: the production model trains on every event, so there is nothing
held out to score. NDCG@10 of the same model against the same tuned ALS is benchmarks/quality.py's
(Book-Crossing stratified: hybrid 0.1224 vs ALS 0.1082, 3 seeds).

    python benchmarks/pipeline.py                                   # full Book-Crossing: over 70 min on 2 cores
    python benchmarks/pipeline.py --set embed.runtime=onnx embed.quantize=int8
    python benchmarks/pipeline.py --keep /tmp/bx-lake               # keep the lake (benchmarks/serve.py --lake)
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def als_end_to_end(spark: Any, ratings: Any, out: Path, rank: int, reg: float, alpha: float, iters: int,
                   k: int) -> dict[str, float]:
    """Read -> index -> fit -> recommendForAllUsers -> write, the way Spark's docs do it."""
    from pyspark.ml.feature import StringIndexer
    from pyspark.ml.recommendation import ALS
    from pyspark.sql import functions as F

    times: dict[str, float] = {}
    t = time.perf_counter()
    opts = ratings.csv
    raw = (spark.read.options(sep=opts.sep, quote=opts.quote, escape=opts.escape, encoding=opts.encoding,
                              header=True).csv(ratings.path))
    user_col, item_col, rating_col = raw.columns[:3]
    # Book-Crossing's 0 is an implicit interaction, 1-10 an explicit rating: confidence 1 + r/10.
    raw = raw.select(F.col(user_col).alias("user"), F.col(item_col).alias("item"),
                     (1.0 + F.coalesce(F.col(rating_col).cast("double"), F.lit(0.0)) / 10.0).alias("weight"))
    indexed = (StringIndexer(inputCols=["user", "item"], outputCols=["user_idx", "item_idx"])
               .fit(raw).transform(raw)
               .select(F.col("user_idx").cast("int"), F.col("item_idx").cast("int"), "weight").cache())
    n = indexed.count()
    times["read + index"] = time.perf_counter() - t
    t = time.perf_counter()
    blocks = max(2, spark.sparkContext.defaultParallelism)
    model = ALS(rank=rank, maxIter=iters, regParam=reg, alpha=alpha, implicitPrefs=True, userCol="user_idx",
                itemCol="item_idx", ratingCol="weight", seed=42, numUserBlocks=blocks, numItemBlocks=blocks,
                coldStartStrategy="drop").fit(indexed)
    model.itemFactors.count()
    times["fit"] = time.perf_counter() - t
    t = time.perf_counter()
    model.recommendForAllUsers(k).write.mode("overwrite").parquet(str(out))
    times["recommendForAllUsers + write"] = time.perf_counter() - t
    indexed.unpersist()
    print(f"ALS: {n:,} ratings, rank {rank}, regParam {reg}, alpha {alpha}, {iters} iterations")
    return times


def ours(cfg: Any, spark: Any, stages: tuple[str, ...] | None = None) -> dict[str, float]:
    """``sparkrec pipeline``'s stages (or ``stages``), each through the CLI's own ``run_stages``
    (its input and table checks included), timed one by one."""
    from sparkrec.cli import PIPELINE, run_stages
    from sparkrec.lake import open_lake

    times: dict[str, float] = {}
    for name in stages or PIPELINE:
        t = time.perf_counter()
        run_stages(cfg, [name])
        times[name] = time.perf_counter() - t
        print(f"  {name:<10} {times[name]:8.1f} s", flush=True)
    recs = open_lake(spark, cfg).read("recommendations")
    print(f"recommendations: {recs.count():,} rows for {recs.select('user_id').distinct().count():,} users")
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="bookcrossing", choices=["bookcrossing", "movielens"])
    ap.add_argument("--set", nargs="*", default=[], help="config overrides for our pipeline")
    ap.add_argument("--als", default="128,0.3,1.0,15", help="rank,regParam,alpha,maxIter of the ALS reference")
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--keep", default=None, help="work directory to keep (default: a temporary one, removed)")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    from sparkrec.config import load_config
    from sparkrec.ingest.presets import resolve_source
    from sparkrec.logs import setup_logging
    from sparkrec.session import get_spark

    work = Path(args.keep or tempfile.mkdtemp(prefix="sparkrec-bench-pipeline-"))
    cfg = load_config(REPO / "conf" / "local.yaml", [
        f"lake.root={work / 'lake'}", f"train.workdir={work / 'train'}", f"train.mlflow_uri={work / 'mlruns'}",
        f"data.dataset={args.dataset}", f"recommend.k={args.k}", "train.progress=false", "logging.level=WARNING",
        *args.set])
    setup_logging("WARNING")
    spark = get_spark(cfg.spark)
    src = resolve_source(cfg.data)
    for spec in (s for s in (src.items, src.users, src.interactions, src.tags) if s is not None):
        spark.read.text(spec.path).count()  # warm the page cache for both sides
    rank, reg, alpha, iters = args.als.split(",")
    print(f"== whole pipeline vs Spark ALS: {args.dataset}, k={args.k}, Spark {spark.version}, "
          f"{spark.sparkContext.defaultParallelism} cores, load {os.getloadavg()[0]:.1f} ==")
    als = als_end_to_end(spark, src.interactions, work / "als_recs", int(rank), float(reg), float(alpha),
                         int(iters), args.k)
    for name, s in als.items():
        print(f"  {name:<30} {s:8.1f} s")
    spark.catalog.clearCache()
    print(f"ours ({' '.join(args.set) or 'conf/local.yaml'}):")
    mine = ours(cfg, spark)
    total_als, total_ours = sum(als.values()), sum(mine.values())
    print(f"\nSpark ALS end to end   {total_als:8.1f} s")
    print(f"sparkrec pipeline      {total_ours:8.1f} s  ({', '.join(f'{k} {v:.0f}' for k, v in mine.items())})")
    print(f"ratio ours / ALS       {total_ours / total_als:8.2f} x  (target < 1; load {os.getloadavg()[0]:.1f})")
    spark.stop()
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
