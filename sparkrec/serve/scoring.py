"""One request -> one explained list, with the batch stage's numeric code and no Spark.

The three ways in mirror the batch stage: a known user's history through the user tower (plus
the hybrid's linear head, as ``score.score_batch`` does), free text as a pseudo-history blended
with the text cosine (``recommend_for_text``), and an anonymous session's items read as a
history whose events all happened now.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np

from ..config import RecommendFilters
from ..model.blend import tower_scale
from ..model.head import LinearHead
from ..recommend.score import blended_query, neighbours_as_history, user_vectors
from ..recommend.topk import evidence
from .explain import explain_row
from .index import Extra, Pool, best_in_pool
from .state import Catalogue, ServingState


class RequestError(ValueError):
    """A request the server cannot answer as asked; ``status`` is the HTTP code to answer with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Query:
    """A user as model input: history rows, gaps, what to exclude and what the head reads."""

    user: int  # model user row (0: unknown to the model's id embedding)
    hist: np.ndarray  # (1, n) int64
    gaps: np.ndarray  # (1, n) float32
    seen: np.ndarray  # model rows to exclude
    items: np.ndarray  # positive model rows, for the head
    weights: np.ndarray
    basis: str  # "history" | "interests"
    text: np.ndarray | None = None  # (1, D) interest text vector: blended scoring
    vector: np.ndarray | None = None  # (1, d) the snapshot's query vector of a known user
    factors: np.ndarray | None = None  # (1, rank) the snapshot's folded-in factors of a known user
    text_pool: Pool | None = None  # the text index's (1, m) rows nearest the text, with q.t: the blend's candidates


def eligible_for(base: np.ndarray, cat: Catalogue, filters: RecommendFilters | None) -> np.ndarray:
    """The load-time eligibility ``base`` (``recommend.filters``, by model row) narrowed by the
    request's filters; the hybrid and the baselines share it."""
    if filters is None or not (filters.exclude_item_ids or filters.genres
                               or filters.min_year is not None or filters.exclude_cold_items):
        return base
    mask = base.copy()
    for item_id in filters.exclude_item_ids:
        row = cat.rows.get(item_id)
        if row is not None:
            mask[row] = False
    if filters.genres:  # as the batch stage: an empty list is no genre filter
        keep = np.zeros_like(mask)
        for g in filters.genres:
            keep[cat.genres.get(g, np.zeros(0, np.int64))] = True
        mask &= keep
    if filters.min_year is not None:
        with np.errstate(invalid="ignore"):
            mask &= cat.year >= filters.min_year  # NaN (unknown year) is excluded, as in the batch stage
    if filters.exclude_cold_items:
        mask &= cat.has_id[: len(mask)]
    return mask


def known_user(state: ServingState, user_id: str) -> Query:
    users, spec = state.users, state.model.spec
    row = users.rows.get(user_id)
    if row is None:
        vector = users.text_only.get(user_id)
        if vector is None:
            raise RequestError(404, f"unknown user_id {user_id!r}: no positive event and no interest text")
        return text_query(state, vector[None, :])
    idx = int(users.user_idx[row])
    lo, hi = users.items[0][row], users.items[0][row + 1]
    s_lo, s_hi = users.seen[0][row], users.seen[0][row + 1]
    return Query(user=idx + 1 if 0 <= idx < spec.n_users else 0, hist=users.hist[row:row + 1],
                 gaps=users.gaps[row:row + 1], seen=users.seen[1][s_lo:s_hi], items=users.items[1][lo:hi],
                 weights=users.weights[lo:hi], basis="history", vector=users.vectors[row:row + 1],
                 factors=None if users.factors is None else users.factors[row:row + 1])


def text_query(state: ServingState, vector: np.ndarray) -> Query:
    """Interest text (encoded) -> its nearest items by text cosine as a pseudo-history."""
    if state.text_payload is None:
        raise RequestError(409, "the served model was trained without item text: text requests need "
                                "`sparkrec embed` before `sparkrec train`")
    tp = state.text_payload
    n = int(tp.spec["history"])
    q = vector.astype(np.float32)
    q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
    assert state.text_index is not None and state.has_text is not None
    # one search of the text index: its best rows with text are the pseudo-history (as
    # pseudo_history's exact search), the whole pool is the blend's text candidates
    pool = state.text_index.scored_pool(q, max(tp.text_neighbours, state.text_index.width))
    near = best_in_pool(state.text_index, q, pool, min(tp.text_neighbours, n), state.has_text)
    hist = neighbours_as_history(near, n)
    return Query(user=0, hist=hist, gaps=np.zeros((1, n), np.float32), seen=np.zeros(0, np.int64),
                 items=np.zeros(0, np.int64), weights=np.zeros(0, np.float32), basis="interests",
                 text=vector.astype(np.float32), text_pool=pool)


def session_query(state: ServingState, item_ids: list[str]) -> Query:
    """An anonymous session: its items, oldest first, as the latest events of a new user."""
    rows = state.catalogue.rows
    unknown = [i for i in item_ids if i not in rows]
    if unknown:
        raise RequestError(404, f"unknown item_id(s) in recent_items: {', '.join(map(repr, unknown[:10]))}")
    n = int(state.payload.spec["history"])
    ordered = list(dict.fromkeys(rows[i] for i in item_ids))  # first occurrence wins; order kept
    hist = np.zeros((1, n), np.int64)
    last = ordered[-n:]
    hist[0, n - len(last):] = last
    items = np.array(ordered, np.int64)
    return Query(user=0, hist=hist, gaps=np.zeros((1, n), np.float32), seen=items, items=items,
                 weights=np.ones(len(items), np.float32), basis="history")


def head_extra(head: LinearHead, rows: np.ndarray, weights: np.ndarray,
               factors: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``model.blend.head_scores`` for one user, from the rows of W the user's items select.

    Why not ``head.scores``: it multiplies a dense (1, m) input by the (m, m) weights, m up to
    ``model.head_max_items`` (20,000): 400M multiply-adds per request, of which all but the
    user's few dozen rows are by zero. Same input rule (a re-rated item once, at its largest
    weight; 1 per item when the head is binary), same per-user scaling and factor term
    (``factors``: the user's, already folded in: a snapshot's known user).
    """
    held = head.entries(np.array([0, len(rows)], np.int64), rows, weights)
    _, cols, w = held
    if head.binary:
        w = np.ones(len(cols), np.float32)
    s = w @ head.weights[cols] if len(cols) else np.zeros(len(head.rows), np.float32)
    return head.scored_rows, head.combine(s[None, :], held, factors)


Search = Callable[..., tuple[np.ndarray, np.ndarray]]  # Index.search's arguments, bound to its index


def vector_for(state: ServingState, q: Query) -> tuple[np.ndarray, Search, Extra | None]:
    """(user vector, the search to run, head extra) exactly as the batch stage scores this kind
    of user; a text's search reuses the text index's pool its pseudo-history came from."""
    p = state.payload
    if q.vector is not None:  # a known user: the tower ran when the snapshot was built
        return q.vector, state.index.search, (None if p.head is None
                                              else head_extra(p.head, q.items, q.weights, q.factors))
    u = user_vectors(p, np.array([q.user], np.int64), q.hist, q.gaps, state.tower_fn)
    if q.text is not None:
        assert state.text_payload is not None and state.blend_index is not None
        w = state.text_payload.text_weight
        u = blended_query(w, u, q.text)
        pool = None if q.text_pool is None else (q.text_pool[0], w * q.text_pool[1])  # the blend's term: w q.t
        return u, partial(state.blend_index.search, text_pool=pool), None
    extra = None
    if p.head is not None:
        extra = head_extra(p.head, q.items, q.weights)
        u = tower_scale(u, p.items, p.head, p.tower_weight).astype(np.float32)
    return u, state.index.search, extra


def recommend(state: ServingState, q: Query, k: int, filters: RecommendFilters | None,
              max_attributes: int, exclude_seen: bool = True) -> list[dict[str, Any]]:
    """Top-``k`` explained items for one query (fewer only when the eligible catalogue runs out)."""
    u, search, extra = vector_for(state, q)
    seen = (np.array([0, len(q.seen)], np.int64), np.sort(q.seen)) if exclude_seen and len(q.seen) else None
    eligible = eligible_for(state.payload.eligible, state.catalogue, filters)
    recs, scores = search(u, k, eligible, seen, extra)
    ev = evidence(state.payload.items, q.hist, recs, state.payload.explain_items)
    out = []
    cat = state.catalogue
    for rank, (row, score, cited) in enumerate(zip(recs[0], scores[0], ev[0], strict=True), start=1):
        if row < 0:
            break
        out.append({"rank": rank, "item_id": cat.ids[row], "title": cat.facts.titles[row], "score": float(score),
                    **explain_row(cat.facts, int(row), [int(c) for c in cited if c >= 0], q.basis, max_attributes)})
    return out


def similar_items(state: ServingState, item_id: str, k: int) -> list[dict[str, Any]]:
    """Nearest items in the item tower's space (unit vectors: cosine), the item itself excluded."""
    cat = state.catalogue
    row = cat.rows.get(item_id)
    if row is None:
        raise RequestError(404, f"unknown item_id {item_id!r}")
    items = state.payload.items
    mask = state.payload.eligible.copy()
    mask[row] = False
    recs, scores = state.index.search(items[row:row + 1], k, mask)
    out = []
    for rank, (r, s) in enumerate(zip(recs[0], scores[0], strict=True), start=1):
        if r < 0:
            break
        shared = [a for a in cat.facts.attrs[r] if a in set(cat.facts.attrs[row])]
        out.append({"rank": rank, "item_id": cat.ids[r], "title": cat.facts.titles[r], "score": float(s),
                    "shared_attributes": shared})
    return out
