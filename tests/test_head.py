"""The hybrid's linear head and blend: closed form, side information, and the search's choice."""

from __future__ import annotations

import numpy as np

from sparkrec.model.blend import LAM_BAND, TOWER_WEIGHTS, BlendSearch, plain_grid, search_blend, tower_scale
from sparkrec.model.data import Catalog
from sparkrec.model.head import LAM_RANGE, LinearHead, side_grams, solve_head
from sparkrec.model.validation import ValSet, ranking_quality
from sparkrec.ragged import csr


def _gram(x: np.ndarray) -> np.ndarray:
    return (x.T @ x).astype(np.float64)


def test_head_without_side_information_is_ease():
    rng = np.random.default_rng(0)
    x = (rng.random((40, 12)) < 0.3).astype(np.float64)
    g = _gram(x)
    head = solve_head(g, {}, np.arange(1, 13), {"lam": 0.5})
    lam = 0.5 * np.mean(np.diag(g))
    p = np.linalg.inv(g + lam * np.eye(12))
    want = -p / np.diag(p)[None, :]
    np.fill_diagonal(want, 0)
    assert np.allclose(head.weights, want, atol=1e-4)
    assert np.all(np.diag(head.weights) == 0)  # an item never recommends itself


def test_text_side_information_links_items_no_user_shared():
    # items 0 and 1 are each taken by their own users only, but their texts are alike
    x = np.zeros((20, 4))
    x[:10, [0, 2]] = 1
    x[10:, [1, 3]] = 1
    text = np.zeros((5, 3), dtype=np.float16)
    text[1:] = [[1, 0, 0], [1, 0.1, 0], [0, 1, 0], [0, 0, 1]]
    catalog = Catalog(4, 20, np.ones(5, bool), np.zeros(5, np.float32), text=text)
    rows = np.arange(1, 5)
    sides = side_grams(catalog, rows)
    assert set(sides) == {"text"} and sides["text"][0, 1] > 0.9
    plain = solve_head(_gram(x), sides, rows, {"lam": 0.1, "beta_text": 0.0})
    linked = solve_head(_gram(x), sides, rows, {"lam": 0.1, "beta_text": 1.0})
    assert abs(plain.weights[0, 1]) < 1e-6 and linked.weights[0, 1] > 0.01


def test_head_scores_are_scaled_per_user_and_columns_map_rows():
    head = LinearHead(np.array([2, 5, 9]), np.array([[0, 1, 2], [1, 0, 3], [2, 3, 0]], np.float32))
    cols, known = head.columns(np.array([5, 4, 9]))
    assert list(cols[known]) == [1, 2] and list(known) == [True, False, True]
    s = head.scores(np.array([0, 1, 3]), np.array([2, 5, 9]), np.array([1.0, 1.0, 10.0], np.float32))
    assert np.allclose(s.std(axis=1), 1.0)  # a heavy user and a light one weigh the same in the blend


def _valset(targets: list[list[int]], seen: list[list[int]], n_items: int) -> ValSet:
    t_ptr, t = csr([np.array(x, np.int64) for x in targets])
    s_ptr, s = csr([np.array(x, np.int64) for x in seen])
    b = len(targets)
    return ValSet(np.arange(1, b + 1), np.zeros((b, 2), np.int64), np.zeros((b, 2), np.float32), t_ptr, t, s_ptr, s,
                  s_ptr, s, np.ones(len(s), np.float32))


def test_ranking_quality_matches_hand_computed_values():
    val = _valset([[3], [1, 2]], [[1], [3]], 4)
    scores = np.array([[0, 9, 1, 5, 0], [0, 2, 1, 9, 3]], dtype=np.float64)  # column 0 = padding
    recall, ndcg = ranking_quality(scores, val, 0, 2)
    # user 1: item 1 seen, so the list is [3, 2]: the target is first
    assert recall[0] == 1.0 and np.isclose(ndcg[0], 1.0)
    # user 2: item 3 seen, list [4, 1]: one of two targets at rank 2
    assert recall[1] == 0.5 and np.isclose(ndcg[1], (1 / np.log2(3)) / (1 + 1 / np.log2(3)))


def _two_group_search(sides: dict[str, np.ndarray] | None = None) -> tuple[BlendSearch, np.ndarray, np.ndarray]:
    """Towers with random vectors, a head that has the answer: two taste groups, each user
    holding most of their own half, two of them held out."""
    rng = np.random.default_rng(1)
    n_items, n_users = 30, 60
    x = np.zeros((n_users, n_items))
    for u in range(n_users):  # two taste groups, each takes most of its own half
        half = np.arange(15) + 15 * (u % 2)
        x[u, rng.choice(half, 10, replace=False)] = 1
    targets, seen = [], []
    for u in range(n_users):
        items = rng.permutation(np.flatnonzero(x[u]) + 1)  # not the lowest ids: ties break by id
        targets.append(list(items[:2]))
        seen.append(list(items[2:]))
    val = _valset(targets, seen, n_items)
    fit = x.copy()
    for u in range(n_users):
        fit[u, np.array(targets[u]) - 1] = 0
    items = rng.normal(size=(n_items + 1, 8)).astype(np.float32)
    users = rng.normal(size=(n_users, 8)).astype(np.float32)
    search = BlendSearch(val, users, items, {False: _gram(fit), True: _gram(fit)}, sides or {},
                         np.arange(1, n_items + 1))
    return search, users, items


def test_search_prefers_the_head_when_the_towers_know_nothing():
    search, users, items = _two_group_search()

    class Trial:
        def suggest_float(self, name, low, high, log=False):
            return 1.0

        def suggest_categorical(self, name, choices):
            return choices[-1]

        def set_user_attr(self, key, value):
            self.attrs = {**getattr(self, "attrs", {}), key: value}

    trial = Trial()
    best = search.objective(trial)
    assert trial.attrs["w_tower"] < max(TOWER_WEIGHTS) and best > search.quality(None)[1.0]
    assert np.allclose(tower_scale(users, items, None, 3.0), users)  # no head: the towers as they are


def test_search_fixes_lam_on_plain_ease_before_side_information():
    """Stage one is the plain-EASE log grid (every beta 0); stage two searches the betas with
    lam held near stage one's best, so heavy lam cannot stand in for heavy side information."""
    noise = np.abs(np.random.default_rng(2).normal(size=(30, 30)))
    search, _, _ = _two_group_search({"text": (noise + noise.T) / 2})
    params, w_tower, ndcg = search_blend(search, 10, seed=0)
    plain, sided = search.trials[:4], search.trials[4:]
    assert [(t["lam"], t["binary"]) for t in plain] == [(lam, float(b)) for lam, b in plain_grid(4)]
    assert all(t["beta_text"] == 0.0 for t in plain) and len(sided) == 6
    best_plain = max(plain, key=lambda t: t["ndcg@10"])["lam"]
    low, high = max(LAM_RANGE[0], best_plain * LAM_BAND[0]), min(LAM_RANGE[1], best_plain * LAM_BAND[1])
    assert all(low <= t["lam"] <= high for t in sided)
    assert ndcg == max(t["ndcg@10"] for t in search.trials) and w_tower in TOWER_WEIGHTS and w_tower > 0
    assert set(params) == {"binary", "lam", "beta_text"}
    only, _, _ = search_blend(_two_group_search({"text": noise})[0], 1, seed=0)  # one trial: plain EASE
    assert only["beta_text"] == 0.0


def test_early_stopping_stops_after_patience_epochs_not_one_more():
    from sparkrec.model.validation import EarlyStopping

    stopping = EarlyStopping(patience=2)
    assert [stopping.update(v) for v in (0.10, 0.20, 0.15, 0.19)] == ["better", "better", "continue", "stop"]
    assert stopping.best == 0.20
    assert EarlyStopping(patience=1).update(-2.0) == "stop"  # no better than the start: stop at once


def test_the_gram_from_head_entries_equals_x_transpose_x_in_any_block_size(spark):
    """``head_entries`` brings the users' positives over the head to the driver (re-rated pairs
    once, at their largest weight) and ``gram_of`` multiplies them out in column blocks: any
    block size gives the dense product, weighted and binary."""
    from sparkrec.model.head import gram_of, head_entries

    rng = np.random.default_rng(5)
    pairs = {(int(u), int(i)) for u, i in zip(rng.integers(0, 40, 600), rng.integers(0, 60, 600), strict=True)}
    rows = [(u, i, float(rng.integers(1, 6))) for u, i in sorted(pairs)]
    rows += [(u, i, 0.5) for u, i in sorted(pairs)[:50]]  # re-rated lower: the largest weight stays
    positives = spark.createDataFrame(rows, "user_idx int, item_idx int, weight double")
    head = np.sort(rng.choice(np.arange(1, 61), 25, replace=False))  # model rows = item_idx + 1
    x = np.zeros((40, 60))
    for u, i, w in rows:
        x[u, i] = max(x[u, i], w)
    x = x[:, head - 1]
    x = x[x.any(axis=1)]  # entries hold the users with a positive on the head, in user order
    entries = head_entries(positives, head)
    assert len(entries[0]) - 1 == len(x)
    for binary in (False, True):
        want = (x > 0).astype(float) if binary else x
        for max_block in (10_000, 100, 30, 1):  # one block; four; one column each
            assert np.allclose(gram_of(entries, len(head), binary, max_block), want.T @ want)


def test_head_size_is_capped_by_the_memory_its_matrices_need():
    """A head whose m x m float32 matrices would not fit in the memory share is shrunk, never
    grown; unknown memory leaves the configured size."""
    from sparkrec.model.head import MATRICES_AT_PEAK, items_that_fit

    gib = 2**30
    assert items_that_fit(20_000, None) == 20_000
    assert items_that_fit(20_000, 256 * gib) == 20_000
    small = items_that_fit(20_000, 8 * gib)
    assert 5_000 < small < 20_000
    assert 4 * MATRICES_AT_PEAK * small**2 <= 0.6 * 8 * gib < 4 * MATRICES_AT_PEAK * (small + 1) ** 2


def test_search_ranks_only_candidates_and_scores_as_the_whole_catalogue_would():
    """The search ranks the head's rows plus each user's k best other items by tower score;
    for every positive tower weight that is the same NDCG as ranking the whole catalogue."""
    from sparkrec.model.blend import head_scores
    from sparkrec.ragged import slice_csr

    rng = np.random.default_rng(5)
    n_items, n_users, head_items = 400, 70, 40
    x = (rng.random((n_users, head_items)) < 0.2).astype(np.float64)
    targets = [list(rng.choice(np.arange(1, n_items + 1), 3, replace=False)) for _ in range(n_users)]
    seen = [[i for i in rng.choice(np.arange(1, n_items + 1), 6, replace=False) if i not in t] for t in targets]
    val = _valset(targets, seen, n_items)
    items = rng.normal(size=(n_items + 1, 8)).astype(np.float32)
    users = rng.normal(size=(n_users, 8)).astype(np.float32)
    rows = np.arange(1, head_items + 1)
    search = BlendSearch(val, users, items, {False: _gram(x), True: _gram(x)}, {}, rows, chunk=32)
    head = solve_head(_gram(x), {}, rows, {"lam": 1.0})
    fast = search.quality(head)
    assert all(len(search.candidates(s, min(s + 32, n_users))) <= head_items + 32 * 10 for s in (0, 32, 64))
    for weight in TOWER_WEIGHTS:  # every weight is positive: no ties at 0 off the head
        total = 0.0
        for start in range(0, n_users, 32):
            stop = min(start + 32, n_users)
            indptr, r = slice_csr(val.items_indptr, val.items, start, stop)
            _, w = slice_csr(val.items_indptr, val.item_weights, start, stop)
            scores = tower_scale(users[start:stop], items, head, weight) @ items.T
            scores[:, rows] += head_scores(head, indptr, r, w)[1]
            total += float(ranking_quality(scores, val, start, 10)[1].sum())
        assert np.isclose(fast[weight], total / n_users, atol=1e-9), weight
    assert np.isclose(search.quality(None)[1.0], np.mean(ranking_quality(users @ items.T, val, 0, 10)[1]))
