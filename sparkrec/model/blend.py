"""How the hybrid's two parts make one score, and the search that decides their balance.

score(user, item) = w * cos(user tower, item tower) / s_user + head(user, item), with the head's
scores scaled to unit standard deviation per user (``LinearHead.scores``) and ``s_user`` the
standard deviation of the user's tower cosines over the head's items. Per-user scaling is why
one weight ``w`` holds for light and heavy users alike. The head's regularisation, its side
information weights and ``w`` are chosen by an Optuna search on the validation set carved
out of train (:mod:`sparkrec.model.validation`), never on test; ``w`` is optimised exactly
inside each trial on a grid (it costs no refit), so every trial pays one head solve.

The search runs in two stages. Side information and the ridge ``lam`` both smooth the item-item
weights, so with both free the validation surface has a long flat ridge (heavy ``lam`` with
heavy side information scores about as well as light ``lam`` with light side information), and
twenty TPE trials land anywhere along it; the held-out users then see a head far more
regularised than they want (measured on ml-latest-small: the chosen ``lam`` was 12x what plain
EASE's own validation curve picks). Stage one therefore fixes ``lam`` where validation is sharp,
on plain EASE (no side information); stage two searches the side-information weights with
``lam`` kept within a factor of a few of that value. Stage three, with the best head fixed,
fits implicit-ALS factors over the head's items (:mod:`sparkrec.model.factors`) for each point of
a small (reg, alpha) grid and searches their weight in the head beside the tower weight; the
factors are kept only if they beat the head without them on validation.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from ..logs import get_logger, log_fields
from ..ragged import slice_csr
from ..selection import best_k
from .factors import content_factors, implicit_als
from .head import LAM_RANGE, LinearHead, head_params, solve_head, unit_scale
from .validation import ValSet, mask_padding_and_seen, ranking_quality

log = get_logger("train.blend")

# No 0: the tower is the only part that orders items off the head (cold items, new items, the
# catalogue's tail), and a zero weight ties all of them at 0, so a cold item's rank would be
# arbitrary. It was in the grid and won validation on ml-latest-small's cold-items split
# (2026-12-05): cold-item Recall@20 fell from 0.32 to 0.036. The smallest weight keeps the head
# in charge of its items and the tower's order everywhere else.
TOWER_WEIGHTS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
FACTOR_WEIGHTS = (0.25, 0.5, 1.0, 2.0)  # the factor term's, relative to the item-item part's unit scale
PLAIN_SHARE = 0.4  # of the trials: stage one (plain EASE's lam); the rest search side information
LAM_BAND = (0.35, 2.8)  # stage two's lam, relative to stage one's best


def tower_scale(u: np.ndarray, items: np.ndarray, head: LinearHead | None, weight: float) -> np.ndarray:
    """User vectors rescaled so that ``u . v`` is the tower's share of the blended score."""
    if head is None:
        return u
    cos = u @ items[head.rows].T
    return u * (weight / np.maximum(cos.std(axis=1, keepdims=True), 1e-6))


def head_scores(head: LinearHead, indptr: np.ndarray, rows: np.ndarray, weights: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray]:
    """The head's share as ``top_k``'s ``extra`` argument: (its rows, per-user scores)."""
    return head.scored_rows, head.scores(indptr, rows, weights)


@dataclass
class BlendSearch:
    """The validation problem, prepared once: tower vectors of the validation users and items."""

    val: ValSet
    users: np.ndarray  # (n_val, d) tower vectors
    items: np.ndarray  # (n_items + 1, d) tower vectors
    grams: dict[bool, np.ndarray]  # X^T X of the fit part: weighted (False) and binary (True)
    sides: dict[str, np.ndarray]
    rows: np.ndarray
    k: int = 10
    chunk: int = 512
    trials: list[dict[str, Any]] = field(default_factory=list)
    tower_only: float = 0.0  # validation NDCG of the towers alone, for the record
    # Stage three: the fit part's positives over head columns (indptr, columns, weights), the
    # (reg, alpha) grid, rank and iterations; None: no factor term.
    factor_fit: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
    factor_grid: list[tuple[float, float]] = field(default_factory=list)
    factor_rank: int = 64
    factor_iterations: int = 15
    # Items nobody has touched (no train positive at all: ``head.untouched_rows``), scored by
    # factors predicted from ``item_text`` (model rows' text vectors) with ridge ``cold_ridge``.
    cold_rows: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    item_text: np.ndarray | None = None
    cold_ridge: float = 0.2
    _columns: dict[int, np.ndarray] = field(default_factory=dict, repr=False)
    _products: dict[int, np.ndarray] = field(default_factory=dict, repr=False)
    _factor_parts: dict[int, np.ndarray | None] = field(default_factory=dict, repr=False)
    _factors_of: np.ndarray | None = field(default=None, repr=False)

    def candidates(self, start: int, stop: int) -> np.ndarray:
        """The only items that can reach a top k of users ``start .. stop``, whatever the trial:
        the head's rows, the cold items (the factor term may score them), and each user's k best
        unseen other items by tower score. Off those, the blend is the tower cosine times a
        positive per-user weight, so that order never changes. Ranking these instead of the
        whole catalogue is exact (ties at equal scores aside) and makes a trial cost the
        head's size, not the catalogue's: on full Book-Crossing (271k items) the
        whole-catalogue search took over 10 minutes."""
        if start not in self._columns:
            scores = mask_padding_and_seen(self.users[start:stop] @ self.items.T, self.val, start)
            scored = np.union1d(self.rows, self.cold_rows)
            scores[:, scored] = -np.inf
            top, top_scores = best_k(scores, min(self.k, scores.shape[1]))
            self._columns[start] = np.union1d(scored, top[np.isfinite(top_scores)])
        return self._columns[start]

    def quality(self, head: LinearHead | None, reuse: bool = False) -> dict[float, float]:
        """Mean validation NDCG@k for every tower weight on the grid (head None: tower only).
        ``reuse``: the head's item-item weights are those of the previous call with ``reuse``
        (stage three varies only the factor term), so their products are kept, not redone
        (:meth:`_head_part`)."""
        weights = TOWER_WEIGHTS if head is not None else (1.0,)
        totals = dict.fromkeys(weights, 0.0)
        n = len(self.val)
        for start in range(0, n, self.chunk):
            stop = min(start + self.chunk, n)
            u = self.users[start:stop]
            columns = self.candidates(start, stop)
            items = self.items[columns]
            extra = None
            if head is not None:
                indptr, rows = slice_csr(self.val.items_indptr, self.val.items, start, stop)
                _, w = slice_csr(self.val.items_indptr, self.val.item_weights, start, stop)
                part = self._head_part(head, start, indptr, rows, w) if reuse else head.scores(indptr, rows, w)
                extra = np.searchsorted(columns, head.scored_rows), part
            for weight in weights:
                scores = tower_scale(u, self.items, head, weight) @ items.T
                if extra is not None:
                    scores[:, extra[0]] += extra[1]
                totals[weight] += float(ranking_quality(scores, self.val, start, self.k, columns)[1].sum())
        return {w: t / max(n, 1) for w, t in totals.items()}

    def _head_part(self, head: LinearHead, start: int, indptr: np.ndarray, rows: np.ndarray,
                   weights: np.ndarray) -> np.ndarray:
        """``head.scores`` for users ``start ..``, its two parts kept between calls: the
        item-item part (stage three does not change it) and the factor term of the current
        factors (each is scored at every weight on the grid)."""
        held = head.entries(indptr, rows, weights)
        if start not in self._products:
            self._products[start] = unit_scale(head.item_item(held))
        if self._factors_of is not head.factors:
            self._factor_parts.clear()
            self._factors_of = head.factors
        if start not in self._factor_parts:
            self._factor_parts[start] = head.factor_scores(held)
        return head.weigh(self._products[start], self._factor_parts[start])

    def cold_factors(self, rows: np.ndarray, factors: np.ndarray) -> np.ndarray | None:
        """The cold items' factors predicted from text, or None (no cold items or no text)."""
        if self.item_text is None or not len(self.cold_rows):
            return None
        return content_factors(self.item_text, rows, factors, self.cold_rows, self.cold_ridge)

    def objective(self, trial: Any, sides: dict[str, np.ndarray] | None = None,
                  lam_range: tuple[float, float] = LAM_RANGE) -> float:
        """One trial: a head solve, the tower weight optimised on the grid; ``sides`` None: all
        of this search's side information."""
        started = time.perf_counter()
        sides = self.sides if sides is None else sides
        params = {**dict.fromkeys((f"beta_{name}" for name in self.sides), 0.0),
                  **head_params(trial, sides, lam_range)}
        head = solve_head(self.grams[bool(params["binary"])], self.sides, self.rows, params)
        by_weight = self.quality(head)
        weight = max(by_weight, key=lambda w: (by_weight[w], -w))
        trial.set_user_attr("w_tower", weight)
        trial.set_user_attr("params", params)
        record = {**params, "w_tower": weight, f"ndcg@{self.k}": by_weight[weight],
                  "seconds": round(time.perf_counter() - started, 1)}
        self.trials.append(record)
        log_fields(log, "blend trial", **record)
        return by_weight[weight]

    def factor_trials(self, head: LinearHead, seed: int) -> tuple[LinearHead, float, float]:
        """Stage three: (head, tower weight, validation NDCG) of the best factor term on the
        grid, over every weight in ``FACTOR_WEIGHTS``; ALS is fitted once per grid point."""
        assert self.factor_fit is not None
        best: tuple[LinearHead, float, float] = (head, 1.0, -np.inf)
        self._products.clear()
        self._factor_parts.clear()
        for reg, alpha in self.factor_grid:
            started = time.perf_counter()
            factors = implicit_als(*self.factor_fit, len(head.rows), self.factor_rank, reg, alpha,
                                   self.factor_iterations, seed)
            cold = self.cold_factors(head.rows, factors)
            for weight in FACTOR_WEIGHTS:
                params = {**head.params, "factor_weight": weight, "factor_reg": reg, "factor_alpha": alpha,
                          "factor_rank": float(self.factor_rank)}
                trial = replace(head, params=params, factors=factors, cold_rows=self.cold_rows, cold_factors=cold)
                by_weight = self.quality(trial, reuse=True)
                w_tower = max(by_weight, key=lambda w: (by_weight[w], -w))
                record = {**params, "w_tower": w_tower, f"ndcg@{self.k}": by_weight[w_tower],
                          "seconds": round(time.perf_counter() - started, 1)}
                self.trials.append(record)
                log_fields(log, "blend factor trial", **record)
                if by_weight[w_tower] > best[2]:
                    best = (trial, w_tower, by_weight[w_tower])
        self._products.clear()
        self._factor_parts.clear()
        self._factors_of = None
        return best


def plain_grid(n: int) -> list[tuple[float, int]]:
    """Stage one's trials: ``n`` points, half weighted and half binary, each half a log grid
    over ``LAM_RANGE`` (one point: the grid's middle)."""
    lo, hi = np.log(LAM_RANGE[0]), np.log(LAM_RANGE[1])
    halves = [(n + 1) // 2, n // 2]
    return [(float(np.exp(lo + (hi - lo) * (i + 0.5) / size)), binary)
            for binary, size in enumerate(halves) for i in range(size)]


def search_blend(search: BlendSearch, n_trials: int, seed: int) -> tuple[dict[str, float], float, float]:
    """(head params, tower weight, validation NDCG) of the best of ``n_trials`` trials: stage
    one's fixed ``plain_grid``, then stage two's TPE (module docstring; without side information
    every trial is on the grid). The towers alone are scored too and reported, so the gain of the
    head is on record."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    search.tower_only = tower_only = search.quality(None)[1.0]
    sampler = optuna.samplers.TPESampler
    plain = optuna.create_study(direction="maximize", sampler=sampler(seed=seed))
    n_plain = n_trials if not search.sides else max(1, round(n_trials * PLAIN_SHARE))
    for lam, binary in plain_grid(n_plain):  # a log grid, weighted and binary in turn
        plain.enqueue_trial({"binary": binary, "lam": lam})
    plain.optimize(lambda t: search.objective(t, {}), n_trials=n_plain)
    best = plain.best_trial
    if n_trials > n_plain:
        lam = float(best.params["lam"])
        band = (max(LAM_RANGE[0], lam * LAM_BAND[0]), min(LAM_RANGE[1], lam * LAM_BAND[1]))
        sided = optuna.create_study(direction="maximize", sampler=sampler(seed=seed + 1))
        sided.optimize(lambda t: search.objective(t, None, band), n_trials=n_trials - n_plain)
        best = max(best, sided.best_trial, key=lambda t: t.value)
    params, w_tower, value = dict(best.user_attrs["params"]), float(best.user_attrs["w_tower"]), float(best.value)
    if search.factor_fit is not None and search.factor_grid:
        head = solve_head(search.grams[bool(params["binary"])], search.sides, search.rows, params)
        with_factors, factor_w_tower, factor_value = search.factor_trials(head, seed)
        if factor_value > value:
            params, w_tower, value = dict(with_factors.params), factor_w_tower, factor_value
    log_fields(log, "blend chosen", tower_only_ndcg=round(tower_only, 5), best_ndcg=round(value, 5),
               **params, w_tower=w_tower)
    return params, w_tower, value
