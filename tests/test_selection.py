"""The one top-K selection (running threshold) against a brute-force full sort.

Integer-valued vectors make every dot product exact in float32 whatever the BLAS blocking, and
give many ties, so the comparison is of exact indices, tie order included.
"""

from __future__ import annotations

import numpy as np
import pytest

from sparkrec.ragged import csr
from sparkrec.recommend.topk import top_k
from sparkrec.selection import best_k, cut


def _reference(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """A full stable sort: ties to the smaller column; -1 where fewer than k scores are finite."""
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    vals = np.take_along_axis(scores, order, axis=1)
    return np.where(np.isfinite(vals), order, -1), vals


def _problem(seed: int, b: int = 40, n: int = 3000, d: int = 6):
    rng = np.random.default_rng(seed)
    users = rng.integers(-3, 4, size=(b, d)).astype(np.float32)
    items = rng.integers(-3, 4, size=(n, d)).astype(np.float32)
    eligible = rng.random(n) > 0.3
    lists = [np.unique(rng.integers(0, n, rng.integers(0, 400))) for _ in range(b)]
    lists[0] = np.flatnonzero(eligible)[5:]  # a user who has seen all but 5 eligible items
    m = min(n, 200)
    extra = (np.sort(rng.choice(n, m, replace=False)), rng.integers(-2, 3, size=(b, m)).astype(np.float32))
    return users, items, eligible, csr(lists), extra


@pytest.mark.parametrize("block_rows", [64, 256, 65_536])
@pytest.mark.parametrize("k", [1, 20, 100])
def test_top_k_equals_a_full_sort_with_masks_seen_and_extra(block_rows: int, k: int):
    users, items, eligible, seen, extra = _problem(k + block_rows)
    full = users @ items.T
    full[:, extra[0]] += extra[1]
    full[:, ~eligible] = -np.inf
    full[np.repeat(np.arange(len(users)), np.diff(seen[0])), seen[1]] = -np.inf
    want_i, want_s = _reference(full, k)
    got_i, got_s = top_k(users, items, k, eligible, seen, block_rows, extra)
    assert (got_i == want_i).all() and np.array_equal(got_s, want_s)
    assert (got_i[0, 5:] == -1).all() and (got_i[0, :5] >= 0).all()  # 5 left: marked, not invented


def test_top_k_without_masks_and_more_k_than_items():
    users, items, *_ = _problem(1, n=50)
    got_i, got_s = top_k(users, items, 80, block_rows=16)
    want_i, want_s = _reference(users @ items.T, 50)
    assert got_i.shape == (40, 50) and (got_i == want_i).all() and np.array_equal(got_s, want_s)
    empty_i, _ = top_k(users[:0], items, 5)
    assert empty_i.shape == (0, 5)
    no_head = (np.zeros(0, np.int64), np.zeros((40, 0), np.float32))
    head_i, _ = top_k(users, items, 80, block_rows=16, extra=no_head)  # a head with no items is no head
    assert (head_i == want_i).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cut_equals_best_k_on_the_masked_matrix(dtype: type):
    """The baselines' cut before the running threshold was best_k over the whole masked row."""
    rng = np.random.default_rng(3)
    scores = rng.integers(-50, 50, size=(30, 20_000)).astype(dtype)
    scores[rng.random(scores.shape) < 0.1] = -np.inf
    allowed = rng.random(20_000) > 0.2
    masked = scores.copy()
    masked[:, ~allowed] = -np.inf
    want_i, want_s = best_k(masked, 10)
    got_i, got_s = cut(scores, 10, allowed)
    assert got_s.dtype == dtype and (got_i == want_i).all() and np.array_equal(got_s, want_s)
