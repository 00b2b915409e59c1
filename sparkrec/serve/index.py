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


class ExactIndex:
    """Every item scored: the reference answer, and fast enough for a few hundred thousand items."""

    kind = "exact"

    def __init__(self, matrix: np.ndarray, block_rows: int = 65_536) -> None:
        self.matrix = np.ascontiguousarray(matrix, dtype=np.float32)
        self.block_rows = block_rows

    def search(self, users: np.ndarray, k: int, eligible: np.ndarray, seen: Seen | None = None,
               extra: Extra | None = None) -> tuple[np.ndarray, np.ndarray]:
        return top_k(users.astype(np.float32), self.matrix, k, eligible, seen, self.block_rows, extra)


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
        self.index = build_faiss(self.matrix, cfg, threads)
        self.build_seconds = round(time.perf_counter() - started, 2)
        log_fields(log, "faiss index built", kind=cfg.kind, items=self.matrix.shape[0], dim=self.matrix.shape[1],
                   seconds=self.build_seconds)

    def search(self, users: np.ndarray, k: int, eligible: np.ndarray, seen: Seen | None = None,
               extra: Extra | None = None) -> tuple[np.ndarray, np.ndarray]:
        users = np.ascontiguousarray(users, dtype=np.float32)
        b = users.shape[0]
        k_eff = min(k, self.matrix.shape[0])
        n_seen = np.diff(seen[0]) if seen is not None else np.zeros(b, np.int64)
        want = int(min(self.matrix.shape[0], self.overfetch * k_eff + (n_seen.max() if b else 0)))
        _, cand = self.index.search(users, max(want, 1))
        out_i = np.full((b, k_eff), -1, dtype=np.int64)
        out_s = np.full((b, k_eff), NEG, dtype=np.float32)
        for u in range(b):
            rows = cand[u][cand[u] >= 0]
            rows = np.union1d(rows, extra[0]) if extra is not None else np.unique(rows)  # the head's items always
            scores = self.matrix[rows] @ users[u]
            if extra is not None:
                scores[np.searchsorted(rows, extra[0])] += extra[1][u]
            scores[~eligible[rows]] = NEG
            if seen is not None:
                scores[np.isin(rows, seen[1][seen[0][u]:seen[0][u + 1]])] = NEG
            if np.isfinite(scores).sum() < k_eff:  # exclusions ate the candidates: ask the exact search
                one_seen = None if seen is None else (np.array([0, n_seen[u]]), seen[1][seen[0][u]:seen[0][u + 1]])
                one_extra = None if extra is None else (extra[0], extra[1][u:u + 1])
                i, s = self.exact.search(users[u:u + 1], k_eff, eligible, one_seen, one_extra)
                out_i[u], out_s[u] = i[0], s[0]
                continue
            cols, vals = best_k(scores[None, :], k_eff, rows[None, :])
            out_i[u], out_s[u] = rows[cols[0]], vals[0]
        out_i[~np.isfinite(out_s)] = -1
        return out_i, out_s


def make_index(matrix: np.ndarray, kind: str, cfg: FaissIndexConfig, threads: int = 1,
               block_rows: int = 65_536) -> Index:
    return FaissIndex(matrix, cfg, threads, block_rows) if kind == "faiss" else ExactIndex(matrix, block_rows)
