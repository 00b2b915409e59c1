"""The one top-K selection of the platform: numpy only, below every package that ranks.

Baselines and the recommend stage both cut score matrices with :func:`best_k`; it lives here,
not in ``sparkrec.recommend``, so ``sparkrec.baselines`` needs nothing from the serving
package (``sparkrec.recommend.topk`` re-exports it).
"""

from __future__ import annotations

import numpy as np


def _best_columns(scores: np.ndarray, kk: int) -> np.ndarray:
    """Per row, columns that surely contain the kk best, ties at the cut included.

    argpartition alone picks an arbitrary subset of items tied at the K-th score, which would
    make lists differ between runs; widening the cut to every tied item keeps the tie-break
    exact.
    """
    n = scores.shape[1]
    if kk >= n:
        return np.broadcast_to(np.arange(n), scores.shape).copy()
    part = np.argpartition(-scores, kk - 1, axis=1)
    kth = np.take_along_axis(scores, part[:, kk - 1:kk], axis=1)
    width = int((scores >= kth).sum(axis=1).max())
    if width == kk:
        return part[:, :kk]
    if width >= n:
        return np.broadcast_to(np.arange(n), scores.shape).copy()
    return np.argpartition(-scores, width - 1, axis=1)[:, :width]


def best_k(scores: np.ndarray, k: int, ids: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the ``k`` best columns and their scores, best first.

    Ties go to the smaller id (``ids``, same shape as ``scores``; the column index when None),
    so a list is the same whichever block or executor computed it. This is the one top-K
    selection of the platform: the recommend job and every baseline go through it.
    """
    kk = min(k, scores.shape[1])
    cols = _best_columns(scores, kk)
    vals = np.take_along_axis(scores, cols, axis=1)
    tie = cols if ids is None else np.take_along_axis(ids, cols, axis=1)
    order = np.lexsort((tie, -vals), axis=1)[:, :kk]
    return np.take_along_axis(cols, order, axis=1), np.take_along_axis(vals, order, axis=1)
