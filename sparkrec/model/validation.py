"""The hybrid's validation set: carved out of the training rows, shaped like the test it stands for.

Early stopping and the hybrid's hyper-parameter search both judge on it, so it must ask the
question the evaluation will ask: on a temporal split, "what comes next?" (each sampled user's
last positive); on a random split, or a source without time, "what else is in this set?" (a
random share of each sampled user's positives). A next-item validation set would tune a
set-completion model for the wrong task, and the other way round.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from ..holdout import Holdout, holdout_for, split_validation
from ..listmetrics import list_metrics
from ..ragged import csr
from ..ranking import seen_items as seen_lists_of
from ..selection import best_k

__all__ = ["EarlyStopping", "Holdout", "ValSet", "collect_eval_set", "holdout_for", "ranking_quality",
           "split_validation"]

@dataclass
class ValSet:
    """Validation users: tower inputs, the head's input (every fit positive with its weight),
    the held-out targets and the items to exclude (CSR, model rows)."""

    users: np.ndarray
    hist: np.ndarray
    gaps: np.ndarray
    target_indptr: np.ndarray
    targets: np.ndarray
    seen_indptr: np.ndarray
    seen_items: np.ndarray
    items_indptr: np.ndarray
    items: np.ndarray
    item_weights: np.ndarray

    def save(self, path: str | Path) -> None:
        from safetensors.numpy import save_file

        save_file({k: np.ascontiguousarray(v) for k, v in self.__dict__.items()}, str(path))

    @classmethod
    def load(cls, path: str | Path) -> ValSet:
        from safetensors.numpy import load_file

        return cls(**load_file(str(path)))

    def __len__(self) -> int:
        return len(self.users)


def collect_eval_set(states: DataFrame, targets: DataFrame, fit: DataFrame) -> ValSet:
    """Validation users with their state, targets and seen items; bounded by ``max_users``."""
    seen_lists = seen_lists_of(fit, offset=1)
    target_lists = targets.groupBy("user_idx").agg(F.collect_set((F.col("item_idx") + 1).cast("int")).alias("t"))
    rows = (target_lists.join(states, "user_idx").join(seen_lists, "user_idx", "left")
            .orderBy("user_idx").toPandas())
    held = [np.asarray(t, dtype=np.int64) for t in rows["t"]]
    seen = [np.setdiff1d(np.asarray(s if s is not None else [], dtype=np.int64), t)
            for s, t in zip(rows["seen"], held, strict=True)]

    def stacked(col: str, dtype: type) -> np.ndarray:
        return np.stack(rows[col].to_numpy()).astype(dtype) if len(rows) else np.zeros((0, 1), dtype)

    target_indptr, flat_targets = csr(held)
    seen_indptr, seen_items = csr(seen)
    items_indptr, items = csr([np.asarray(x) for x in rows["items"]])
    _, weights = csr([np.asarray(x) for x in rows["weights"]], np.float32)
    return ValSet(users=(rows["user_idx"].to_numpy() + 1).astype(np.int64), hist=stacked("hist", np.int64),
                  gaps=stacked("gaps", np.float32), target_indptr=target_indptr, targets=flat_targets,
                  seen_indptr=seen_indptr, seen_items=seen_items, items_indptr=items_indptr, items=items,
                  item_weights=weights)


def _in_columns(columns: np.ndarray | None, rows: np.ndarray, items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rows, column positions) of the ``items`` that are among ``columns`` (None: all are)."""
    if columns is None:
        return rows, items
    pos = np.minimum(np.searchsorted(columns, items), len(columns) - 1)
    ok = columns[pos] == items
    return rows[ok], pos[ok]


def mask_padding_and_seen(scores: np.ndarray, val: ValSet, start: int, columns: np.ndarray | None = None) -> np.ndarray:
    """``scores`` (in place) with the padding column and each user's seen items at -inf: nothing
    a user already has, nor the padding row, may be listed or become a candidate."""
    b = len(scores)
    if columns is None:
        scores[:, 0] = -np.inf
    lo, hi = val.seen_indptr[start], val.seen_indptr[start + b]
    rows = np.repeat(np.arange(b), np.diff(val.seen_indptr[start:start + b + 1]))
    scores[_in_columns(columns, rows, val.seen_items[lo:hi])] = -np.inf
    return scores


def ranking_quality(scores: np.ndarray, val: ValSet, start: int, k: int,
                    columns: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per-user Recall@k and binary NDCG@k of a block of validation users' score rows.

    ``scores`` is (rows, n_items + 1) for users ``start .. start + rows``, or (rows, len(columns))
    for the model rows ``columns`` (ascending, no padding row) when the caller knows every other
    item ranks below the top k; column 0 (padding) and each user's seen items are excluded here,
    so callers pass raw scores. The list is cut by the platform's one top-K
    (:func:`sparkrec.selection.best_k`) and the metrics are the evaluator's own formulas
    (:func:`sparkrec.listmetrics.list_metrics`, binary gains), in numpy because training workers
    run without Spark.
    """
    b = len(scores)
    scores = mask_padding_and_seen(scores.copy(), val, start, columns)
    kk = min(k, scores.shape[1] - 1 if columns is None else scores.shape[1])
    top, top_scores = best_k(scores, kk)
    t_lo, t_hi = val.target_indptr[start], val.target_indptr[start + b]
    t_rows = np.repeat(np.arange(b), np.diff(val.target_indptr[start:start + b + 1]))
    truth = np.zeros(scores.shape, dtype=bool)
    truth[_in_columns(columns, t_rows, val.targets[t_lo:t_hi])] = True
    hit = np.take_along_axis(truth, top, 1) & np.isfinite(top_scores)  # a masked item is not listed
    _, positions = np.nonzero(hit)  # row-major: each user's hits in rank order
    hit_indptr = np.concatenate([[0], np.cumsum(hit.sum(1))])
    target_indptr = val.target_indptr[start:start + b + 1] - t_lo
    metrics = list_metrics(np.diff(target_indptr), hit_indptr, positions + 1, np.ones(len(positions)),
                           target_indptr, np.ones(t_hi - t_lo), [kk])
    return metrics[f"recall@{kk}"], metrics[f"ndcg@{kk}"]


@dataclass
class EarlyStopping:
    """Stops after ``patience`` epochs in a row without a better validation value, not one more
    (the training loop used to run patience + 1)."""

    patience: int
    best: float = -1.0
    stale: int = 0

    def update(self, value: float) -> Literal["better", "continue", "stop"]:
        if value > self.best:
            self.best, self.stale = value, 0
            return "better"
        self.stale += 1
        return "stop" if self.stale >= self.patience else "continue"
