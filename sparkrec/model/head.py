"""The hybrid's collaborative item-item head: a closed-form linear model with side information.

Why a linear head beside the towers: completing a user's set from a random part of it (the
random per-user protocols, any source without timestamps) is what an item-item regression
over the whole history solves best (EASE, Steck 2019), while the towers win on sequences and
on items nobody has touched. The head is EASE over the users' *weighted* positives, with the
items' side information added to the Gram matrix as extra pseudo-users (collective EASE,
Jeunen et al. 2020): ``G = X^T X + b_text d T T^T + b_cat d C C^T`` with ``T`` the items' unit
text vectors and ``C`` their normalised category memberships, ``d`` the mean of diag(X^T X) so
the betas do not depend on the dataset's scale. Side information is how two items that no user
has shared yet still lend each other weight.

The head covers the ``max_items`` most popular items with at least ``min_count`` training
interactions (a dense m x m inverse on the driver bounds it, and so does the driver's memory:
:func:`items_that_fit`); every other item is scored by the towers alone. Every m x m matrix
is float32: the inverse is single precision anyway, and float64 Grams made a 20,000-item head
need over 21 GB.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from ..cooccurrence import driver_gram
from ..linalg import spd_inverse
from .data import Catalog

TEXT_NEIGHBOURS = 50
Entries = tuple[np.ndarray, np.ndarray, np.ndarray]  # CSR over head columns: (indptr, columns, weights)


@dataclass
class LinearHead:
    """Item-item weights over ``rows`` (model rows: item_idx + 1, ascending), and optionally
    implicit-ALS item factors over the same rows (:mod:`sparkrec.model.factors`), whose fold-in
    score is added with weight ``params["factor_weight"]``."""

    rows: np.ndarray  # (m,) int64
    weights: np.ndarray  # (m, m) float32, zero diagonal
    params: dict[str, float] = field(default_factory=dict)
    factors: np.ndarray | None = None  # (m, rank) float32
    # Items with no training positive and their factors predicted from text
    # (:func:`sparkrec.model.factors.content_factors`): the factor term scores them too.
    cold_rows: np.ndarray | None = None  # (c,) int64 model rows, ascending, disjoint from rows
    cold_factors: np.ndarray | None = None  # (c, rank) float32
    # (rows, cold_rows, scored rows, head positions, cold positions in them): built once per pair
    # of arrays, not on every scoring (a union and three bisections, ~4 ms per service request).
    _layout: tuple[np.ndarray, ...] | None = field(default=None, init=False, repr=False, compare=False)

    def columns(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Head column of each model row, and whether the head covers it."""
        rows = np.asarray(rows, dtype=np.int64)
        if len(self.rows) == 0:
            return np.zeros(len(rows), np.int64), np.zeros(len(rows), bool)
        cols = np.minimum(np.searchsorted(self.rows, rows), len(self.rows) - 1)
        return cols, self.rows[cols] == rows

    @property
    def factor_term(self) -> bool:
        """Whether the factor term is part of the score."""
        return self.factors is not None and float(self.params.get("factor_weight", 0.0)) > 0

    @property
    def scores_cold(self) -> bool:
        """Whether the head scores cold items (through the factor term) beside its own rows."""
        return self.factor_term and self.cold_factors is not None and len(self.cold_factors) > 0

    @property
    def scored_rows(self) -> np.ndarray:
        """The model rows :meth:`scores` covers, ascending: the head's, plus the cold items'."""
        return self._cold_layout()[0] if self.scores_cold else self.rows

    def _cold_layout(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(scored rows, the head rows' positions in them, the cold rows' positions in them)."""
        layout = self._layout
        if layout is None or layout[0] is not self.rows or layout[1] is not self.cold_rows:
            scored = np.union1d(self.rows, self.cold_rows)
            layout = (self.rows, self.cold_rows, scored, np.searchsorted(scored, self.rows),
                      np.searchsorted(scored, self.cold_rows))
            self._layout = layout
        return layout[2], layout[3], layout[4]

    @property
    def binary(self) -> bool:
        """Whether the head reads 1 per positive rather than the interaction's weight (a
        searched choice: ratings as weights help where they say how much a user liked an item)."""
        return bool(self.params.get("binary", 0.0))

    def entries(self, indptr: np.ndarray, rows: np.ndarray, weights: np.ndarray) -> Entries:
        """CSR histories of model rows as head columns: (indptr, columns, weights), items the
        head does not cover dropped, a re-rated item once at its largest weight."""
        n_users = len(indptr) - 1
        owner = np.repeat(np.arange(n_users), np.diff(indptr))
        cols, known = self.columns(rows)
        owner, cols, w = owner[known], cols[known], np.asarray(weights, np.float32)[known]
        order = np.lexsort((w, cols, owner))  # by user, column, then weight: the last is the largest
        owner, cols, w = owner[order], cols[order], w[order]
        last = np.ones(len(cols), bool)
        if len(cols):
            last[:-1] = (owner[1:] != owner[:-1]) | (cols[1:] != cols[:-1])
        owner, cols, w = owner[last], cols[last], w[last]
        out_ptr = np.zeros(n_users + 1, np.int64)
        np.cumsum(np.bincount(owner, minlength=n_users), out=out_ptr[1:])
        return out_ptr, cols, w

    def user_matrix(self, indptr: np.ndarray, rows: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """(users, m) float32 input rows from CSR histories of model rows and their weights."""
        return self.dense(self.entries(indptr, rows, weights))

    def dense(self, held: Entries) -> np.ndarray:
        """(users, m) float32 input rows from :meth:`entries`' output."""
        ptr, cols, w = held
        x = np.zeros((len(ptr) - 1, len(self.rows)), dtype=np.float32)
        x[np.repeat(np.arange(len(ptr) - 1), np.diff(ptr)), cols] = 1.0 if self.binary else w
        return x

    def scores(self, indptr: np.ndarray, rows: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """(users, len(scored_rows)) head scores, each user's row scaled to unit standard
        deviation, so that the blend weight means the same for a user with 5 items and one with 500."""
        held = self.entries(indptr, rows, weights)
        return self.combine(self.item_item(held), held)

    def item_item(self, held: Entries) -> np.ndarray:
        """(users, m) float32: the users' input rows times the item-item weights.

        A user who holds a small share of the head's items (most of Book-Crossing's: a handful of
        m = 16,612) is scored as a sum of the weight rows of their items, costing their count times
        m, not m x m: a streamed batch of 1,500 such users took 10 s as one dense product. The
        others keep the dense product, which BLAS runs faster per operation. Each user's row is
        computed one way by their own count, so a user's scores do not depend on who else is in
        the batch."""
        counts = np.diff(held[0])
        light = counts * SPARSE_SHARE < len(self.rows)
        out = np.empty((len(counts), len(self.rows)), np.float32)
        if (~light).any():
            heavy = np.flatnonzero(~light)
            out[heavy] = self.dense(_select_users(held, heavy)) @ self.weights
        if light.any():
            from scipy.sparse import csr_matrix

            few = np.flatnonzero(light)
            p, c, v = _select_users(held, few)
            x = csr_matrix((np.ones(len(v), np.float32) if self.binary else v.astype(np.float32), c, p),
                           shape=(len(few), len(self.rows)))
            out[few] = x @ self.weights
        return out

    def combine(self, item_item: np.ndarray, held: Entries, users: np.ndarray | None = None) -> np.ndarray:
        """The head's score from its item-item part (users, m) and the users' :meth:`entries`:
        both it and the factor term scaled per user to unit standard deviation, the factor term
        weighted. ``users``: their :meth:`user_factors`, when already folded in."""
        return self.weigh(unit_scale(item_item), self.factor_scores(held, users))

    def weigh(self, item_item: np.ndarray, factor: np.ndarray | None) -> np.ndarray:
        """The scaled item-item part plus the weighted factor term, over :attr:`scored_rows`
        (a cold item's item-item part is 0: no user's history has a weight towards it)."""
        if factor is None:
            return item_item
        weight = np.float32(self.params["factor_weight"])
        if factor.shape[1] == item_item.shape[1]:
            return item_item + weight * factor
        out = weight * factor
        out[:, self._cold_layout()[1]] += item_item
        return out

    def user_factors(self, held: Entries) -> np.ndarray:
        """(users, rank) float32: each user's factors folded in from :meth:`entries` against the
        fixed item factors (the factor term's query)."""
        from .factors import fold_in

        assert self.factors is not None
        return fold_in(self.factors, *held, self.params["factor_reg"], self.params["factor_alpha"])

    def factor_scores(self, held: Entries, users: np.ndarray | None = None) -> np.ndarray | None:
        """(users, len(scored_rows)) the factor term at unit scale per user, before its weight,
        from the users' :meth:`entries` (or their ``users`` factors, already folded in); None: no term."""
        if not self.factor_term:
            return None
        assert self.factors is not None
        if users is None:
            users = self.user_factors(held)
        if not self.scores_cold:
            return unit_scale(users @ self.factors.T)
        assert self.cold_factors is not None
        scored, head_at, cold_at = self._cold_layout()
        out = np.empty((len(users), len(scored)), np.float32)
        out[:, head_at] = users @ self.factors.T
        out[:, cold_at] = users @ self.cold_factors.T
        return unit_scale(out)

    def tensors(self) -> dict[str, np.ndarray]:
        out = {"head_rows": self.rows.astype(np.int64), "head_weights": np.ascontiguousarray(self.weights)}
        if self.factors is not None:
            out["head_factors"] = np.ascontiguousarray(self.factors, dtype=np.float32)
        if self.cold_rows is not None and self.cold_factors is not None:
            out["head_cold_rows"] = self.cold_rows.astype(np.int64)
            out["head_cold_factors"] = np.ascontiguousarray(self.cold_factors, dtype=np.float32)
        return out

    @classmethod
    def from_tensors(cls, tensors: dict[str, np.ndarray], params: dict[str, float]) -> LinearHead:
        def optional(name: str, dtype: type) -> np.ndarray | None:
            return tensors[name].astype(dtype) if name in tensors else None

        return cls(tensors["head_rows"].astype(np.int64), tensors["head_weights"].astype(np.float32), params,
                   optional("head_factors", np.float32), optional("head_cold_rows", np.int64),
                   optional("head_cold_factors", np.float32))


# A user holding fewer than 1 / SPARSE_SHARE of the head's items is scored sparsely (item_item).
SPARSE_SHARE = 20


def _select_users(held: Entries, users: np.ndarray) -> Entries:
    """The CSR entries of some users, in the order given."""
    ptr, cols, w = held
    starts, ends = ptr[users], ptr[users + 1]
    take = np.concatenate([np.arange(a, b) for a, b in zip(starts, ends, strict=True)]) if len(users) \
        else np.zeros(0, np.int64)
    new_ptr = np.zeros(len(users) + 1, np.int64)
    np.cumsum(ends - starts, out=new_ptr[1:])
    return new_ptr, cols[take.astype(np.int64)], w[take.astype(np.int64)]


def unit_scale(scores: np.ndarray) -> np.ndarray:
    """Each row divided by its standard deviation (a constant row left as it is)."""
    return scores / np.maximum(scores.std(axis=1, keepdims=True), 1e-6)


# --------------------------------------------------------------------------- fitting
# m x m float32 matrices alive at the peak of the blend search, as measured (tracemalloc): two
# Grams (weighted, binary) and two side similarities held, and a solve's system, LAPACK's
# copies and the inverse on top (9.1), plus the last trial's weights.
MATRICES_AT_PEAK = 10


def available_memory() -> int | None:
    """Bytes the OS can still give this process (Linux MemAvailable; None where unknown)."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def items_that_fit(max_items: int, available: int | None, share: float = 0.6) -> int:
    """The largest head (at most ``max_items``) whose matrices take at most ``share`` of the
    available memory: the default 20,000 needs ~16 GB, which a laptop may not have, and an
    out-of-memory kill loses the whole training run."""
    if available is None:
        return max_items
    return max(2, min(max_items, int(np.sqrt(share * available / (4 * MATRICES_AT_PEAK)))))


def head_rows(positives: DataFrame, max_items: int, min_count: int) -> np.ndarray:
    """The items the head covers: the most popular with at least ``min_count`` users (bounded
    by ``max_items``, so what comes to the driver is small by construction)."""
    counts = positives.groupBy("item_idx").agg(F.countDistinct("user_idx").alias("n")).filter(F.col("n") >= min_count)
    top = counts.orderBy(F.desc("n"), "item_idx").limit(max_items).select("item_idx").collect()
    return np.sort(np.array([r[0] + 1 for r in top], dtype=np.int64))


def untouched_rows(positives: DataFrame, catalog: Catalog) -> np.ndarray:
    """Model rows of items with text and no positive in ``positives``, ascending: the items
    nobody has touched, which only their text can place. Not every item off the head: an item
    with one positive is the towers' (and its own ID's) to rank, and counting the catalogue's
    long tail here would put most of Book-Crossing's 271k items on every scoring's dense block.
    What reaches the driver is the distinct item ids, bounded by the catalogue."""
    if catalog.text is None:
        return np.zeros(0, np.int64)
    touched = positives.select("item_idx").distinct().toPandas()["item_idx"].to_numpy(np.int64) + 1
    cold = np.any(catalog.text != 0, axis=1)
    cold[0] = False
    cold[touched[touched < len(cold)]] = False
    return np.flatnonzero(cold).astype(np.int64)


HeadEntries = tuple[np.ndarray, np.ndarray, np.ndarray]  # CSR: indptr, head columns, weights


def head_entries(positives: DataFrame, rows: np.ndarray) -> HeadEntries:
    """The users' positives over ``rows`` as CSR (indptr, head columns, weights: one per user
    and item, the largest), users in ``user_idx`` order: what the Gram matrices and the factor
    term are computed from on the driver. It is bounded by the head's items, not the catalogue:
    12 bytes per (user, head item) pair, ~12 MB per million."""
    keep = positives.sparkSession.createDataFrame([(int(r) - 1,) for r in rows], "item_idx int")
    pdf = (positives.groupBy("user_idx", "item_idx").agg(F.max("weight").cast("double").alias("value"))
           .join(F.broadcast(keep), "item_idx").orderBy("user_idx", "item_idx").toPandas())
    users, owner = np.unique(pdf["user_idx"].to_numpy(), return_inverse=True)
    indptr = np.zeros(len(users) + 1, np.int64)
    np.cumsum(np.bincount(owner, minlength=len(users)), out=indptr[1:])
    cols = np.searchsorted(rows, pdf["item_idx"].to_numpy().astype(np.int64) + 1)
    return indptr, cols, pdf["value"].to_numpy(np.float32)


def gram_of(entries: HeadEntries, n_rows: int, binary: bool = False, max_block: int = 20_000_000) -> np.ndarray:
    """X^T X over the head's ``n_rows`` items (X: the users' largest weights, or 1 when
    ``binary``), from ``head_entries``: the factor term needs those entries on the driver
    anyway, so the Gram is multiplied out there too (``driver_gram``)."""
    import scipy.sparse as sp

    indptr, cols, weights = entries
    values = np.ones(len(weights)) if binary else weights.astype(np.float64)
    x = sp.csr_matrix((values, cols, indptr), shape=(len(indptr) - 1, n_rows))
    return driver_gram(x, np.float32, max_block)


def side_grams(catalog: Catalog, rows: np.ndarray) -> dict[str, np.ndarray]:
    """Item-item similarity from side information, over the head's rows: text cosine, and
    shared categorical values (author, publisher, year bucket, genres; each item's memberships
    scaled to unit norm, so an item with four genres is not four times as similar)."""
    out: dict[str, np.ndarray] = {}
    if catalog.text is not None:
        t = catalog.text[rows].astype(np.float32)
        t /= np.maximum(np.linalg.norm(t, axis=1, keepdims=True), 1e-6)
        out["text"] = nearest_only(t @ t.T, TEXT_NEIGHBOURS)
    codes = []
    offset = 0
    if catalog.cats is not None:
        for f, size in enumerate(catalog.cat_vocab_sizes):
            codes.append(np.where(catalog.cats[rows, f] > 1, catalog.cats[rows, f] + offset, -1)[:, None])
            offset += size
    if catalog.genres is not None:
        codes.append(np.where(catalog.genres[rows] > 1, catalog.genres[rows] + offset, -1))
        offset += catalog.genre_vocab
    if codes:
        member = np.concatenate(codes, axis=1)
        owner, slot = np.nonzero(member >= 0)
        c = np.zeros((len(rows), offset), dtype=np.float32)
        c[owner, member[owner, slot]] = 1.0
        c /= np.maximum(np.linalg.norm(c, axis=1, keepdims=True), 1e-6)
        if c.any():
            out["cat"] = c @ c.T
    return out


def nearest_only(sim: np.ndarray, k: int) -> np.ndarray:
    """Each item's k most similar items (symmetrised), the rest 0. Sentence-embedding cosines
    are positive for almost any pair; kept dense they would act as a popularity prior rather
    than say which items are alike."""
    m = len(sim)
    np.fill_diagonal(sim, 1.0)
    if m > k + 1:
        cut = np.partition(sim, m - k - 1, axis=1)[:, m - k - 1][:, None]
        sim = np.where(sim >= cut, sim, 0.0)
    sim = np.maximum(sim, sim.T)
    return np.clip(sim, 0.0, None, out=sim).astype(np.float32, copy=False)


def solve_head(gram_matrix: np.ndarray, sides: dict[str, np.ndarray], rows: np.ndarray,
               params: dict[str, float]) -> LinearHead:
    """B = I - P diag(1/diag(P)), P = (G + sum_s beta_s d S_s + lam d I)^-1 (float32 LAPACK
    through the Cholesky factor, :func:`sparkrec.linalg.spd_inverse`: the inverse dominates the
    cost, and single precision halves it at no loss of ranking)."""
    d = float(np.mean(np.diag(gram_matrix))) or 1.0
    g = gram_matrix.astype(np.float32)  # a copy: the search solves the same Gram many times
    for name, s in sides.items():
        beta = float(params.get(f"beta_{name}", 0.0))
        if beta > 0:
            g += np.float32(beta * d) * s
    g[np.diag_indices_from(g)] += np.float32(float(params["lam"]) * d)
    p = spd_inverse(g)
    del g
    p /= -np.diag(p).copy()[None, :]
    np.fill_diagonal(p, 0.0)
    return LinearHead(rows, p.astype(np.float32, copy=False), {k: float(v) for k, v in params.items()})


LAM_RANGE = (0.3, 300.0)


def head_params(trial: Any, sides: dict[str, np.ndarray], lam_range: tuple[float, float] = LAM_RANGE
                ) -> dict[str, float]:
    """The head's search space, relative to the data's scale (see the module docstring).
    ``sides`` empty: plain EASE (every beta 0), the first stage of ``blend.search_blend``."""
    params = {"binary": float(trial.suggest_categorical("binary", [0, 1])),
              "lam": trial.suggest_float("lam", *lam_range, log=True)}
    for name in sides:
        params[f"beta_{name}"] = trial.suggest_float(f"beta_{name}", 0.0, 2.0)
    return params
