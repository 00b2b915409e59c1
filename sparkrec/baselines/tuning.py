"""Hyper-parameter selection on a validation set carved from train, never from test.

Each baseline is tuned the same way the platform's own models are compared: by NDCG@10 on
one held-out positive per user, with the remaining train rows as the model's history. The
winner is then refitted on the full train, so test rows are touched only once, at the end.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from ..holdout import Holdout, split_validation
from ..logs import get_logger, log_fields
from ..ranking import ranking_metrics, train_rows
from .base import Recommender

log = get_logger("baselines.tuning")

def holdout_validation(train: DataFrame, how: Holdout = "last", seed: int = 42, fraction: float = 0.2
                       ) -> tuple[DataFrame, DataFrame]:
    """(fit part, validation truth) from the train rows, held out as the hybrid's are
    (:func:`sparkrec.holdout.split_validation`, every eligible user): the latest positive
    ("last") or a random ``fraction`` of them ("random"). All of the user's rows for a held
    item leave the fit part, so a re-rating cannot leak it back. The validation truth has the
    split-table columns with ``part = 'test'``.
    """
    if how not in ("last", "random"):
        raise ValueError(f"holdout must be 'last' or 'random', got {how!r}")
    rows = train_rows(train)
    pos = rows.filter(F.coalesce(F.col("is_positive"), F.lit(False))) if "is_positive" in rows.columns \
        else rows.withColumn("is_positive", F.lit(True))
    if "seq" not in pos.columns:
        pos = pos.withColumn("seq", F.lit(0).cast("long"))
    _, held = split_validation(pos, None, seed, how, fraction)
    held = held.dropDuplicates(["user_idx", "item_idx"])
    fit_part = rows.join(held.select("user_idx", "item_idx"), ["user_idx", "item_idx"], "left_anti")
    truth = held.withColumn("part", F.lit("test"))
    return fit_part, truth


def expand_grid(grid: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """{"rank": [32, 64], "alpha": [1, 10]} -> the four combinations, in a stable order."""
    names = list(grid)
    for name in names:
        if not grid[name]:
            raise ValueError(f"grid value list for {name!r} is empty")
    return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*(grid[n] for n in names))]


def select_by_validation(candidates: Sequence[dict[str, Any]], fit: Callable[[dict[str, Any]], Recommender],
                         val_truth: DataFrame, k: int = 10, model: str = "model",
                         ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Fit every candidate with ``fit`` (which trains on the fit part) and score it by NDCG@k.

    Returns the best parameters and one record per candidate (params, ndcg, seconds), which
    the caller keeps so a report can show how flat or sharp the optimum was.
    """
    if not candidates:
        raise ValueError("no hyper-parameter candidates to select from")
    users = val_truth.select("user_idx").distinct()
    results: list[dict[str, Any]] = []
    for params in candidates:
        start = time.perf_counter()
        fitted = fit(params)
        recs = fitted.recommend(users, k, exclude_seen=True)
        score = ranking_metrics(recs, val_truth, [k], graded=False)[f"ndcg@{k}"]
        release = getattr(fitted, "release", None)
        if callable(release):
            release()
        record = {"params": dict(params), f"ndcg@{k}": score, "seconds": time.perf_counter() - start}
        results.append(record)
        log_fields(log, "validation candidate", model=model, **params, ndcg=score)
    best = max(results, key=lambda r: r[f"ndcg@{k}"])
    return dict(best["params"]), results
