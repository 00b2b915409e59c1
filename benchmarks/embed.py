"""Benchmark of the embed stage on Book-Crossing, printed as a small report.

Answers three questions, all in one run on one machine so the numbers are comparable:

1. Does Spark cost throughput? texts/s of the Spark job (``predict_batch_udf``, one model per
   Python worker) against the same model in one plain process, and their ratio (goal >= 0.9).
2. How long does embedding every rated Book-Crossing book take through ``run_embed``?
3. Does the incremental path pay off? A second run over unchanged items must embed 0 rows;
   its time is reported as a fraction of the first.

Plus GPU texts/s when torch sees a GPU. Usage::

    python benchmarks/embed.py --limit 20000          # quick
    python benchmarks/embed.py                         # every rated book
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from pyspark.sql import DataFrame, SparkSession, Window  # noqa: E402
from pyspark.sql import functions as F  # noqa: E402

from sparkrec.config import Config, EmbedConfig, SparkConfig  # noqa: E402
from sparkrec.lake import DeltaRsLake, RunContext  # noqa: E402
from sparkrec.logs import setup_logging  # noqa: E402
from sparkrec.schemas import ITEM_FEATURES  # noqa: E402
from sparkrec.session import get_spark  # noqa: E402
from sparkrec.text import ITEM_FEATURES_TABLE, item_text, make_encoder, run_embed  # noqa: E402
from sparkrec.text.hf import TransformersEncoder  # noqa: E402


def _csv(spark: SparkSession, path: Path) -> DataFrame:
    return (spark.read.option("header", True).option("sep", ";").option("quote", '"')
            .option("escape", "\\").option("encoding", "ISO-8859-1").csv(str(path)))


def rated_books(spark: SparkSession, root: Path, limit: int | None) -> DataFrame:
    """Books with at least one rating, shaped as ``item_features`` (other columns null)."""
    books = _csv(spark, root / "BX-Books.csv").dropDuplicates(["ISBN"])
    rated = _csv(spark, root / "BX-Book-Ratings.csv").select("ISBN").distinct()
    items = books.join(rated, on="ISBN", how="left_semi")
    if limit:
        items = items.orderBy("ISBN").limit(limit)
    year = F.col("Year-Of-Publication").cast("int")
    shaped = items.select(
        F.dense_rank().over(Window.orderBy("ISBN")).cast("int").alias("item_idx"),
        F.col("ISBN").alias("item_id"), F.col("Book-Title").alias("title"),
        F.array(F.col("Book-Author")).alias("authors"), F.col("Publisher").alias("publisher"),
        F.when(year > 0, year).alias("year"))
    return shaped.select(*[(F.col(f.name) if f.name in shaped.columns else F.lit(None))
                           .cast(f.dataType).alias(f.name) for f in ITEM_FEATURES.fields])


def throughput(spark: SparkSession, encoder: TransformersEncoder, texts: list[str],
               partitions: int, repeats: int) -> dict[str, Any]:
    """texts/s in one plain process vs through Spark, model loading excluded from both.

    The two are measured alternately ``repeats`` times and the medians reported, so that load
    from other processes on a shared machine hits both sides alike.
    """
    encoder.encode(texts[: encoder.settings.batch_size])  # load the model in this process
    udf = encoder.udf()  # one udf object: the warm-up's model stays cached in every worker
    df = spark.createDataFrame([(t,) for t in texts], "text string").repartition(partitions) \
        .sortWithinPartitions(F.length("text")).cache()
    df.count()
    warm = df.limit(partitions * encoder.settings.batch_size).repartition(partitions)
    warm.select(udf("text")).write.format("noop").mode("overwrite").save()
    plain, in_spark = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        encoder.encode(texts)
        plain.append(len(texts) / (time.perf_counter() - start))
        start = time.perf_counter()
        df.select(udf("text").alias("v")).write.format("noop").mode("overwrite").save()
        in_spark.append(len(texts) / (time.perf_counter() - start))
    df.unpersist()
    ratios = [s / p for s, p in zip(in_spark, plain, strict=True)]
    return {"plain_texts_per_s": round(statistics.median(plain), 1),
            "spark_texts_per_s": round(statistics.median(in_spark), 1),
            "spark_vs_plain": round(statistics.median(ratios), 3),
            "rounds_plain": [round(x, 1) for x in plain], "rounds_spark": [round(x, 1) for x in in_spark]}


def gpu_throughput(texts: list[str], batch_size: int) -> dict[str, Any]:
    import torch

    if not torch.cuda.is_available():
        return {"gpu": "no GPU present (torch.cuda.is_available() is False): GPU throughput not measured"}
    enc = TransformersEncoder.from_config(EmbedConfig(device="cuda", batch_size=batch_size))
    enc.encode(texts[:batch_size])
    torch.cuda.synchronize()
    start = time.perf_counter()
    enc.encode(texts)
    torch.cuda.synchronize()
    return {"gpu": torch.cuda.get_device_name(0),
            "gpu_texts_per_s": round(len(texts) / (time.perf_counter() - start), 1)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--limit", type=int, default=None, help="books to embed (default: all rated)")
    parser.add_argument("--throughput-texts", type=int, default=4000,
                        help="texts for the Spark-vs-plain comparison")
    parser.add_argument("--repeats", type=int, default=3, help="alternating plain/Spark rounds")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--partitions", type=int, default=None, help="default: 2 x default parallelism")
    parser.add_argument("--master", default="local[*]")
    parser.add_argument("--datasets", type=Path, default=REPO.parent / "shared" / "datasets")
    parser.add_argument("--lake", default=None, help="lake root (default: a temporary directory)")
    parser.add_argument("--skip-full", action="store_true", help="only the throughput comparison")
    args = parser.parse_args(argv)

    setup_logging("WARNING")
    spark = get_spark(SparkConfig(master=args.master, driver_memory="6g"))
    ecfg = EmbedConfig(batch_size=args.batch_size, partitions=args.partitions)
    cfg = Config(embed=ecfg)
    partitions = args.partitions or 2 * spark.sparkContext.defaultParallelism
    report: dict[str, Any] = {"cores": os.cpu_count(), "master": spark.sparkContext.master,
                              "partitions": partitions, "batch_size": args.batch_size,
                              "load_avg_start": round(os.getloadavg()[0], 2)}

    with tempfile.TemporaryDirectory(prefix="sparkrec-embed-bench-") as tmp:
        lake = DeltaRsLake(spark, args.lake or tmp, "bench", context=RunContext(stage="bench-embed"))
        items = rated_books(spark, args.datasets / "book-crossing", args.limit)
        lake.overwrite(ITEM_FEATURES_TABLE, items)
        features = lake.read(ITEM_FEATURES_TABLE)
        n_books = features.count()
        report["books"] = n_books

        sample = features.select(item_text(features, ecfg.item_template).alias("t")) \
            .limit(args.throughput_texts).collect()  # a few thousand short strings
        texts = [r.t for r in sample]
        encoder = make_encoder(ecfg, spark)
        assert isinstance(encoder, TransformersEncoder)
        report["throughput_texts"] = len(texts)
        report.update(throughput(spark, encoder, texts, partitions, args.repeats))

        if not args.skip_full:
            first = run_embed(cfg, spark, lake)
            second = run_embed(cfg, spark, lake)
            report.update({
                "full_embedded": first["embedded"], "full_seconds": first["seconds"],
                "full_texts_per_s": round(first["embedded"] / first["seconds"], 1),
                "second_embedded": second["embedded"], "second_seconds": second["seconds"],
                "second_vs_first": round(second["seconds"] / first["seconds"], 4)})
        report.update(gpu_throughput(texts, args.batch_size))
    report["load_avg_end"] = round(os.getloadavg()[0], 2)  # other processes skew every figure

    width = max(len(k) for k in report)
    for key, value in report.items():
        print(f"{key:<{width}}  {value}")
    print(json.dumps(report))
    spark.stop()
    return report


if __name__ == "__main__":
    main()
