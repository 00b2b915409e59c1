"""The per-user formulas of the ranking protocol, once, in numpy.

The Spark evaluator (:func:`sparkrec.ranking.ranking_metrics_by`, per partition) and the
trainer's validation (:func:`sparkrec.model.validation.ranking_quality`, on workers without
Spark) both reduce a user's list to the same two ragged inputs and call :func:`list_metrics`,
so early stopping, the blend search and the final evaluation cannot drift apart. The protocol
itself is written out in :data:`sparkrec.ranking.PROTOCOL`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

METRICS = ("precision", "recall", "ndcg", "map", "hitrate")


def _segment_positions(indptr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(owner row, 0-based position within the row) of every flat element of a CSR layout
    whose ``indptr`` starts at 0."""
    lengths = np.diff(indptr)
    owner = np.repeat(np.arange(len(lengths)), lengths)
    return owner, np.arange(int(indptr[-1])) - indptr[owner]


def list_metrics(n_rel: np.ndarray, hit_indptr: np.ndarray, hit_rank: np.ndarray, hit_gain: np.ndarray,
                 ideal_indptr: np.ndarray, ideal_gain: np.ndarray, ks: Sequence[int]) -> dict[str, np.ndarray]:
    """Per-user MRR and Precision/Recall/NDCG/MAP/HitRate at each K.

    A user is described by ``n_rel`` (distinct relevant items, > 0), the listed relevant items
    as (rank, gain) pairs in increasing rank order (``hit_*``, CSR rows; ranks are 1-based and
    need not be contiguous) and the relevant items' gains sorted best first (``ideal_*``).
    Both indptr arrays start at 0.
    """
    n = len(n_rel)
    n_rel = n_rel.astype(np.float64)
    owner, position = _segment_positions(hit_indptr)
    rank = hit_rank.astype(np.float64)
    discounted = hit_gain.astype(np.float64) / np.log2(rank + 1.0)
    precision_at_hit = (position + 1) / rank
    ideal_owner, ideal_position = _segment_positions(ideal_indptr)
    ideal_discounted = ideal_gain.astype(np.float64) / np.log2(ideal_position + 2.0)
    has_hit = np.diff(hit_indptr) > 0
    mrr = np.zeros(n)
    mrr[has_hit] = 1.0 / rank[hit_indptr[:-1][has_hit]]  # a user's first hit is the best ranked
    out = {"mrr": mrr}
    for k in ks:
        within = rank <= k
        hits = np.bincount(owner, weights=within, minlength=n)
        dcg = np.bincount(owner, weights=discounted * within, minlength=n)
        idcg = np.bincount(ideal_owner, weights=ideal_discounted * (ideal_position < k), minlength=n)
        ap = np.bincount(owner, weights=precision_at_hit * within, minlength=n)
        out[f"precision@{k}"] = hits / k
        out[f"recall@{k}"] = hits / n_rel
        out[f"ndcg@{k}"] = np.divide(dcg, idcg, out=np.zeros(n), where=idcg > 0)
        out[f"map@{k}"] = ap / np.minimum(n_rel, k)
        out[f"hitrate@{k}"] = (hits > 0).astype(np.float64)
    return out
