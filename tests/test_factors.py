"""The factor term: implicit ALS over the head's items, folded-in users, and its place in the head."""

from __future__ import annotations

import numpy as np
import pytest

from sparkrec.model import factors
from sparkrec.model.blend import BlendSearch, search_blend
from sparkrec.model.data import Catalog
from sparkrec.model.factors import fold_in, implicit_als
from sparkrec.model.head import LinearHead, unit_scale, untouched_rows
from sparkrec.model.validation import ValSet
from sparkrec.ragged import csr


def reference_fold_in(y: np.ndarray, cols: np.ndarray, weights: np.ndarray, alpha: float, reg: float) -> np.ndarray:
    """Spark's implicit-ALS user step, written out for one user: (Y'Y + sum_i c_i y_i y_i' + reg n I)
    x = sum_i (1 + c_i) y_i, c_i = alpha r_i, n the user's number of positives."""
    y = y.astype(np.float64)
    yu, c = y[cols], alpha * weights.astype(np.float64)
    a = y.T @ y + (yu * c[:, None]).T @ yu + reg * len(cols) * np.eye(y.shape[1])
    return np.linalg.solve(a, ((1.0 + c)[:, None] * yu).sum(axis=0))


def _two_tastes(rng: np.random.Generator, users: int = 60, items: int = 40) -> tuple[np.ndarray, ...]:
    """Users of taste 0 take items of the first half, taste 1 the second, a few strays each."""
    rows = []
    for u in range(users):
        half = np.arange(items // 2) + (items // 2) * (u % 2)
        mine = rng.choice(half, 8, replace=False)
        stray = rng.choice(np.arange(items), 1)
        rows.append(np.unique(np.concatenate([mine, stray])))
    indptr, cols = csr(rows)
    return indptr, cols, rng.uniform(0.5, 1.0, len(cols)).astype(np.float32)


# entries 8: many padded groups, a user longer than one; users 2: the users solved in several parts
@pytest.mark.parametrize(("entries", "users"), [(32_768, 4096), (8, 4096), (32_768, 2)])
def test_batched_fold_in_solves_each_users_implicit_als_step(entries, users, monkeypatch):
    monkeypatch.setattr(factors, "FOLD_IN_ENTRIES", entries)
    monkeypatch.setattr(factors, "FOLD_IN_USERS", users)
    rng = np.random.default_rng(0)
    y = rng.normal(size=(30, 6)).astype(np.float32)
    rows = [rng.choice(30, n, replace=False) for n in (1, 4, 12, 0, 30)]
    indptr, cols = csr(rows)
    weights = rng.uniform(0.1, 2.0, len(cols)).astype(np.float32)
    got = fold_in(y, indptr, cols, weights, reg=0.3, alpha=2.5)
    for u in range(len(rows)):
        mine = slice(indptr[u], indptr[u + 1])
        want = reference_fold_in(y, cols[mine], weights[mine], 2.5, 0.3) if len(rows[u]) else np.zeros(6)
        assert np.allclose(got[u], want, atol=1e-4), u


def test_als_learns_two_tastes_and_a_new_user_is_scored_by_theirs():
    rng = np.random.default_rng(1)
    indptr, cols, weights = _two_tastes(rng)
    factors = implicit_als(indptr, cols, weights, 40, rank=4, reg=0.05, alpha=4.0, iterations=10, seed=0)
    assert factors.shape == (40, 4) and factors.dtype == np.float32
    newcomer = fold_in(factors, np.array([0, 3]), np.array([1, 5, 9]), np.ones(3, np.float32), 0.05, 4.0)
    scores = (newcomer @ factors.T)[0]
    unseen = np.setdiff1d(np.arange(40), [1, 5, 9])
    top = unseen[np.argsort(-scores[unseen])[:10]]
    assert (top < 20).all(), top  # the other first-half items, not the second half's


def test_more_iterations_fit_the_implicit_objective_better():
    rng = np.random.default_rng(2)
    indptr, cols, weights = _two_tastes(rng)

    def loss(iterations: int) -> float:
        y = implicit_als(indptr, cols, weights, 40, rank=4, reg=0.05, alpha=4.0, iterations=iterations, seed=0)
        x = fold_in(y, indptr, cols, weights, 0.05, 4.0).astype(np.float64)
        p = np.zeros((len(indptr) - 1, 40))
        c = np.ones_like(p)
        owner = np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))
        p[owner, cols], c[owner, cols] = 1.0, 1.0 + 4.0 * weights
        return float((c * (p - x @ y.T) ** 2).sum() + 0.05 * (np.diff(indptr)[:, None] * x**2).sum())

    assert loss(10) < loss(1)


def test_the_head_adds_the_weighted_factor_term_and_round_trips_it():
    rng = np.random.default_rng(3)
    rows = np.array([2, 4, 6, 8, 10])
    w = rng.normal(size=(5, 5)).astype(np.float32)
    y = rng.normal(size=(5, 3)).astype(np.float32)
    params = {"factor_weight": 0.7, "factor_reg": 0.2, "factor_alpha": 3.0}
    head = LinearHead(rows, w, params, y)
    indptr, hist, hw = np.array([0, 2, 5]), np.array([2, 6, 4, 8, 99]), np.array([1.0, 0.5, 1, 1, 1], np.float32)
    x = head.user_matrix(indptr, hist, hw)
    users = fold_in(y, *head.entries(indptr, hist, hw), 0.2, 3.0)
    want = unit_scale(x @ w) + 0.7 * unit_scale(users @ y.T)
    assert np.allclose(head.scores(indptr, hist, hw), want, atol=1e-5)
    again = LinearHead.from_tensors(head.tensors(), params)
    assert np.array_equal(again.factors, y) and np.allclose(again.scores(indptr, hist, hw), want, atol=1e-5)
    assert np.allclose(LinearHead(rows, w, params).scores(indptr, hist, hw), unit_scale(x @ w), atol=1e-5)


def test_the_search_keeps_factors_only_when_validation_says_so():
    rng = np.random.default_rng(4)
    indptr, cols, _ = _two_tastes(rng, users=80)
    n_items = 40
    rows = np.arange(1, n_items + 1)  # every item in the head; model row = column + 1
    x = np.zeros((80, n_items), np.float32)
    x[np.repeat(np.arange(80), np.diff(indptr)), cols] = 1.0
    # validation: one held-out item of each user's own half, the rest is what the user has
    held = np.array([cols[indptr[u]:indptr[u + 1]][0] for u in range(80)])
    x_fit = x.copy()
    x_fit[np.arange(80), held] = 0.0
    fit_rows = [np.flatnonzero(r) for r in x_fit]
    f_ptr, f_cols = csr(fit_rows)
    f_w = np.ones(len(f_cols), np.float32)
    t_ptr, t = csr([np.array([h + 1]) for h in held])
    s_ptr, s = csr([r + 1 for r in fit_rows])
    val = ValSet(np.arange(1, 81), np.zeros((80, 2), np.int64), np.zeros((80, 2), np.float32), t_ptr, t, s_ptr, s,
                 s_ptr, s, np.ones(len(s), np.float32))
    gram = x_fit.T @ x_fit
    towers = np.zeros((n_items + 1, 2), np.float32)  # towers that know nothing
    search = BlendSearch(val, np.zeros((80, 2), np.float32), towers, {False: gram, True: gram}, {}, rows)
    search.factor_fit, search.factor_grid, search.factor_rank = (f_ptr, f_cols, f_w), [(0.05, 4.0)], 4
    params, _, value = search_blend(search, 2, seed=0)
    factor_trials = [t for t in search.trials if "factor_weight" in t]
    assert len(factor_trials) == 4  # one fit, every weight on the grid
    best_plain = max(t["ndcg@10"] for t in search.trials if "factor_weight" not in t)
    if params.get("factor_weight", 0.0) > 0:
        assert value > best_plain
    else:
        assert value == best_plain


def test_content_factors_place_cold_items_by_their_text():
    """Items 36-39 never appear in training; their text resembles one taste's items, so the
    factors predicted from text rank each taste's cold items first for that taste's users."""
    rng = np.random.default_rng(5)
    indptr, cols, weights = _two_tastes(rng, users=80)
    keep = cols < 36
    owner = np.repeat(np.arange(80), np.diff(indptr))[keep]
    cols, weights = cols[keep], weights[keep]
    indptr = np.concatenate([[0], np.cumsum(np.bincount(owner, minlength=80))])
    y = implicit_als(indptr, cols, weights, 36, rank=4, reg=0.05, alpha=4.0, iterations=10, seed=0)
    taste = (np.arange(41) - 1) >= 20  # model row r is item r - 1; row 0 is padding
    text = np.where(taste[:, None], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]) + rng.normal(0, 0.2, (41, 3))
    cold = np.arange(37, 41)  # items 36-39, known by their text only: two of each taste
    taste[37:39] = False
    text[37:39] = [1.0, 0.0, 0.0]
    predicted = factors.content_factors(text, np.arange(1, 37), y, cold, ridge=0.1)
    users = fold_in(y, indptr, cols, weights, 0.05, 4.0)
    best = np.argmax(users @ predicted.T, axis=1)
    assert (taste[cold[best]] == (np.arange(80) % 2 == 1)).mean() > 0.9


def test_the_head_scores_cold_items_through_the_factor_term_only():
    rng = np.random.default_rng(6)
    rows, cold = np.array([2, 4, 6, 8, 10]), np.array([3, 11])
    w = rng.normal(size=(5, 5)).astype(np.float32)
    y, yc = rng.normal(size=(5, 3)).astype(np.float32), rng.normal(size=(2, 3)).astype(np.float32)
    params = {"factor_weight": 0.7, "factor_reg": 0.2, "factor_alpha": 3.0}
    head = LinearHead(rows, w, params, y, cold, yc)
    assert head.scored_rows.tolist() == [2, 3, 4, 6, 8, 10, 11]
    indptr, hist, hw = np.array([0, 2, 5]), np.array([2, 6, 4, 8, 3]), np.array([1.0, 0.5, 1, 1, 1], np.float32)
    x = head.user_matrix(indptr, hist, hw)  # item 3 is cold: no input column, no item-item weight
    users = fold_in(y, *head.entries(indptr, hist, hw), 0.2, 3.0)
    factor = unit_scale(np.hstack([users @ y.T, users @ yc.T]))[:, [0, 5, 1, 2, 3, 4, 6]]
    want = 0.7 * factor
    want[:, [0, 2, 3, 4, 5]] += unit_scale(x @ w)
    assert np.allclose(head.scores(indptr, hist, hw), want, atol=1e-5)
    again = LinearHead.from_tensors(head.tensors(), params)
    assert np.array_equal(again.cold_rows, cold) and np.allclose(again.scores(indptr, hist, hw), want, atol=1e-5)
    off = LinearHead(rows, w, {**params, "factor_weight": 0.0}, y, cold, yc)  # no term: no cold items
    assert off.scored_rows.tolist() == rows.tolist() and off.scores(indptr, hist, hw).shape == (2, 5)


def test_untouched_rows_are_items_with_text_and_no_positive_at_all(spark):
    """Only items nobody has touched are cold: item 1 (one positive) is the towers', item 3 has
    no text to predict from, and the padding row never counts."""
    text = np.ones((6, 3), np.float32)
    text[0] = text[4] = 0.0  # padding row 0; model row 4 = item 3 has no text
    catalog = Catalog(5, 3, np.ones(6, bool), np.zeros(6, np.float32), text=text)
    positives = spark.createDataFrame([(0, 0), (1, 0), (2, 1)], "user_idx int, item_idx int")
    assert untouched_rows(positives, catalog).tolist() == [3, 5]  # items 2 and 4
