"""Head variants judged on validation only: does anything beside plain EASE earn a place in the head?

Reads a lake's ``split_stratified`` table (as ``benchmarks/quality.py --work DIR`` leaves it), carves
a random 20% of each train row set out as validation (two carve seeds, so a gain must repeat), and
prints validation NDCG@10 over the items with at least two train users for:

- plain EASE over a lambda grid (lambda relative to the mean of diag(X'X), as the head's);
- EDLAE's dropout emphasis (Steck 2020): ``p / (1 - p) * diag(G)`` added to the diagonal beside
  lambda, which regularises popular items more;
- an RP3beta item-item graph (Paudel et al. 2017) blended with EASE, both z-scored per user;
- implicit ALS over the same items (:mod:`sparkrec.model.factors`, users folded in from their fit
  rows as the served head does), alone and blended with EASE, both z-scored per user.

Nothing is read from the test part: the point is to decide on validation, as the head's search does.

    python benchmarks/head_variants.py /path/to/work/lake/movielens
"""

from __future__ import annotations

import argparse
from itertools import product

import numpy as np
import pandas as pd
from deltalake import DeltaTable

from sparkrec.model.factors import fold_in, implicit_als
from sparkrec.model.head import solve_head
from sparkrec.model.validation import ValSet, ranking_quality
from sparkrec.ragged import csr

LAMBDAS = (2, 5, 10, 20, 40, 80)
DROPOUTS = (0.0, 0.1, 0.2, 0.33, 0.5)
RP3 = list(product((0.5, 0.8, 1.0), (0.0, 0.3, 0.5, 0.7)))  # (alpha, beta)
RP3_WEIGHTS = (0.0, 0.05, 0.1, 0.2, 0.35, 0.5, 1.0)
ALS = list(product((0.01, 0.03, 0.1, 0.3), (0.3, 1.0, 3.0, 10.0)))  # (reg, alpha), Spark's scaling
ALS_WEIGHTS = (0.0, 0.1, 0.25, 0.5, 1.0, 2.0)


def dense(rows: pd.DataFrame, users: dict[int, int], items: dict[int, int]) -> np.ndarray:
    x = np.zeros((len(users), len(items)), np.float32)
    rows = rows[rows.item_idx.isin(items)]
    x[rows.user_idx.map(users).to_numpy(), rows.item_idx.map(items).to_numpy()] = 1.0
    return x


def ndcg_at(scores: np.ndarray, fit: np.ndarray, val: np.ndarray, k: int = 10) -> float:
    """Mean NDCG@k over users with a validation item, fit items excluded: the trainer's own
    validation metric (:func:`sparkrec.model.validation.ranking_quality`) on dense matrices."""
    users = np.flatnonzero(val.sum(1) > 0)
    seen_indptr, seen = csr([np.flatnonzero(row) + 1 for row in fit[users]])
    target_indptr, targets = csr([np.flatnonzero(row) + 1 for row in val[users]])
    empty = np.zeros(0, np.int64)
    held = ValSet(users=users + 1, hist=empty, gaps=empty, target_indptr=target_indptr, targets=targets,
                  seen_indptr=seen_indptr, seen_items=seen, items_indptr=empty, items=empty, item_weights=empty)
    padded = np.hstack([np.zeros((len(users), 1), np.float32), scores[users]])  # column 0: padding row
    return float(ranking_quality(padded, held, 0, k)[1].mean())


def edlae(x: np.ndarray, lam: float, p: float) -> np.ndarray:
    """The head's closed form with EDLAE's emphasis as a side matrix: ``diag(G) / d`` weighted by
    ``p / (1 - p)`` adds exactly ``p / (1 - p) * diag(G)`` to the diagonal (p = 0: plain EASE)."""
    g = (x.T @ x).astype(np.float64)
    emphasis = np.diag(np.diag(g)) / (float(np.mean(np.diag(g))) or 1.0)
    params = {"lam": lam, "beta_drop": p / (1 - p)}
    return solve_head(g, {"drop": emphasis}, np.arange(len(g)), params).weights


def rp3beta(x: np.ndarray, alpha: float, beta: float) -> np.ndarray:
    user_to_item = x / np.maximum(x.sum(1, keepdims=True), 1)
    item_to_user = x.T / np.maximum(x.T.sum(1, keepdims=True), 1)
    w = (item_to_user**alpha) @ (user_to_item**alpha)
    w /= np.maximum(x.sum(0), 1)[None, :] ** beta
    np.fill_diagonal(w, 0.0)
    return w


def als_scores(fit: np.ndarray, reg: float, alpha: float, rank: int = 64) -> np.ndarray:
    users, cols = np.nonzero(fit)
    indptr = np.concatenate([[0], np.cumsum(np.bincount(users, minlength=len(fit)))])
    weights = fit[users, cols]
    factors = implicit_als(indptr, cols, weights, fit.shape[1], rank, reg, alpha)
    return fold_in(factors, indptr, cols, weights, reg, alpha) @ factors.T


def zscore(s: np.ndarray) -> np.ndarray:
    return (s - s.mean(1, keepdims=True)) / np.maximum(s.std(1, keepdims=True), 1e-9)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("lake", help="a dataset's lake directory holding split_stratified")
    ap.add_argument("--carves", type=int, nargs="+", default=[0, 1])
    args = ap.parse_args()
    split = DeltaTable(f"{args.lake}/split_stratified").to_pandas()
    train = split[split.part == "train"]
    counts = train.item_idx.value_counts()
    items = {v: i for i, v in enumerate(np.sort(counts[counts >= 2].index.to_numpy()))}
    users = {u: i for i, u in enumerate(np.unique(split.user_idx))}
    print(f"{len(users)} users, {len(items)} items with >= 2 train users, {len(train):,} train rows")
    for carve in args.carves:
        held = np.random.default_rng(carve).random(len(train)) < 0.2
        fit, val = dense(train[~held], users, items), dense(train[held], users, items)
        grid = {(lam, p): ndcg_at(fit @ edlae(fit, lam, p), fit, val) for lam, p in product(LAMBDAS, DROPOUTS)}
        plain = max((v, k) for k, v in grid.items() if k[1] == 0.0)
        best = max((v, k) for k, v in grid.items())
        print(f"\ncarve {carve}: EASE best {plain[0]:.4f} (lambda {plain[1][0]}); EASE+EDLAE best {best[0]:.4f} "
              f"(lambda, p {best[1]}): {best[0] / plain[0]:.4f}x")
        ease = zscore(fit @ edlae(fit, plain[1][0], 0.0))
        blends = []
        for alpha, beta in RP3:
            graph = zscore(fit @ rp3beta(fit, alpha, beta))
            blends += [(ndcg_at(ease + w * graph, fit, val), alpha, beta, w) for w in RP3_WEIGHTS]
        top = max(blends)
        print(f"carve {carve}: EASE + RP3beta best {top[0]:.4f} (alpha {top[1]}, beta {top[2]}, weight {top[3]}): "
              f"{top[0] / plain[0]:.4f}x")
        factor_runs = {(reg, alpha): zscore(als_scores(fit, reg, alpha)) for reg, alpha in ALS}
        alone = max((ndcg_at(s, fit, val), k) for k, s in factor_runs.items())
        mixed = max((ndcg_at(ease + w * s, fit, val), k, w) for k, s in factor_runs.items() for w in ALS_WEIGHTS)
        print(f"carve {carve}: implicit ALS alone best {alone[0]:.4f} (reg, alpha {alone[1]}); EASE + ALS best "
              f"{mixed[0]:.4f} (reg, alpha {mixed[1]}, weight {mixed[2]}): {mixed[0] / plain[0]:.4f}x")


if __name__ == "__main__":
    main()
