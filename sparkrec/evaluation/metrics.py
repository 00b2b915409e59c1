"""Offline ranking and beyond-accuracy metrics, computed as Spark joins and aggregations.

Every metric is reduced to one aggregate row before anything reaches the driver, so the same
code evaluates a 600-user test slice and a 100M-row recommendation table.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

# The ranking core lives below the model packages (see sparkrec.ranking); re-exported here.
from ..ranking import PROTOCOL as PROTOCOL
from ..ranking import Gain, ranking_metrics, train_rows, truth_rows
from ..ranking import check_ks as _check_ks
from ..ranking import ranking_metrics_by as ranking_metrics_by


# --------------------------------------------------------------------------- beyond accuracy
def _top(recs: DataFrame, k: int) -> DataFrame:
    return recs.filter(F.col("rank") <= k).select("user_idx", "item_idx", F.col("rank").cast("int"))


def catalog_coverage(recs: DataFrame, n_items: int, k: int) -> float:
    """Share of the catalogue that appears in at least one user's top-K."""
    if n_items <= 0:
        raise ValueError(f"n_items must be positive, got {n_items}")
    distinct = _top(recs, k).select("item_idx").distinct().count()
    return distinct / n_items


def item_popularity(train: DataFrame) -> tuple[DataFrame, int]:
    """(item_idx, n_users) over the train part, and the number of train users.

    Popularity counts users, not rows, so one fan re-rating an item cannot inflate it.
    """
    rows = train_rows(train)
    pop = rows.groupBy("item_idx").agg(F.countDistinct("user_idx").alias("n_users"))
    n_users = rows.select(F.countDistinct("user_idx")).collect()[0][0]
    return pop, int(n_users or 0)


def _per_user_means(recs: DataFrame, pop: DataFrame, values: dict[str, Column],
                    ks: list[int]) -> dict[str, dict[int, float]]:
    """Mean over users of the per-user mean of each value over the top-K, all Ks in one pass."""
    top = _top(recs, max(ks)).join(pop, "item_idx", "left")
    top = top.select("user_idx", "rank", *[v.alias(f"v_{name}") for name, v in values.items()])
    per_user = top.groupBy("user_idx").agg(
        *[F.avg(F.when(F.col("rank") <= k, F.col(f"v_{name}"))).alias(f"{name}{k}")
          for name in values for k in ks])
    row = per_user.agg(*[F.avg(c).alias(c) for c in per_user.columns if c != "user_idx"]).collect()[0]
    return {name: {k: float(row[f"{name}{k}"]) if row[f"{name}{k}"] is not None else math.nan for k in ks}
            for name in values}


def popularity_metrics(recs: DataFrame, train: DataFrame, ks: Sequence[int]) -> dict[str, dict[int, float]]:
    """{"novelty": {k: ...}, "popularity_bias": {k: ...}} from one popularity table and one join."""
    ks = _check_ks(ks)
    pop, n_users = item_popularity(train)
    catalogue_mean = pop.agg(F.avg("n_users")).collect()[0][0]
    if n_users == 0 or not catalogue_mean:
        raise ValueError("novelty and popularity bias need a non-empty train part")
    n = F.coalesce(F.col("n_users"), F.lit(0)).cast("double")
    # An item no train user touched is treated as seen by one user: its surprise is finite
    # (log2 of the user count) instead of infinite, and it still ranks as the most novel.
    means = _per_user_means(recs, pop, {"nov": -F.log2(F.greatest(n, F.lit(1.0)) / n_users), "pop": n}, ks)
    return {"novelty": means["nov"],
            "popularity_bias": {k: v / float(catalogue_mean) for k, v in means["pop"].items()}}


def novelty(recs: DataFrame, train: DataFrame, k: int) -> float:
    """Mean self-information -log2 p(item) of the top-K, p = the item's share of train users.

    Averaged per user first, then over users, so users with short lists weigh the same.
    """
    return popularity_metrics(recs, train, [k])["novelty"][k]


def popularity_bias(recs: DataFrame, train: DataFrame, k: int) -> float:
    """Average recommendation popularity relative to the catalogue: ARP@K / mean popularity.

    ARP@K is the per-user mean train popularity (distinct train users) of the top-K items,
    averaged over users; the denominator is the mean popularity of the items that occur in
    train. 1.0 means the lists are as popular as a uniform draw from the catalogue; a
    popularity recommender scores far above 1; items unseen in train count as popularity 0.
    """
    return popularity_metrics(recs, train, [k])["popularity_bias"][k]


def _ild_block(batch: pa.RecordBatch, ks: list[int]) -> pa.RecordBatch:
    """Per user: mean pairwise cosine distance of the top-K vectors, from one sum per list.

    sum_{i<j} cos(v_i, v_j) = (|sum_i u_i|^2 - sum_i |u_i|^2) / 2 with u_i = v_i / |v_i|, which
    turns the O(K^2) pair loop into vectorised sums over a padded (users, K, dim) block.
    """
    lists = batch.column("vectors")
    lengths = pc.list_value_length(lists).to_numpy(zero_copy_only=False).astype(np.int64)
    vectors = pc.list_flatten(lists)
    dims = np.unique(pc.list_value_length(vectors).to_numpy(zero_copy_only=False))
    if len(dims) != 1:
        raise ValueError(f"item vectors must all have one length, got lengths {dims.tolist()}")
    dim = int(dims[0])
    flat = pc.list_flatten(vectors).to_numpy(zero_copy_only=False).astype(np.float64).reshape(-1, dim)
    ranks = pc.list_flatten(batch.column("ranks")).to_numpy(zero_copy_only=False)
    rows = np.repeat(np.arange(len(lengths)), lengths)
    slots = np.arange(len(rows)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    norms = np.linalg.norm(flat, axis=1, keepdims=True)
    shape = (len(lengths), int(lengths.max()))
    block = np.zeros((*shape, dim))
    block[rows, slots] = np.divide(flat, norms, out=np.zeros_like(flat), where=norms > 0)
    rank_block = np.full(shape, np.iinfo(np.int64).max)
    rank_block[rows, slots] = ranks
    out = {"user_idx": batch.column("user_idx")}
    for k in ks:
        inside = rank_block <= k
        unit = block * inside[:, :, None]
        n = inside.sum(axis=1).astype(np.float64)
        total = unit.sum(axis=1)
        pair_cos = ((total * total).sum(axis=1) - (unit * unit).sum(axis=(1, 2))) / 2.0
        pairs = n * (n - 1) / 2.0
        with np.errstate(invalid="ignore", divide="ignore"):
            distance = np.where(pairs > 0, 1.0 - pair_cos / pairs, np.nan)
        out[f"d{k}"] = pa.array(distance, from_pandas=True)
    return pa.RecordBatch.from_pydict(out)


def _ild_batches(ks: list[int], cells: int = 4_000_000):
    def run(batches):
        for batch in batches:
            if batch.num_rows == 0:
                continue
            dim = len(batch.column("vectors")[0].as_py()[0])
            step = max(1, cells // (max(ks) * max(dim, 1)))  # bounds the padded block's memory
            for start in range(0, batch.num_rows, step):
                yield _ild_block(batch.slice(start, step), ks)

    return run


def intra_list_diversity_at(recs: DataFrame, item_vectors: DataFrame, ks: Sequence[int]) -> dict[int, float]:
    ks = _check_ks(ks)
    vectors = item_vectors.select("item_idx", "vector").filter(F.size("vector") > 0)
    top = _top(recs, max(ks)).join(vectors, "item_idx")
    lists = top.groupBy("user_idx").agg(F.collect_list(F.struct("rank", "vector")).alias("pairs"))
    lists = lists.select("user_idx", F.col("pairs.rank").alias("ranks"),
                         F.col("pairs.vector").alias("vectors"))
    schema = T.StructType([T.StructField("user_idx", T.IntegerType()),
                           *[T.StructField(f"d{k}", T.DoubleType()) for k in ks]])
    per_user = lists.mapInArrow(_ild_batches(ks), schema)
    row = per_user.agg(*[F.avg(f"d{k}").alias(f"d{k}") for k in ks]).collect()[0]
    return {k: float(row[f"d{k}"]) if row[f"d{k}"] is not None else float("nan") for k in ks}


def intra_list_diversity(recs: DataFrame, item_vectors: DataFrame, k: int) -> float:
    """Mean over users of the mean pairwise cosine distance (1 - cos) within the top-K.

    ``item_vectors`` is (item_idx int, vector array<float>). Top-K items without a vector are
    skipped, a zero vector counts as orthogonal to everything, and users left with fewer than
    two vectors have no pairs and are not averaged.
    """
    return intra_list_diversity_at(recs, item_vectors, [k])[k]


def rating_errors(pred: DataFrame, truth: DataFrame) -> dict[str, float]:
    """RMSE and MAE of (user_idx, item_idx, prediction) against the rated test rows.

    Only pairs present in both are scored; ``n`` says how many, because a model that skips
    hard pairs would otherwise look better than it is.
    """
    rated = truth_rows(truth).filter(F.col("rating").isNotNull()).select("user_idx", "item_idx", "rating")
    err = pred.select("user_idx", "item_idx", "prediction").join(rated, ["user_idx", "item_idx"])
    diff = F.col("prediction").cast("double") - F.col("rating")
    row = err.agg(F.sqrt(F.avg(diff * diff)).alias("rmse"), F.avg(F.abs(diff)).alias("mae"),
                  F.count(F.lit(1)).alias("n")).collect()[0]
    nan = float("nan")
    return {"rmse": float(row["rmse"]) if row["rmse"] is not None else nan,
            "mae": float(row["mae"]) if row["mae"] is not None else nan, "n": float(row["n"])}


# --------------------------------------------------------------------------- all at once
def beyond_accuracy(recs: DataFrame, train: DataFrame | None, ks: Sequence[int], n_items: int,
                    item_vectors: DataFrame | None) -> dict[str, float]:
    """Coverage at each K; novelty and popularity bias when ``train`` is given; text-embedding
    intra-list diversity when ``item_vectors`` are. The evaluate stage and :func:`evaluate_all`
    both call this, so the report and the library compute them one way."""
    out = {f"coverage@{k}": catalog_coverage(recs, n_items, k) if n_items else math.nan for k in ks}
    if train is not None:
        for name, per_k in popularity_metrics(recs, train, ks).items():
            out.update({f"{name}@{k}": v for k, v in per_k.items()})
    if item_vectors is not None:
        out.update({f"ild@{k}": v for k, v in intra_list_diversity_at(recs, item_vectors, ks).items()})
    return out


def evaluate_all(recs: DataFrame, truth: DataFrame, ks: Sequence[int], *, train: DataFrame | None = None,
                 n_items: int | None = None, item_vectors: DataFrame | None = None,
                 predictions: DataFrame | None = None, graded: bool = True,
                 gain: Gain = "linear") -> dict[str, float]:
    """Every metric that the given inputs allow, as one flat ``{"ndcg@10": ...}`` dict.

    ``truth`` may be the whole split table: its train part then serves as ``train`` for
    novelty and popularity bias. ``n_items`` defaults to the items seen in train or test.
    """
    ks = _check_ks(ks)
    if train is None and "part" in truth.columns:
        train = truth
    recs = recs.persist()
    try:
        out = ranking_metrics(recs, truth, ks, graded, gain)
        if n_items is None:
            known = truth_rows(truth).select("item_idx")
            if train is not None:
                known = known.union(train_rows(train).select("item_idx"))
            n_items = known.distinct().count()
        out.update(beyond_accuracy(recs, train, ks, n_items, item_vectors))
        if predictions is not None:
            out.update(rating_errors(predictions, truth))
        return out
    finally:
        recs.unpersist()
