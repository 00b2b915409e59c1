"""Top-K search for one request: exact (the batch stage's blocked numpy top-K) or faiss ANN.

Both answer the same question as :func:`sparkrec.recommend.topk.top_k`: the best ``k`` item
rows by ``u . v`` plus the hybrid head's scores, without ineligible or seen rows. The faiss
index only proposes candidates (inner product over the same item matrix); every candidate is
then scored exactly, the head's items are always added as candidates (their score is not a dot
product an index could know), and when exclusions leave fewer than ``k`` candidates the exact
search answers instead, so a filter can shorten a list only when the catalogue runs out.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import Protocol

import numpy as np

from ..config import FaissIndexConfig
from ..logs import get_logger, log_fields
from ..recommend.topk import NEG, best_k, top_k

log = get_logger("serve.index")

Seen = tuple[np.ndarray, np.ndarray]  # CSR (indptr, model rows) of items removed per user
Extra = tuple[np.ndarray, np.ndarray]  # (model rows ascending, (B, m) scores) added to those rows


class Index(Protocol):
    kind: str

    def search(self, users: np.ndarray, k: int, eligible: np.ndarray, seen: Seen | None = None,
               extra: Extra | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(B, k) model rows (-1: none left) and scores, best first."""
        ...


Pool = tuple[np.ndarray, np.ndarray]  # (B, m) rows (-1: none), best first, and their scores


class TextBlendIndex(Index, Protocol):
    """Text-only users' blend ``[u, w q] . [v, t]``: ``text_pool`` is the text index's pool the
    request already took for its pseudo-history (rows and their text term ``w q.t``), which a
    candidate search reuses."""

    def search(self, users: np.ndarray, k: int, eligible: np.ndarray, seen: Seen | None = None,
               extra: Extra | None = None, text_pool: Pool | None = None) -> tuple[np.ndarray, np.ndarray]:
        ...


class PoolIndex(Index, Protocol):
    """An index whose candidate pool can be taken once and ranked for more than one purpose
    (a text's pseudo-history and its blend share one search of the text index)."""

    width: int  # a pool as wide as the search explores anyway

    def scored_pool(self, users: np.ndarray, width: int) -> Pool:
        """(B, width) rows nearest to each user by inner product, unfiltered, with their exact
        inner products (the indexes store their vectors unquantised)."""
        ...


class ExactIndex:
    """Every item scored: the reference answer, and fast enough for a few hundred thousand items."""

    kind = "exact"
    width = 0  # no wider pool than asked: only a candidate search (faiss) gains from one

    def __init__(self, matrix: np.ndarray, block_rows: int = 65_536) -> None:
        self.matrix = np.ascontiguousarray(matrix, dtype=np.float32)
        self.block_rows = block_rows

    def search(self, users: np.ndarray, k: int, eligible: np.ndarray, seen: Seen | None = None,
               extra: Extra | None = None) -> tuple[np.ndarray, np.ndarray]:
        return top_k(users.astype(np.float32), self.matrix, k, eligible, seen, self.block_rows, extra)

    def scored_pool(self, users: np.ndarray, width: int) -> Pool:
        return top_k(users.astype(np.float32), self.matrix, width, None, None, self.block_rows)


def build_faiss(matrix: np.ndarray, cfg: FaissIndexConfig, threads: int = 1):  # type: ignore[no-untyped-def]
    """An inner-product faiss index over every row of ``matrix`` (row = id).

    Built with every core (an HNSW graph over 270k rows takes minutes on one), then faiss's
    OpenMP pool goes back to ``threads`` for the requests' searches.
    """
    import faiss

    faiss.omp_set_num_threads(max(1, threads, os.cpu_count() or 1))
    try:
        return _build(matrix, cfg)
    finally:
        faiss.omp_set_num_threads(max(1, threads))


def _build(matrix: np.ndarray, cfg: FaissIndexConfig):  # type: ignore[no-untyped-def]
    import faiss

    x = np.ascontiguousarray(matrix, dtype=np.float32)
    n, d = x.shape
    if cfg.kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, cfg.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = cfg.ef_construction
        index.hnsw.efSearch = cfg.ef_search
    else:
        lists = cfg.ivf_lists or max(1, int(math.sqrt(n)))
        lists = min(lists, max(1, n // 39))  # faiss wants ~39 training points per list
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, lists, faiss.METRIC_INNER_PRODUCT)
        # k-means on a seeded sample of 64 points per list: on all 270k rows it costs minutes
        sample = np.random.default_rng(0).choice(n, min(n, 64 * lists), replace=False)
        index.train(x[np.sort(sample)])
        index.nprobe = min(cfg.nprobe, lists)
    index.add(x)
    return index


class FaissIndex:
    """ANN candidates (``overfetch`` x k + the user's seen items), re-scored exactly."""

    kind = "faiss"

    def __init__(self, matrix: np.ndarray, cfg: FaissIndexConfig, threads: int = 1, block_rows: int = 65_536) -> None:
        import time

        started = time.perf_counter()
        self.exact = ExactIndex(matrix, block_rows)
        self.matrix = self.exact.matrix
        self.overfetch = cfg.overfetch
        self.width = cfg.ef_search  # HNSW explores this many candidates whatever k is
        self.index = build_faiss(self.matrix, cfg, threads)
        self._fixed: FixedRows | None = None
        self.build_seconds = round(time.perf_counter() - started, 2)
        log_fields(log, "faiss index built", kind=cfg.kind, items=self.matrix.shape[0], dim=self.matrix.shape[1],
                   seconds=self.build_seconds)

    def search(self, users: np.ndarray, k: int, eligible: np.ndarray, seen: Seen | None = None,
               extra: Extra | None = None) -> tuple[np.ndarray, np.ndarray]:
        users = np.ascontiguousarray(users, dtype=np.float32)
        k_eff = min(k, self.matrix.shape[0])
        want = candidates_wanted(users.shape[0], k_eff, self.matrix.shape[0], self.overfetch, seen)
        cand = self.scored_pool(users, want)[0]
        fixed = None if extra is None else self.fixed_rows(extra[0])
        return rescore(users, cand, k_eff, eligible, seen, extra, dot(self.matrix, users), self.exact, fixed)

    def fixed_rows(self, rows: np.ndarray) -> FixedRows:
        """The :class:`FixedRows` of ``rows`` (the head's: the same array every request), made once."""
        fixed = self._fixed
        if fixed is None or fixed.rows is not rows:
            fixed = self._fixed = FixedRows(self.matrix, rows)  # a race only builds it twice
        return fixed

    def scored_pool(self, users: np.ndarray, width: int) -> Pool:
        scores, rows = self.index.search(np.ascontiguousarray(users, dtype=np.float32),
                                         max(1, min(width, self.matrix.shape[0])))
        return rows, scores


def best_in_pool(index: PoolIndex, users: np.ndarray, pool: Pool, k: int, eligible: np.ndarray) -> np.ndarray:
    """(B, k) best eligible rows of each user's pool by the pool's own scores, ties to the
    smaller row as everywhere; ``index``'s exact search answers a user with fewer than k."""
    out = np.full((users.shape[0], k), -1, dtype=np.int64)
    for b in range(users.shape[0]):
        rows, scores = pool[0][b], pool[1][b]
        ok = rows >= 0
        ok[ok] = eligible[rows[ok]]
        if ok.sum() < k:
            out[b] = index.search(users[b:b + 1], k, eligible)[0][0]
            continue
        cols, _ = best_k(scores[ok][None, :], k, rows[ok][None, :])
        out[b] = rows[ok][cols[0]]
    return out


def candidates_wanted(b: int, k: int, n: int, overfetch: int, seen: Seen | None) -> int:
    """Candidates to ask an index for: ``overfetch`` x k + the most items a user has seen."""
    most_seen = int(np.diff(seen[0]).max()) if seen is not None and b else 0
    return max(1, int(min(n, overfetch * k + most_seen)))


def dot(matrix: np.ndarray, users: np.ndarray) -> Callable[[np.ndarray, int], np.ndarray]:
    """``rescore``'s exact score for a plain index: user ``u``'s dot product with ``rows``."""
    return lambda rows, u: matrix[rows] @ users[u]


class FixedRows:
    """Rows every search scores whatever the index proposes (the head's: its score is not a dot
    product an index could know), their item vectors gathered once.

    Why: on Book-Crossing the head scores ~6,000 rows against ~100 candidates; merging them
    (a sort), gathering their vectors and finding the user's seen items among them on every
    request was the largest share of a known user's request. With the vectors in one block,
    their scores are one matrix-vector product and only the few candidates outside it are
    merged in.
    """

    def __init__(self, matrix: np.ndarray, rows: np.ndarray) -> None:
        self.rows = rows  # ascending (``Extra``'s contract)
        self.vectors = np.ascontiguousarray(matrix[rows], dtype=np.float32)
        self.member = np.zeros(matrix.shape[0], dtype=bool)
        self.member[rows] = True


def exclude_sorted(scores: np.ndarray, rows: np.ndarray, drop: np.ndarray) -> None:
    """``scores[i] = NEG`` where ``rows[i]`` (ascending) is in ``drop``: a binary search per
    dropped row rather than a pass over ``rows`` per dropped row (``np.isin`` on a few items)."""
    if not len(rows) or not len(drop):
        return
    at = np.minimum(np.searchsorted(rows, drop), len(rows) - 1)
    scores[at[rows[at] == drop]] = NEG


def rescore(users: np.ndarray, cand: np.ndarray, k: int, eligible: np.ndarray, seen: Seen | None,
            extra: Extra | None, score: Callable[[np.ndarray, int], np.ndarray],
            exact: Index, fixed: FixedRows | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Each user's candidate rows (-1: none) scored exactly by ``score(rows, user)``, the head's
    rows added, exclusions applied; ``exact`` answers a user whose exclusions ate the candidates.
    ``fixed``: the head's rows with their vectors, when ``score`` is the plain dot product."""
    b = users.shape[0]
    out_i = np.full((b, k), -1, dtype=np.int64)
    out_s = np.full((b, k), NEG, dtype=np.float32)
    fixed_scores = None if fixed is None or extra is None else users @ fixed.vectors.T + extra[1]
    for u in range(b):
        rows = cand[u][cand[u] >= 0]
        mine = None if seen is None else seen[1][seen[0][u]:seen[0][u + 1]]
        if fixed_scores is not None:  # the fixed block, then the candidates outside it: each part ascending
            assert fixed is not None
            others = np.unique(rows[~fixed.member[rows]])
            rows = np.concatenate([fixed.rows, others])
            scores = np.concatenate([fixed_scores[u], score(others, u)])
            if mine is not None:
                exclude_sorted(scores, fixed.rows, mine)
                exclude_sorted(scores[len(fixed.rows):], others, mine)
        else:
            rows = np.union1d(rows, extra[0]) if extra is not None else np.unique(rows)  # the head's items always
            scores = score(rows, u)
            if extra is not None:
                scores[np.searchsorted(rows, extra[0])] += extra[1][u]
            if mine is not None:
                exclude_sorted(scores, rows, mine)
        scores[~eligible[rows]] = NEG
        if np.isfinite(scores).sum() < k:  # exclusions ate the candidates: ask the exact search
            one_seen = None if mine is None else (np.array([0, len(mine)]), mine)
            one_extra = None if extra is None else (extra[0], extra[1][u:u + 1])
            i, s = exact.search(users[u:u + 1], k, eligible, one_seen, one_extra)
            out_i[u], out_s[u] = i[0], s[0]
            continue
        cols, vals = best_k(scores[None, :], k, rows[None, :])
        out_i[u], out_s[u] = rows[cols[0]], vals[0]
    out_i[~np.isfinite(out_s)] = -1
    return out_i, out_s


class ExactBlend:
    """The exact top-K of ``[u, w q] . [v, t] = u.v + w q.t``: the exact kind's blend, and
    :class:`BlendIndex`'s fallback; its (items x (d + D)) matrix is made on the first search
    (for the fallback, only a filter that empties the candidates asks for one)."""

    kind = "exact"

    def __init__(self, items: np.ndarray, text: np.ndarray, block_rows: int = 65_536) -> None:
        self.parts, self.block_rows = (items, text), block_rows
        self.index: ExactIndex | None = None

    def search(self, users: np.ndarray, k: int, eligible: np.ndarray, seen: Seen | None = None,
               extra: Extra | None = None, text_pool: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``text_pool`` unused: every item is scored."""
        if self.index is None:
            self.index = ExactIndex(np.hstack(self.parts), self.block_rows)
        return self.index.search(users, k, eligible, seen, extra)


class BlendIndex:
    """Text-only users' blended score ``u.v + w q.t`` over faiss, with no index of its own:
    candidates from the item index (by ``u.v``, ``tower_width`` of them) and the text index (by
    ``q.t``: the pool the text's pseudo-history was taken from), re-scored exactly as the blend.

    Why not an index over the ``[item, text]`` matrix: on Book-Crossing's 271k books that was a
    third, 448-d HNSW graph (~100 s to build on 2 cores, ~0.5 GB) searched on every text request
    beside the text index. Why these widths: of the exact blend's top 20 for 200 item-description
    users on that catalogue, 86% were in the text term's top 240 and every one in the top 1,000
    of either term; the cheap side (IVF over 64-d tower vectors) takes the wide pool. Recall
    against the exact blend is measured in ``benchmarks/serve.py`` and ``tests/test_serve.py``.
    """

    kind = "faiss"

    def __init__(self, items: FaissIndex, text: FaissIndex, tower_width: int) -> None:
        self.items, self.text, self.tower_width = items, text, tower_width
        self.exact = ExactBlend(items.matrix, text.matrix, items.exact.block_rows)

    def search(self, users: np.ndarray, k: int, eligible: np.ndarray, seen: Seen | None = None,
               extra: Extra | None = None, text_pool: Pool | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``text_pool``: the text index's (B, m) rows for these users' texts, with ``w q.t``."""
        users = np.ascontiguousarray(users, dtype=np.float32)
        d, n = self.items.matrix.shape[1], self.items.matrix.shape[0]
        u, wq = np.ascontiguousarray(users[:, :d]), np.ascontiguousarray(users[:, d:])
        k_eff = min(k, n)
        want = candidates_wanted(users.shape[0], k_eff, n, self.items.overfetch, seen)
        if text_pool is None or text_pool[0].shape[1] < want:
            text_pool = self.text.scored_pool(wq, max(want, self.text.width))
        tower = self.items.scored_pool(u, max(want, self.tower_width))
        cand = blend_candidates(self.items.matrix, u, text_pool, tower, k_eff, eligible, seen)
        terms = TextTerms(self.text.matrix, wq, text_pool)

        def score(rows: np.ndarray, i: int) -> np.ndarray:
            return self.items.matrix[rows] @ u[i] + terms(rows, i)

        return rescore(users, cand, k_eff, eligible, seen, extra, score, self.exact)


class TextTerms:
    """Each user's text term ``w q.t``: the text index's own product for the rows of its pool,
    a gather of the text vector for any other row.

    Why: the pool's 256 rows of 384-d text were gathered three times a request (the
    pseudo-history, the candidates' bound, the re-scoring) for products faiss had returned.
    """

    def __init__(self, text: np.ndarray, wq: np.ndarray, pool: Pool) -> None:
        self.text, self.wq = text, wq
        order = np.argsort(pool[0], axis=1)
        self.rows = np.take_along_axis(pool[0], order, axis=1)
        self.terms = np.take_along_axis(pool[1], order, axis=1)

    def __call__(self, rows: np.ndarray, b: int) -> np.ndarray:
        known, terms = self.rows[b], self.terms[b]
        at = np.minimum(np.searchsorted(known, rows), len(known) - 1)
        hit = known[at] == rows
        out = np.where(hit, terms[at], np.float32(0))
        if not hit.all():
            out[~hit] = self.text[rows[~hit]] @ self.wq[b]
        return out


def blend_candidates(items: np.ndarray, u: np.ndarray, text_pool: Pool, tower: Pool, k: int, eligible: np.ndarray,
                     seen: Seen | None) -> np.ndarray:
    """(B, m) blend candidates (-1: none): each user's text pool (rows and their ``w q.t``), and
    of the item index's pool (rows and their exact ``u.v``) only the rows whose blend could still
    reach the top k.

    Why: a tower candidate's text term is a gather of its 384-d text row, and on Book-Crossing
    those 1,000 gathers were a fifth of a text request. The text pool is the text index's best
    rows by ``q.t``, so a row outside it has ``q.t`` at most the pool's lowest, and its blend at
    most its ``u.v`` plus that; the k-th best blend among the pool's eligible, unseen rows is a
    floor every row of the top k reaches. A row whose bound misses the floor is dropped unscored.
    (The bound is as good as the text index's pool is exact: the same trust the candidates
    already put in it.)
    """
    lists = []
    for b in range(u.shape[0]):
        valid = text_pool[0][b] >= 0
        pool, qt = text_pool[0][b][valid], text_pool[1][b][valid]
        rows, uv = tower[0][b], tower[1][b]
        rows, uv = rows[rows >= 0], uv[rows >= 0]
        if len(pool):
            ok = eligible[pool].copy()
            if seen is not None:
                ok &= ~np.isin(pool, seen[1][seen[0][b]:seen[0][b + 1]])
            if ok.sum() >= k:
                floor = np.partition((items[pool] @ u[b] + qt)[ok], -k)[-k]
                slack = 1e-4 * (abs(float(floor)) + 1.0)  # faiss's products and numpy's may round apart
                rows = rows[uv + qt.min() >= floor - slack]
        lists.append(np.concatenate([pool, rows]))
    out = np.full((len(lists), max(map(len, lists), default=0)), -1, dtype=np.int64)
    for b, rows in enumerate(lists):
        out[b, :len(rows)] = rows
    return out


def make_index(matrix: np.ndarray, kind: str, cfg: FaissIndexConfig, threads: int = 1,
               block_rows: int = 65_536) -> FaissIndex | ExactIndex:
    return FaissIndex(matrix, cfg, threads, block_rows) if kind == "faiss" else ExactIndex(matrix, block_rows)


def make_indexes(items: np.ndarray, text: np.ndarray | None, kind: str, cfg: FaissIndexConfig, threads: int = 1,
                 block_rows: int = 65_536) -> tuple[Index, PoolIndex | None, TextBlendIndex | None]:
    """(item index, text index, blend index) of one kind; the text ones are None without item
    text. Under faiss the text index is ``cfg.for_text()`` and the blend one a
    :class:`BlendIndex` over the other two."""
    index = make_index(items, kind, cfg, threads, block_rows)
    if text is None:
        return index, None, None
    text_index = make_index(text, kind, cfg.for_text(), threads, block_rows)
    if isinstance(index, FaissIndex) and isinstance(text_index, FaissIndex):
        return index, text_index, BlendIndex(index, text_index, cfg.blend_candidates)
    return index, text_index, ExactBlend(items, text, block_rows)
