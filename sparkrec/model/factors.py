"""Implicit-feedback matrix factorisation over the head's items: the hybrid's third score term.

Why a low-rank term beside the item-item head and the towers: on random per-user splits a tuned
implicit ALS is the strongest baseline on ml-latest-small, and what it captures (a few global
taste directions fitted to the confidence-weighted whole matrix) is what neither EASE's
item-item regression nor the towers' sampled-softmax embeddings is trained for; the blend of
the three is searched on validation like the rest (:mod:`sparkrec.model.blend`).

The objective is Hu, Koren and Volinsky's (2008) with Spark MLlib's conventions, so its grid
means what the ALS baseline's does: confidence ``1 + alpha * weight`` on a positive, 1 on every
other item, and the ridge scaled by the row's number of positives (``reg * n_u``). Fitting runs
a few conjugate-gradient steps per half-iteration, warm-started (Takacs et al. 2011), all users
(or items) at once with sparse products; serving *folds a user in* with the exact least-squares
step against the fixed item factors, so the model keeps item factors only and a user's term
follows their latest events with no refit, in the batch job, the stream and the service alike.
"""

from __future__ import annotations

import numpy as np
from scipy import sparse

CG_STEPS = 3
FOLD_IN_ENTRIES = 32_768  # padded history entries per batched product (x rank x 8 bytes of memory)
# users whose systems are built and solved together: (users, rank, rank) float64, 134 MB at rank 64
FOLD_IN_USERS = 4096


def _rows(indptr: np.ndarray, cols: np.ndarray, weights: np.ndarray, n_cols: int) -> sparse.csr_matrix:
    return sparse.csr_matrix((np.asarray(weights, np.float64), np.asarray(cols, np.int64),
                              np.asarray(indptr, np.int64)), shape=(len(indptr) - 1, n_cols))


def _conjugate_gradient(r_mat: sparse.csr_matrix, fixed: np.ndarray, start: np.ndarray, reg: float,
                        alpha: float, steps: int) -> np.ndarray:
    """A few CG steps on every row's normal equation at once, from ``start``:
    (F^T F + F^T diag(alpha r_u) F + reg n_u I) x_u = F^T (1 + alpha r_u) on r_u's positives."""
    owner = np.repeat(np.arange(r_mat.shape[0]), np.diff(r_mat.indptr))
    conf = alpha * r_mat.data
    ridge = reg * np.diff(r_mat.indptr).astype(np.float64)[:, None]
    gram = fixed.T @ fixed
    fixed_at = fixed[r_mat.indices]

    def apply(v: np.ndarray) -> np.ndarray:
        along = np.einsum("ij,ij->i", v[owner], fixed_at) * conf
        spread = sparse.csr_matrix((along, r_mat.indices, r_mat.indptr), shape=r_mat.shape) @ fixed
        return v @ gram + ridge * v + spread

    b = _rows(r_mat.indptr, r_mat.indices, 1.0 + conf, r_mat.shape[1]) @ fixed
    x = start.copy()
    resid = b - apply(x)
    direction = resid.copy()
    norm = np.einsum("ij,ij->i", resid, resid)
    for _ in range(steps):
        moved = apply(direction)
        step = norm / np.maximum(np.einsum("ij,ij->i", direction, moved), 1e-12)
        x += step[:, None] * direction
        resid -= step[:, None] * moved
        new_norm = np.einsum("ij,ij->i", resid, resid)
        direction = resid + (new_norm / np.maximum(norm, 1e-12))[:, None] * direction
        norm = new_norm
    return x


def implicit_als(indptr: np.ndarray, cols: np.ndarray, weights: np.ndarray, n_items: int, rank: int,
                 reg: float, alpha: float, iterations: int = 15, seed: int = 0) -> np.ndarray:
    """(n_items, rank) float32 item factors from users' positives (CSR over item columns)."""
    by_user = _rows(indptr, cols, weights, n_items)
    by_user.sum_duplicates()
    by_item = by_user.T.tocsr()
    rng = np.random.default_rng(seed)
    users = rng.normal(0.0, 0.01, (by_user.shape[0], rank))
    items = rng.normal(0.0, 0.01, (n_items, rank))
    for _ in range(iterations):
        users = _conjugate_gradient(by_user, items, users, reg, alpha, CG_STEPS)
        items = _conjugate_gradient(by_item, users, items, reg, alpha, CG_STEPS)
    return items.astype(np.float32)


def fold_in(factors: np.ndarray, indptr: np.ndarray, cols: np.ndarray, weights: np.ndarray, reg: float,
            alpha: float) -> np.ndarray:
    """(users, rank) float32 user factors, each the exact least-squares answer to its positives
    (CSR over factor rows, one entry per item) against the fixed item factors.

    Users are solved :data:`FOLD_IN_USERS` at a time: every user's system is a rank x rank
    float64 matrix, and a server folding in all of Book-Crossing's 92,100 users at load would
    otherwise hold 3 GB of them at once."""
    n = len(indptr) - 1
    parts = [np.zeros((0, factors.shape[1]), np.float32)]
    for s in range(0, n, FOLD_IN_USERS):
        e = min(s + FOLD_IN_USERS, n)
        lo, hi = indptr[s], indptr[e]
        parts.append(_fold_in_users(factors, indptr[s:e + 1] - lo, cols[lo:hi], weights[lo:hi], reg, alpha))
    return np.concatenate(parts)


def _fold_in_users(factors: np.ndarray, indptr: np.ndarray, cols: np.ndarray, weights: np.ndarray, reg: float,
                   alpha: float) -> np.ndarray:
    """:func:`fold_in` for users solved together.

    Each user's ``Y_u^T diag(c_u) Y_u`` is one batched matrix product over users of similar
    history length, zero-padded to the longest of their group (BLAS, not a Python loop; sorting
    by length keeps the padding small however skewed the lengths are)."""
    y = factors.astype(np.float64)
    n, rank = len(indptr) - 1, y.shape[1]
    counts = np.diff(indptr)
    a = np.repeat((y.T @ y)[None], n, axis=0)
    a += (reg * counts + 1e-9)[:, None, None] * np.eye(rank)  # the 1e-9: a user with no positives
    conf = alpha * np.asarray(weights, np.float64)
    by_length = np.argsort(counts, kind="stable")
    lengths = np.maximum(counts[by_length], 1)
    start = 0
    while start < n:
        reach = max(1, FOLD_IN_ENTRIES // int(lengths[start]))  # as many users as the shortest allows
        group = max(1, min(reach, FOLD_IN_ENTRIES // int(lengths[min(start + reach, n) - 1])))
        users = by_length[start:start + group]
        width = int(counts[users].max())
        if width:
            slot = np.arange(width)[None, :]
            take = np.minimum(indptr[users][:, None] + slot, max(len(cols) - 1, 0))
            live = slot < counts[users][:, None]
            yu = np.where(live[:, :, None], y[cols[take]], 0.0)
            cu = np.where(live, conf[take], 0.0)
            a[users] += np.matmul(yu.transpose(0, 2, 1) * cu[:, None, :], yu)
        start += len(users)
    b = _rows(indptr, cols, 1.0 + conf, len(y)) @ y
    return batched_solve(a, b)


def batched_solve(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(n, r) float32 solutions of n small SPD systems ``a[i] x = b[i]``, through torch: numpy's
    batched solve hands each 64 x 64 system to a multi-threaded OpenBLAS call, and on a busy
    machine 2,000 of them took 12.4 s against 0.2 s here (0.1 s with OpenBLAS held to one thread)."""
    import torch

    x = torch.linalg.solve(torch.from_numpy(a), torch.from_numpy(b)[:, :, None])[:, :, 0]
    return x.numpy().astype(np.float32)


def content_factors(text: np.ndarray, fitted_rows: np.ndarray, factors: np.ndarray, new_rows: np.ndarray,
                    ridge: float) -> np.ndarray:
    """(len(new_rows), rank) float32 factors for items ALS never saw, predicted from their text.

    Why: the factor term is what places an item among the users' taste directions, and a cold
    item has no column to fit. A ridge regression from the fitted items' unit text vectors (and
    a bias) to their ALS factors learns which directions of the text space carry collaborative
    signal, and it predicts the factor norm too, i.e. how broadly the item will appeal. A user's
    folded-in factors then score cold items like any other (the CB2CF / "content to
    collaborative" mapping of Barkan et al. 2019, in closed form). ``ridge`` is relative to the
    mean diagonal of the design's Gram matrix, as the head's ``lam`` is, so that one value means
    the same at 2,000 fitted items or 20,000. On pseudo-cold carves of ml-latest-small's train
    items (``benchmarks/cold_map.py``, 5 carves) the predicted factors alone reached 1.40x
    content-only Recall@20, and 1.46x beside the content score."""
    def design(rows: np.ndarray) -> np.ndarray:
        t = text[rows].astype(np.float64)
        t /= np.maximum(np.linalg.norm(t, axis=1, keepdims=True), 1e-9)
        return np.hstack([t, np.ones((len(rows), 1))])

    x = design(fitted_rows)
    gram = x.T @ x
    gram += ridge * np.trace(gram) / len(gram) * np.eye(len(gram))
    mapping = np.linalg.solve(gram, x.T @ factors.astype(np.float64))
    return (design(new_rows) @ mapping).astype(np.float32)
