"""Offline ranking and beyond-accuracy metrics, computed as Spark joins and aggregations.

Every metric is reduced to one aggregate row before anything reaches the driver, so the same
code evaluates a 600-user test slice and a 100M-row recommendation table.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

Gain = Literal["linear", "exponential"]

PROTOCOL = """\
Ranking protocol (sparkrec.evaluation.metrics.ranking_metrics)

* Truth is the split table's test part (rows with part == 'test' when a part column is
  present). An item is relevant to a user when its test row has is_positive = true.
* Users evaluated: every user with at least one relevant test item. A user without
  recommendations scores 0 on every metric; recommendations for users without relevant
  items are ignored. Metrics are the unweighted mean over evaluated users.
* Recommendations: (user_idx, item_idx, rank) with rank 1 the best; an item listed twice for
  a user counts once, at its best rank. @K metrics read ranks <= K; MRR reads the whole list.
* Precision@K = hits@K / K (a short list is not rewarded). Recall@K = hits@K / |relevant|.
  HitRate@K = 1 when hits@K > 0. MRR = 1 / rank of the first relevant item (0 if none).
* MAP@K: AP@K = sum over relevant ranks r <= K of precision@r, divided by min(|relevant|, K),
  so a perfect list scores 1 even when the user has more than K relevant items.
* NDCG@K: DCG = sum gain / log2(rank + 1); IDCG is the DCG of the user's relevant items sorted
  by gain, truncated at K. Graded gain = the test rating when it is > 0, else the row's weight
  (a rating of 0 or null means "no grade", e.g. Book-Crossing's implicit reads), else 1;
  'exponential' uses 2^gain - 1. With graded=False every relevant item has gain 1.
"""


# --------------------------------------------------------------------------- inputs
def truth_rows(truth: DataFrame) -> DataFrame:
    """Accept either the whole split table or its test part, so callers cannot mix them up."""
    return truth.filter(F.col("part") == "test") if "part" in truth.columns else truth


def train_rows(train: DataFrame) -> DataFrame:
    return train.filter(F.col("part") == "train") if "part" in train.columns else train


def _grade(graded: bool, gain: Gain) -> Column:
    if not graded:
        return F.lit(1.0)
    rating = F.col("rating").cast("double")
    raw = F.when(rating > 0, rating).otherwise(F.coalesce(F.col("weight").cast("double"), F.lit(1.0)))
    return F.pow(F.lit(2.0), raw) - 1.0 if gain == "exponential" else raw


def _check_ks(ks: Sequence[int]) -> list[int]:
    ks = sorted(set(int(k) for k in ks))
    if not ks or ks[0] < 1:
        raise ValueError(f"ks must be positive integers, got {ks}")
    return ks


# --------------------------------------------------------------------------- accuracy
def _first_per_item(structs: Column) -> Column:
    """Keeps the first element of each run of equal ``item``s in an array sorted by item."""
    return F.filter(structs, lambda x, i: (i == 0) | (F.element_at(structs, i)["item"] != x["item"]))


def _within(k: int):
    # A factory, not ``lambda x, k=k``: PySpark reads a 2-argument lambda as (element, index).
    return lambda x: x["rank"] <= k


def _sum(values: Column) -> Column:
    return F.aggregate(values, F.lit(0.0), lambda acc, v: acc + v)


def ranking_metrics(recs: DataFrame, truth: DataFrame, ks: Sequence[int], graded: bool = True,
                    gain: Gain = "linear") -> dict[str, float]:
    """Precision/Recall/NDCG/MAP/HitRate at each K and MRR; see :data:`PROTOCOL`.

    Recommendations and relevant items meet in ONE shuffle by user: each user's list and
    truth become two arrays, and every metric is array arithmetic on them. A join on
    (user, item) followed by windows would shuffle the recommendations three times.
    Returns ``{"precision@10": ..., "mrr": ..., "n_users": ...}``.
    """
    by = "__all"
    return ranking_metrics_by(recs, truth.withColumn(by, F.lit("all")), ks, by, graded, gain).get(
        "all", _empty_ranking(_check_ks(ks)))


def _empty_ranking(ks: list[int]) -> dict[str, float]:
    names = ["n_users", "mrr"] + [f"{m}@{k}" for k in ks for m in ("precision", "recall", "ndcg", "map", "hitrate")]
    return dict.fromkeys(names, 0.0)


def ranking_metrics_by(recs: DataFrame, truth: DataFrame, ks: Sequence[int], by: str, graded: bool = True,
                       gain: Gain = "linear") -> dict[str, dict[str, float]]:
    """:func:`ranking_metrics` per group of ``truth[by]`` (e.g. evaluation slices), in one job.

    A user's list is judged once per group the user has relevant items in, against only that
    group's items: slicing by item (cold items) and by user (activity) both fall out of this.
    Groups without relevant items are absent from the result.
    """
    ks = _check_ks(ks)
    if gain not in ("linear", "exponential"):
        raise ValueError(f"gain must be 'linear' or 'exponential', got {gain!r}")
    rel_rows = truth_rows(truth).filter(F.col("is_positive")).select(
        F.col(by).cast("string").alias("grp"), "user_idx", F.col("item_idx").cast("int").alias("item_idx"),
        F.lit(None).cast("int").alias("rank"), _grade(graded, gain).cast("double").alias("gain"))
    groups = rel_rows.select("grp", "user_idx").distinct()
    rec_rows = recs.select("user_idx", F.col("item_idx").cast("int").alias("item_idx"),
                           F.col("rank").cast("int").alias("rank"), F.lit(None).cast("double").alias("gain"))
    rows = rec_rows.join(groups, "user_idx").unionByName(rel_rows)
    # collect_list skips nulls, so each list takes only its own kind of row.
    per_user = rows.groupBy("grp", "user_idx").agg(
        F.collect_list(F.when(F.col("gain").isNotNull(),
                              F.struct(F.col("item_idx").alias("item"), (-F.col("gain")).alias("neg"))))
        .alias("rel"),
        F.collect_list(F.when(F.col("rank").isNotNull(),
                              F.struct(F.col("item_idx").alias("item"), F.col("rank").alias("rank"))))
        .alias("recs"))
    # Each step is its own projection over named columns: an array referenced inside a
    # lambda is then read per element, not recomputed per element.
    steps = per_user.filter(F.size("rel") > 0).select(
        "grp", F.sort_array("rel").alias("rel"), F.sort_array("recs").alias("recs"))
    # One entry per item: the relevant item's best gain, the listed item's best rank.
    steps = steps.select("grp", _first_per_item(F.col("rel")).alias("rel"),
                         _first_per_item(F.col("recs")).alias("recs"))
    steps = steps.select(
        "grp", F.size("rel").alias("n_rel"),
        F.map_from_entries(F.transform("rel", lambda x: F.struct(x["item"], -x["neg"]))).alias("gain_of"),
        F.sort_array(F.transform("rel", lambda x: -x["neg"]), asc=False).alias("ideal"),
        F.sort_array(F.transform("recs", lambda x: F.struct(x["rank"].alias("rank"), x["item"].alias("item"))))
        .alias("ranked"))
    steps = steps.select(
        "grp", "n_rel", "gain_of", F.transform("ideal", lambda g, i: g / F.log2(i + 2.0)).alias("ideal"),
        F.filter("ranked", lambda x: F.element_at(F.col("gain_of"), x["item"]).isNotNull()).alias("hits"))
    stats = steps.select(
        "grp", "n_rel", "ideal", F.transform("hits", lambda x, i: F.struct(
            x["rank"].alias("rank"), F.element_at(F.col("gain_of"), x["item"]).alias("gain"),
            (i + 1).alias("no"))).alias("hits"))

    h, zero = F.col("hits"), F.lit(0.0)
    per_metric: list[Column] = [
        F.count(F.lit(1)).alias("n_users"),
        F.avg(F.when(F.size(h) > 0, 1.0 / F.element_at(h, 1)["rank"]).otherwise(zero)).alias("mrr")]
    for k in ks:
        in_k = F.filter(h, _within(k))
        n_hits = F.size(in_k).cast("double")
        dcg = _sum(F.transform(in_k, lambda x: x["gain"] / F.log2(x["rank"] + 1.0)))
        idcg = _sum(F.slice("ideal", 1, k))
        ap = _sum(F.transform(in_k, lambda x: x["no"] / x["rank"]))
        per_metric += [
            F.avg(n_hits / k).alias(f"precision@{k}"),
            F.avg(n_hits / F.col("n_rel")).alias(f"recall@{k}"),
            F.avg(F.when(idcg > 0, dcg / idcg).otherwise(zero)).alias(f"ndcg@{k}"),
            F.avg(ap / F.least(F.col("n_rel"), F.lit(k))).alias(f"map@{k}"),
            F.avg(F.when(n_hits > 0, 1.0).otherwise(zero)).alias(f"hitrate@{k}"),
        ]
    out: dict[str, dict[str, float]] = {}
    for row in stats.groupBy("grp").agg(*per_metric).collect():  # one row per group
        values = row.asDict()
        group = values.pop("grp")
        out[group] = {name: float(value) if value is not None else 0.0 for name, value in values.items()}
    return out


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
        for k in ks:
            out[f"coverage@{k}"] = catalog_coverage(recs, n_items, k) if n_items else math.nan
        if train is not None:
            for name, per_k in popularity_metrics(recs, train, ks).items():
                out.update({f"{name}@{k}": v for k, v in per_k.items()})
        if item_vectors is not None:
            for k, v in intra_list_diversity_at(recs, item_vectors, ks).items():
                out[f"ild@{k}"] = v
        if predictions is not None:
            out.update(rating_errors(predictions, truth))
        return out
    finally:
        recs.unpersist()
