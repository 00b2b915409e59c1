"""The hybrid's linear-head Gram matrices on full Book-Crossing (issue 16's training time): the
Spark co-occurrence job the head used to run per Gram (``sparkrec.cooccurrence.gram`` over each
user's largest weight per head item, collected in bands into a dense matrix) against the driver
path it uses now (``head_entries`` once, then ``gram_of`` per Gram), same data, same run.

A training computes three Grams (weighted and binary on the validation-carved train rows for the
blend search, one more on every train row for the served head); the driver path collects the
entries once per row set, and the factor term reads the same entries. The positives are every
rating of ``BX-Book-Ratings.csv`` (weight: the rating, 1 for an implicit 0), users and items
numbered in file order; the head is the ``m`` items with the most users.

    python benchmarks/head_gram.py                 # m = 5,000 (the pipeline benchmark's) and 20,000
    python benchmarks/head_gram.py --sizes 2000
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from sparkrec.config import SparkConfig
from sparkrec.cooccurrence import gram
from sparkrec.model.head import gram_of, head_entries
from sparkrec.session import get_spark

BX = Path(__file__).resolve().parents[2] / "shared/datasets/book-crossing"
BAND_ENTRIES = 20_000_000  # the old path's band of (i, j) entries per toPandas


def positives() -> pd.DataFrame:
    df = pd.read_csv(BX / "BX-Book-Ratings.csv", sep=";", encoding="latin-1", dtype=str, on_bad_lines="skip")
    df.columns = ["user", "isbn", "rating"]
    rating = pd.to_numeric(df["rating"], errors="coerce").fillna(0.0)
    return pd.DataFrame({"user_idx": pd.factorize(df["user"])[0].astype("int32"),
                         "item_idx": pd.factorize(df["isbn"])[0].astype("int32"),
                         "weight": np.where(rating > 0, rating, 1.0)})


def spark_gram(pos: DataFrame, rows: np.ndarray, binary: bool) -> np.ndarray:
    """What the head did before: the co-occurrence job on executors, in bands to the driver."""
    keep = pos.sparkSession.createDataFrame([(int(r) - 1,) for r in rows], "item_idx int")
    value = F.lit(1.0).cast("double") if binary else F.max("weight").cast("double")
    x = pos.groupBy("user_idx", "item_idx").agg(value.alias("value")).join(F.broadcast(keep), "item_idx")
    g = np.zeros((len(rows), len(rows)), dtype=np.float32)
    band = max(1, BAND_ENTRIES // len(rows))
    entries_df = gram(x).persist()
    try:
        for start in range(0, len(rows), band):
            lo, hi = int(rows[start]) - 1, int(rows[min(start + band, len(rows)) - 1]) - 1
            e = entries_df.filter(F.col("i").between(lo, hi)).toPandas()
            i, j = np.searchsorted(rows, e["i"].to_numpy() + 1), np.searchsorted(rows, e["j"].to_numpy() + 1)
            np.add.at(g, (i, j), e["value"].to_numpy(dtype=np.float32))
    finally:
        entries_df.unpersist()
    return g


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[5000, 20000])
    args = ap.parse_args()
    pdf = positives()
    spark = get_spark(SparkConfig(master="local[2]", shuffle_partitions=4, driver_memory="6g"))
    pos = spark.createDataFrame(pdf).persist()
    print(f"Book-Crossing: {pos.count():,} ratings, {pdf['user_idx'].nunique():,} users, "
          f"{pdf['item_idx'].nunique():,} items")
    users_per_item = pdf.groupby("item_idx")["user_idx"].nunique().sort_values(ascending=False, kind="stable")
    print(f"{'m':>7} {'gram':>9} {'Spark s':>8} {'driver s':>9} {'speed-up':>9} {'max abs diff':>13}")
    for m in args.sizes:
        rows = np.sort(users_per_item.index[:m].to_numpy().astype(np.int64) + 1)
        t = time.perf_counter()
        entries = head_entries(pos, rows)
        collect = time.perf_counter() - t
        print(f"{m:>7,} {'entries':>9} {'':>8} {collect:>9.1f}   ({len(entries[1]):,} user-item pairs)")
        spark_total, driver_total = 0.0, collect
        for binary in (False, True):
            t = time.perf_counter()
            want = spark_gram(pos, rows, binary)
            slow = time.perf_counter() - t
            t = time.perf_counter()
            got = gram_of(entries, len(rows), binary)
            fast = time.perf_counter() - t
            spark_total, driver_total = spark_total + slow, driver_total + fast
            name = "binary" if binary else "weighted"
            print(f"{m:>7,} {name:>9} {slow:>8.1f} {fast:>9.1f} {slow / fast:>8.1f}x {np.abs(got - want).max():>13.1e}",
                  flush=True)
        print(f"{m:>7,} {'both':>9} {spark_total:>8.1f} {driver_total:>9.1f} {spark_total / driver_total:>8.1f}x"
              "   (driver: entries collected once + two products)")
    spark.stop()


if __name__ == "__main__":
    main()
