"""Exact top-K over an item matrix in blocks: the numeric core, free of Spark and torch.

Blocks bound memory to ``users x block_rows`` scores whatever the catalogue size, and a
running top-K merged per block keeps the result exact (no approximate index): with a few
hundred thousand items a blocked matrix product is fast enough that ANN buys nothing here.
The cut is :class:`sparkrec.selection.RunningTopK`: after the first block only scores above a
user's current k-th best are partitioned, so the matrix product is most of the time. Of the
exact alternatives measured in ``benchmarks/scoring.py`` (argpartition of every score, torch.topk
per block, faiss IndexFlatIP asked for k + the most seen items) it was the fastest.
"""

from __future__ import annotations

import numpy as np

from ..ragged import csr as csr  # re-exported: the seen-item masks' form
from ..selection import RunningTopK, blocks
from ..selection import best_k as best_k  # re-exported: the one top-K cut

NEG = np.float32(-np.inf)
PRODUCT_CELLS = 1 << 22
"""Scores per matrix product (16 MiB of float32). Smaller products stay in cache: with 1,024
users, 4,096-item products ran ~2x faster than 65,536-item ones (``benchmarks/scoring.py``)."""


def top_k(users: np.ndarray, items: np.ndarray, k: int, eligible: np.ndarray | None = None,
          seen: tuple[np.ndarray, np.ndarray] | None = None, block_rows: int = 65_536,
          extra: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Best ``k`` item rows per user by dot product, best first: (indices, scores), both (B, k).

    ``eligible`` (n_items,) bool removes items for everyone (padding, filters); ``seen`` is a
    CSR of item rows removed per user. Slots with no eligible item left hold index -1 and
    score -inf, so callers drop them instead of recommending an excluded item. Ties go to the
    smaller item row, as in a full stable sort. ``extra`` = (item rows ascending, (B, m)
    scores) adds a second score to those rows, e.g. the hybrid's linear head.
    """
    b, n = users.shape[0], items.shape[0]
    best = RunningTopK(b, min(k, n))
    if b == 0 or n == 0:
        return best.result()
    if seen is not None:  # sorted by item once, so each block finds its entries by bisection
        order = np.argsort(seen[1], kind="stable")
        seen = (np.repeat(np.arange(b), np.diff(seen[0]))[order], seen[1][order])
    rows = min(block_rows, max(1024, PRODUCT_CELLS // b))  # block_rows stays a memory bound
    skip = None
    if extra is not None and len(extra[0]):
        skip = _head_first(best, users, items, eligible, seen, extra, rows)
    for start, stop in blocks(n, rows):
        scores = users @ items[start:stop].T
        if seen is not None:
            lo, hi = np.searchsorted(seen[1], [start, stop])
            scores[seen[0][lo:hi], seen[1][lo:hi] - start] = NEG
        allowed = None if eligible is None else eligible[start:stop]
        if skip is not None:
            allowed = ~skip[start:stop] if allowed is None else allowed & ~skip[start:stop]
        best.add(scores, start, allowed)
    return best.result()


def _head_first(best: RunningTopK, users: np.ndarray, items: np.ndarray, eligible: np.ndarray | None,
                seen: tuple[np.ndarray, np.ndarray] | None, extra: tuple[np.ndarray, np.ndarray],
                rows: int) -> np.ndarray:
    """Scores the ``extra`` rows as one dense block first and returns them as a (n,) mask for
    the blocked pass to skip. Why: adding (B, m) head scores into every block's columns was a
    fancy-index scatter that cost twice the matrix product; a dense product plus one add does
    not, and the head's strong scores set every user's threshold early."""
    head, add = extra
    scores = users @ items[head].T
    scores += add
    if seen is not None:  # (user, item) pairs, sorted by item
        pos = np.minimum(np.searchsorted(head, seen[1]), len(head) - 1)
        inside = head[pos] == seen[1]
        scores[seen[0][inside], pos[inside]] = NEG
    for start, stop in blocks(len(head), rows):  # the same small first block, then thresholds
        best.add(scores[:, start:stop], head[start:stop], None if eligible is None else eligible[head[start:stop]])
    skip = np.zeros(items.shape[0], dtype=bool)
    skip[head] = True
    return skip


def evidence(items: np.ndarray, hist: np.ndarray, recs: np.ndarray, n: int) -> np.ndarray:
    """For each recommended item, the ``n`` history items most similar to it in model space.

    Cosine, because both towers emit unit vectors. The recommended item itself is never its
    own evidence (a text-only user's pseudo-history may contain it). Returns (B, k, n) item
    rows, -1 where the history has fewer items.
    """
    h = items[hist]  # (B, H, d); padding row 0 is the zero vector
    r = items[np.maximum(recs, 0)]  # (B, k, d)
    sims = np.einsum("bkd,bhd->bkh", r, h)
    invalid = (hist[:, None, :] == 0) | (hist[:, None, :] == recs[:, :, None])
    sims[invalid] = NEG
    n = min(n, hist.shape[1])
    order = np.argsort(-sims, axis=2, kind="stable")[:, :, :n]
    chosen = np.take_along_axis(np.broadcast_to(hist[:, None, :], sims.shape), order, axis=2)
    ok = np.isfinite(np.take_along_axis(sims, order, axis=2))
    return np.where(ok, chosen, -1)
