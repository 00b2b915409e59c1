"""Exact top-K scoring: kernel alternatives, then our Spark scoring against Spark ALS.

What it measures, all on the same data in one run:

1. each top-K kernel alternative in one process, one thread (Spark runs one task per core):
   user batches of ``--user-batch`` against every item, k best, seen items excluded, checked
   against a brute-force full sort (same scores; same items wherever there is no tie);
2. Spark MLlib ALS ``recommendForAllUsers(k)`` with our user and item vectors as its factors
   (rank = our dimension, so both do the same dot products; ALS keeps seen items);
3. the chosen kernel (``sparkrec.recommend.topk.top_k``) inside ``mapInArrow`` on the same users
   and vectors, seen items excluded, and the whole recommend scoring path (``score_users``:
   user tower over the history + top-K + evidence) with an untrained tower of the same shape.

Scores/s = users x items / seconds. Data: Book-Crossing's users, catalogue and seen lists (read
straight from ``../shared/datasets/book-crossing``: every ISBN of the books file is an item, each
user's rated ISBNs are seen) with random unit vectors, or ``--synthetic`` (the same shape, seen
lists drawn from a heavy-tailed distribution). ``--users`` takes the first N users by id.

    python benchmarks/scoring.py --users 8000 --rounds 2   # kernels + ALS + ours in Spark, local[2]
    python benchmarks/scoring.py --no-spark --rounds 3     # the kernels only

Measured 2026-12-02 on 2 cores shared with another agent and a long benchmark (load 6-12, so
absolute numbers are low and noisy; ratios are within one run). Book-Crossing's first users by
id with their rated books as seen (median 1, max 11,144), 271,379 items, d=64, k=20:

- kernels, 2,048 users, one thread, best of 3 (``--no-spark --rounds 3``): running threshold
  (chosen) 417.3M scores/s; torch.topk per 65,536-item block 175.2M (per 4,096: 168.0M); faiss
  IndexFlatIP with k + most seen 148.4M; argpartition per 65,536-item block (the previous kernel)
  61.5M (per 4,096: 80.1M); argpartition over whole rows 34.4M. All exact against a full sort.
- Spark local[2], 8,000 users, best of 2 (``--users 8000 --kernel-users 2048 --rounds 2``): ALS
  recommendForAllUsers 104.3 s = 20.8M scores/s; our kernel in mapInArrow (seen excluded)
  12.9 s = 168.0M scores/s, **8.07x** ALS; ``score_users`` (user tower, top-K, evidence) 14.6 s
  = 148.6M scores/s, **7.14x** ALS. An earlier single-round run: ALS 146.5 s, ours 11.5 s
  (12.8x) and 11.6 s (12.6x).
"""

from __future__ import annotations

import argparse
import json
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from sparkrec.ragged import csr, slice_csr
from sparkrec.recommend.topk import NEG, best_k, top_k

REPO = Path(__file__).resolve().parents[1]
BX = REPO.parent / "shared/datasets/book-crossing"

Seen = tuple[np.ndarray, np.ndarray]
Kernel = Callable[[np.ndarray, np.ndarray, int, np.ndarray, Seen], tuple[np.ndarray, np.ndarray]]


@dataclass
class Data:
    users: np.ndarray  # (U, d) float32 unit vectors
    items: np.ndarray  # (N, d) float32 unit vectors
    eligible: np.ndarray  # (N,) bool
    seen: Seen  # CSR of item rows per user
    source: str


def unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    v = rng.normal(size=(n, d)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def bookcrossing_seen(n_users: int) -> tuple[int, list[np.ndarray]]:
    """(catalogue size, seen item rows of the first ``n_users`` users by id with any rating of a
    known book); a regex over the raw lines because only the ISBN column is needed."""
    first = re.compile(rb'^"((?:[^"\\]|\\.)*)";')
    with open(BX / "BX-Books.csv", "rb") as f:
        next(f)
        isbns = {m.group(1) for line in f if (m := first.match(line))}
    row = {isbn: i for i, isbn in enumerate(sorted(isbns))}
    ratings = pd.read_csv(BX / "BX-Book-Ratings.csv", sep=";", encoding="latin-1", dtype=str,
                          on_bad_lines="skip", usecols=[0, 1])
    ratings.columns = ["user", "isbn"]
    ratings["item"] = ratings["isbn"].str.encode("latin-1").map(row)
    ratings = ratings.dropna(subset=["item"])
    ratings["user"] = pd.to_numeric(ratings["user"])
    chosen = np.sort(ratings["user"].unique())[:n_users]
    per_user = ratings[ratings["user"].isin(chosen)].groupby("user")["item"]
    return len(row), [np.unique(g.to_numpy().astype(np.int64)) for _, g in per_user]


def synthetic_seen(rng: np.random.Generator, n_users: int, n_items: int) -> list[np.ndarray]:
    """Seen-list lengths from a Pareto tail (median ~3, a few in the thousands), as Book-Crossing's."""
    lengths = np.minimum((rng.pareto(0.8, n_users) * 2 + 1).astype(int), 8000)
    return [np.unique(rng.integers(0, n_items, n)) for n in lengths]


def load_data(n_users: int, dim: int, synthetic: bool, seed: int = 0) -> Data:
    rng = np.random.default_rng(seed)
    if synthetic or not (BX / "BX-Books.csv").exists():
        n_items, lists, source = 270_947, None, f"synthetic: {n_users:,} users, seen lengths Pareto(0.8)"
        lists = synthetic_seen(rng, n_users, n_items)
    else:
        n_items, lists = bookcrossing_seen(n_users)
        source = f"Book-Crossing: first {len(lists):,} users by id, their rated books as seen, random vectors"
    eligible = np.ones(n_items, dtype=bool)
    return Data(unit(rng, len(lists), dim), unit(rng, n_items, dim), eligible, csr(lists), source)


# --- kernel alternatives ------------------------------------------------------------------------------

def masked_block(users: np.ndarray, items: np.ndarray, start: int, stop: int, eligible: np.ndarray,
                 seen: Seen) -> np.ndarray:
    """Scores of items ``start:stop`` with ineligible and seen items at -inf (what the old loop did)."""
    scores = users @ items[start:stop].T
    scores[:, ~eligible[start:stop]] = NEG
    rows = np.repeat(np.arange(len(users)), np.diff(seen[0]))
    inside = (seen[1] >= start) & (seen[1] < stop)
    scores[rows[inside], seen[1][inside] - start] = NEG
    return scores


def argpartition_blocks(block_rows: int) -> Kernel:
    """The previous kernel: every score of every block through argpartition, running merge."""

    def run(users: np.ndarray, items: np.ndarray, k: int, eligible: np.ndarray, seen: Seen):
        best_i = np.full((len(users), k), -1, dtype=np.int64)
        best_s = np.full((len(users), k), NEG, dtype=np.float32)
        for start in range(0, len(items), block_rows):
            cols, vals = best_k(masked_block(users, items, start, min(start + block_rows, len(items)),
                                             eligible, seen), k)
            cand_i, cand_s = np.hstack([best_i, cols + start]), np.hstack([best_s, vals])
            keep, best_s = best_k(cand_s, k, np.where(cand_i >= 0, cand_i, np.iinfo(np.int64).max))
            best_i = np.take_along_axis(cand_i, keep, axis=1)
        return best_i, best_s

    return run


def torch_topk(block_rows: int) -> Kernel:
    """torch.topk per masked block, merged with the running best by a second topk."""
    import torch

    def run(users: np.ndarray, items: np.ndarray, k: int, eligible: np.ndarray, seen: Seen):
        best_s = torch.full((len(users), k), float("-inf"))
        best_i = torch.full((len(users), k), -1, dtype=torch.int64)
        for start in range(0, len(items), block_rows):
            scores = torch.from_numpy(masked_block(users, items, start, min(start + block_rows, len(items)),
                                                   eligible, seen))
            vals, cols = torch.topk(scores, min(k, scores.shape[1]), dim=1)
            cand_s, cand_i = torch.cat([best_s, vals], 1), torch.cat([best_i, cols + start], 1)
            best_s, keep = torch.topk(cand_s, k, dim=1)
            best_i = torch.gather(cand_i, 1, keep)
        return best_i.numpy(), best_s.numpy()

    return run


def faiss_flat(items: np.ndarray, eligible: np.ndarray) -> Kernel:
    """faiss IndexFlatIP over the eligible items: k + the batch's largest seen list, then the seen
    items dropped; exact, but the over-fetch grows with the heaviest user of the batch."""
    import faiss

    rows = np.flatnonzero(eligible)
    index = faiss.IndexFlatIP(items.shape[1])
    index.add(np.ascontiguousarray(items[rows]))

    def run(users: np.ndarray, _items: np.ndarray, k: int, _eligible: np.ndarray, seen: Seen):
        extra = int(np.diff(seen[0]).max(initial=0))
        vals, cand = index.search(users, min(k + extra, len(rows)))
        cand = np.where(cand >= 0, rows[np.maximum(cand, 0)], -1)
        user_of = np.repeat(np.arange(len(users)), np.diff(seen[0]))
        key = np.arange(len(users))[:, None] * len(items) + cand
        vals[np.isin(key, user_of * len(items) + seen[1]) | (cand < 0)] = NEG
        keep, best_s = best_k(vals, k, np.where(cand >= 0, cand, np.iinfo(np.int64).max))
        return np.take_along_axis(cand, keep, axis=1), best_s

    return run


def threshold_kernel(block_rows: int) -> Kernel:
    """The chosen kernel (``top_k``): a running k-th-best threshold, argpartition on the hits only."""

    def run(users: np.ndarray, items: np.ndarray, k: int, eligible: np.ndarray, seen: Seen):
        return top_k(users, items, k, eligible, seen, block_rows)

    return run


def brute_force(users: np.ndarray, items: np.ndarray, k: int, eligible: np.ndarray, seen: Seen):
    """Reference: the whole row, masked, fully sorted (stable: ties to the smaller row)."""
    scores = masked_block(users, items, 0, len(items), eligible, seen)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    vals = np.take_along_axis(scores, order, axis=1)
    return np.where(np.isfinite(vals), order, -1), vals


def exact(got: tuple[np.ndarray, np.ndarray], want: tuple[np.ndarray, np.ndarray]) -> bool:
    """Same scores rank by rank, and every item scoring clearly above the k-th is in both lists
    (items tied at the k-th score may differ)."""
    (gi, gs), (wi, ws) = got, want
    if not np.allclose(gs, ws, rtol=1e-5, atol=1e-5):
        return False
    above = ws > ws[:, -1:] + 1e-5
    return all(set(wi[r][above[r]].tolist()) <= set(gi[r].tolist()) for r in range(len(wi)))


def in_batches(data: Data, batch: int, n_users: int) -> Iterator[tuple[np.ndarray, Seen]]:
    for s in range(0, n_users, batch):
        e = min(s + batch, n_users)
        yield data.users[s:e], slice_csr(*data.seen, s, e)


def timed(kernel: Kernel, data: Data, k: int, batch: int, n_users: int) -> float:
    t = time.perf_counter()
    for users, seen in in_batches(data, batch, n_users):
        kernel(users, data.items, k, data.eligible, seen)
    return time.perf_counter() - t


def time_kernels(data: Data, kernels: dict[str, Kernel], k: int, batch: int, n_users: int,
                 check_users: int, rounds: int) -> dict[str, dict[str, Any]]:
    """Best seconds of ``rounds`` and scores/s per kernel (one thread), and whether it matched
    the reference."""
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(1)
    out: dict[str, dict[str, Any]] = {}
    sub, sub_seen = next(in_batches(data, check_users, check_users))
    want = brute_force(sub, data.items, k, data.eligible, sub_seen)
    with threadpool_limits(1):
        for name, kernel in kernels.items():
            ok = exact(kernel(sub, data.items, k, data.eligible, sub_seen), want)
            s = min(timed(kernel, data, k, batch, n_users) for _ in range(rounds))
            out[name] = {"s": round(s, 2), "scores_per_s": round(n_users * len(data.items) / s), "exact": ok}
            print(f"  {name:28s} {s:7.2f} s  {n_users * len(data.items) / s / 1e6:8.1f}M scores/s  exact={ok}",
                  flush=True)
    return out


# --- Spark: ALS recommendForAllUsers vs ours ---------------------------------------------------------

def factors(spark: Any, vectors: np.ndarray, offset: int = 0) -> Any:
    """(id, features) DataFrame, the layout of ALSModel's userFactors / itemFactors."""
    table = pa.table({"id": pa.array(np.arange(len(vectors), dtype=np.int32) + offset),
                      "features": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)),
                                                                     vectors.shape[1]).cast(pa.list_(pa.float32()))})
    return spark.createDataFrame(table.to_pandas())


def als_model(spark: Any, users: Any, items: Any, rank: int) -> Any:
    """An ALSModel whose factors are exactly our vectors: the constructor is private[ml] in Scala,
    which is public in bytecode, so py4j reaches it."""
    from pyspark.ml.recommendation import ALSModel

    jvm = spark._jvm
    java = jvm.org.apache.spark.ml.recommendation.ALSModel("als_bench", rank, users._jdf, items._jdf)
    return ALSModel(java.setUserCol("user").setItemCol("item"))


def noop(df: Any) -> float:
    t = time.perf_counter()
    df.write.format("noop").mode("overwrite").save()
    return time.perf_counter() - t


def spark_kernel(spark: Any, data: Data, n_users: int, k: int, batch: int, block_rows: int, parts: int) -> Any:
    """The kernel alone inside mapInArrow: user vectors and seen lists in, k rows per user out."""
    from pyspark.sql import types as T

    seen = [data.seen[1][data.seen[0][u]:data.seen[0][u + 1]].astype(np.int32) for u in range(n_users)]
    pdf = pd.DataFrame({"user": np.arange(n_users, dtype=np.int32), "vec": list(data.users[:n_users]),
                        "seen": seen})
    states = spark.createDataFrame(pdf, "user int, vec array<float>, seen array<int>").repartition(parts).persist()
    states.count()
    bc = spark.sparkContext.broadcast((data.items, data.eligible))
    schema = T.StructType([T.StructField("user", T.IntegerType()), T.StructField("item", T.LongType()),
                           T.StructField("score", T.FloatType())])

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from sparkrec.ragged import arrow_csr

        items, eligible = bc.value
        for whole in batches:
            for s in range(0, whole.num_rows, batch):
                b = whole.slice(s, batch)
                vecs = arrow_csr(b.column("vec"), np.float32)[1].reshape(b.num_rows, -1)
                idx, vals = top_k(vecs, items, k, eligible, arrow_csr(b.column("seen")), block_rows)
                yield pa.RecordBatch.from_arrays([
                    pa.array(np.repeat(b.column("user").to_numpy(), idx.shape[1])), pa.array(idx.reshape(-1)),
                    pa.array(vals.reshape(-1))], names=["user", "item", "score"])

    return states, states.mapInArrow(run, schema)


def spark_full(spark: Any, data: Data, n_users: int, k: int, batch: int, block_rows: int, parts: int) -> Any:
    """``score_users`` (user tower + top-K + evidence), an untrained tower of our shape."""
    import torch

    from sparkrec.model.towers import ModelSpec, UserTower
    from sparkrec.recommend.score import Payload, score_users

    torch.manual_seed(0)
    spec = ModelSpec(n_items=len(data.items), n_users=n_users, dim=data.items.shape[1], history=30)
    tower = {key: v.numpy() for key, v in UserTower(spec).state_dict().items()}
    items = np.vstack([np.zeros((1, data.items.shape[1]), np.float32), data.items])
    payload = Payload(items=items, eligible=np.concatenate([[False], data.eligible]), tower=tower,
                      spec=spec.to_dict(), k=k, block_rows=block_rows, user_batch=batch, explain_items=3,
                      exclude_seen=True)
    rows = []
    for u in range(n_users):
        seen = data.seen[1][data.seen[0][u]:data.seen[0][u + 1]] + 1
        hist = np.zeros(30, np.int32)
        hist[30 - min(30, len(seen)):] = seen[-30:]
        rows.append((u, f"u{u}", hist.tolist(), [0.0] * 30, seen.astype(int).tolist(), "history"))
    states = spark.createDataFrame(rows, "user_idx int, user_id string, hist array<int>, gaps array<float>, "
                                         "seen array<int>, basis string").repartition(parts).persist()
    states.count()
    return states, score_users(spark, states, payload, parts)


def compare_spark(data: Data, n_users: int, k: int, batch: int, block_rows: int, rounds: int) -> dict[str, Any]:
    """Seconds per path, the best of ``rounds``; every other round runs ours before ALS, so a
    change of load on a shared machine does not favour one side."""
    from sparkrec.config import SparkConfig
    from sparkrec.session import get_spark

    spark = get_spark(SparkConfig(master="local[2]", driver_memory="6g"))
    parts = 2 * spark.sparkContext.defaultParallelism
    user_f = factors(spark, data.users[:n_users]).repartition(parts).persist()
    item_f = factors(spark, data.items).repartition(parts).persist()
    user_f.count(), item_f.count()
    warm = 64  # JIT, Python workers and imports: paid once per application, not per scoring run

    def als(users: int) -> float:
        return noop(als_model(spark, user_f.limit(users), item_f, data.items.shape[1]).recommendForAllUsers(k))

    def ours(build: Callable[..., Any]) -> Callable[[int], float]:
        def run(users: int) -> float:
            states, df = build(spark, data, users, k, batch, block_rows, parts)
            took = noop(df)
            states.unpersist()
            return took
        return run

    paths = {"als_recommendForAllUsers": als, "ours_kernel_in_spark": ours(spark_kernel),
             "ours_score_users": ours(spark_full)}
    for path in paths.values():
        path(warm)
    times: dict[str, list[float]] = {name: [] for name in paths}
    for r in range(rounds):
        for name in (list(paths) if r % 2 == 0 else list(paths)[::-1]):
            times[name].append(paths[name](n_users))
            print(f"  round {r + 1} {name:28s} {times[name][-1]:7.2f} s", flush=True)
    out: dict[str, Any] = {"spark_partitions": parts, "rounds": rounds}
    for name, seconds in times.items():
        out[f"{name}_s"] = [round(x, 2) for x in seconds]
        out[f"{name}_scores_per_s"] = round(n_users * len(data.items) / min(seconds))
    for name in ("ours_kernel_in_spark", "ours_score_users"):
        out[f"{name}_over_als"] = round(min(times["als_recommendForAllUsers"]) / min(times[name]), 2)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=4000, help="users scored in Spark (ALS and ours)")
    ap.add_argument("--kernel-users", type=int, default=2048, help="users per kernel alternative (one thread)")
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--user-batch", type=int, default=1024)
    ap.add_argument("--block-rows", type=int, default=65_536)
    ap.add_argument("--check-users", type=int, default=64, help="users checked against a full sort")
    ap.add_argument("--kernels", default="threshold,argpartition,argpartition@4096,argpartition_full,torch_topk,"
                                          "torch_topk@4096,faiss_flat", help="name or name@block_rows, comma list")
    ap.add_argument("--rounds", type=int, default=1, help="measurements per kernel and Spark path (best kept)")
    ap.add_argument("--no-spark", action="store_true")
    ap.add_argument("--synthetic", action="store_true", help="synthetic seen lists instead of Book-Crossing's")
    args = ap.parse_args()
    data = load_data(max(args.users, args.kernel_users), args.dim, args.synthetic)
    lengths = np.diff(data.seen[0])
    result: dict[str, Any] = {"data": data.source, "items": len(data.items), "dim": args.dim, "k": args.k,
                              "seen_median": float(np.median(lengths)), "seen_max": int(lengths.max())}
    print(json.dumps(result), flush=True)
    all_kernels: dict[str, Callable[[int], Kernel]] = {
        "threshold": threshold_kernel, "argpartition": argpartition_blocks, "torch_topk": torch_topk,
        "argpartition_full": lambda _: argpartition_blocks(len(data.items)),
        "faiss_flat": lambda _: faiss_flat(data.items, data.eligible)}
    chosen = {}
    for spec in filter(None, args.kernels.split(",")):  # name or name@block_rows
        name, _, rows = spec.partition("@")
        chosen[spec if rows else name] = all_kernels[name](int(rows or args.block_rows))
    print(f"kernels, {args.kernel_users:,} users x {len(data.items):,} items, one thread:", flush=True)
    result["kernels"] = time_kernels(data, chosen, args.k, args.user_batch, args.kernel_users, args.check_users,
                                     args.rounds)
    if not args.no_spark:
        print(f"Spark local[2], {args.users:,} users x {len(data.items):,} items:", flush=True)
        result.update(users=args.users, **compare_spark(data, args.users, args.k, args.user_batch, args.block_rows,
                                                        args.rounds))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
